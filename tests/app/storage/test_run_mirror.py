"""Run directories on a URI (here ``file://``, the same pyarrow code path as s3:// and gs://)."""

import json

import pytest

from prefloop.app.storage.run_mirror import is_uri, local_cache
from prefloop.app.storage.rundir import RunDir, write_manifest
from prefloop.app.storage.runlock import lock_for


@pytest.fixture
def remote(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFLOOP_RUNS_CACHE", str(tmp_path / "cache-a"))
    return tmp_path / "bucket" / "run", f"file://{tmp_path}/bucket/run"


def commit(run, r, stage, files):
    with run.commit(r, stage) as out:
        for name, text in files.items():
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            (out / name).write_text(text)
        write_manifest(out, {"stage": stage, "round": r})


def test_uri_detection_and_cache_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFLOOP_RUNS_CACHE", str(tmp_path))
    assert is_uri("s3://b/x") and is_uri("file:///tmp/x") and not is_uri("/tmp/x") and not is_uri("runs/x")
    assert local_cache("s3://b/x") != local_cache("gs://b/x") and str(local_cache("s3://b/x")).startswith(str(tmp_path))


def test_commits_are_uploaded_manifest_last_and_pulled_by_a_new_process(remote, tmp_path, monkeypatch):
    remote_dir, uri = remote
    run = RunDir(uri)
    assert run.root != remote_dir and run.mirror is not None
    run.save_text("recipe.yaml", "name: x\n")
    commit(run, 0, "rollout", {"pairs.parquet": "p0"})
    commit(run, 0, "model", {"config.json": "{}", "sub/w.bin": "w0"})
    commit(run, 1, "model", {"config.json": "{}"})
    assert (remote_dir / "recipe.yaml").read_text() == "name: x\n"
    assert (remote_dir / "round_0" / "model" / "sub" / "w.bin").read_text() == "w0"
    assert json.loads((remote_dir / "round_1" / "model" / "manifest.json").read_text())["round"] == 1

    # A crash mid-upload on the remote side: files but no manifest. It does not count as committed.
    (remote_dir / "round_1" / "eval").mkdir()
    (remote_dir / "round_1" / "eval" / "answers.jsonl").write_text("half")

    monkeypatch.setenv("PREFLOOP_RUNS_CACHE", str(tmp_path / "cache-b"))  # another node / a resumed job
    fresh = RunDir(uri)
    assert not fresh.is_committed(0, "rollout")  # nothing is pulled before the run's lock is held
    with lock_for(fresh):
        fresh.sync()
    assert fresh.root != run.root
    assert fresh.is_committed(0, "rollout") and fresh.is_committed(1, "model")
    assert (fresh.root / "recipe.yaml").read_text() == "name: x\n"
    assert not fresh.is_committed(0, "model")  # superseded by round 1's model: not downloaded
    assert not fresh.is_committed(1, "eval")
    commit(fresh, 1, "eval", {"answers.jsonl": "full"})  # redone, and the half-upload replaced
    assert (remote_dir / "round_1" / "eval" / "answers.jsonl").read_text() == "full"
    assert (remote_dir / "round_1" / "eval" / "manifest.json").is_file()


def test_a_failed_stage_uploads_nothing(remote):
    remote_dir, uri = remote
    run = RunDir(uri)
    with pytest.raises(RuntimeError):
        with run.commit(0, "rollout") as out:
            (out / "x").write_text("1")
            raise RuntimeError("boom")
    assert not (remote_dir / "round_0").exists() and not run.is_committed(0, "rollout")


def test_a_resumed_uri_run_keeps_every_rounds_metrics_rows(remote, tmp_path, monkeypatch):
    """Two rounds on file://, the driver gone, a resume from another working copy: metrics.jsonl keeps round 0's
    rows although round 0's (superseded) weights are not pulled."""
    remote_dir, uri = remote
    run = RunDir(uri)
    commit(run, 0, "model", {"config.json": "{}", "w.bin": "w0", "train_metrics.jsonl": '{"step": 1, "loss": 0.7}\n'})
    commit(run, 1, "model", {"config.json": "{}", "w.bin": "w1", "train_metrics.jsonl": '{"step": 1, "loss": 0.4}\n'})
    run.rebuild_metrics()
    before = (remote_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["round"] for line in before] == [0, 1]

    monkeypatch.setenv("PREFLOOP_RUNS_CACHE", str(tmp_path / "cache-b"))  # the resumed driver, elsewhere
    fresh = RunDir(uri)
    with lock_for(fresh):
        fresh.sync()
        fresh.rebuild_metrics()
    assert not fresh.is_committed(0, "model") and not (fresh.root / "round_0" / "model" / "w.bin").exists()
    assert (remote_dir / "metrics.jsonl").read_text().splitlines() == before
    assert (fresh.root / "metrics.jsonl").read_text().splitlines() == before
