"""Run directories on a URI (here ``file://``, the same pyarrow code path as s3:// and gs://)."""

import json

import pytest

from prefloop.app.storage.run_mirror import is_uri, local_cache
from prefloop.app.storage.rundir import RunDir, write_manifest


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
