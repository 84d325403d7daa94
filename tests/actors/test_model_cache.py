"""Model folders shipped through Ray (actors/model_cache.py): the node-local copy is byte for byte the source,
fetched in chunks once per node, audited, evicted beyond KEEP; a hub id is left for each node to resolve."""

import json
import os
import threading
from pathlib import Path

import pytest

from prefloop.actors import model_cache
from prefloop.actors.model_cache import ModelRef, local_model, put_folder, read_audit, ship

pytestmark = pytest.mark.ray


def make_model(root: Path, payload: bytes) -> Path:
    (root / "sub").mkdir(parents=True)
    (root / "config.json").write_text(json.dumps({"hidden_size": 8}))
    (root / "model.safetensors").write_bytes(payload)
    (root / "sub" / "tokenizer.json").write_text("{}")
    return root


def same_tree(a: Path, b: Path) -> bool:
    files = sorted(p.relative_to(a).as_posix() for p in a.rglob("*") if p.is_file())
    copied = sorted(p.relative_to(b).as_posix() for p in b.rglob("*") if p.is_file() and p.name != ".complete")
    return files == copied and all((a / f).read_bytes() == (b / f).read_bytes() for f in files)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFLOOP_MODEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PREFLOOP_MODEL_CHUNK_BYTES", "1000")  # the 2,500-byte file travels as 3 chunks
    return tmp_path / "cache"


def test_shipped_folder_is_copied_once_per_node_and_audited(tmp_path, cache, ray_cluster):
    src = make_model(tmp_path / "round_0" / "model", os.urandom(2500))
    ref = ship(src)
    assert isinstance(ref, ModelRef) and ref.name == str(src)
    assert dict(ref.files) == {"config.json": (src / "config.json").stat().st_size, "model.safetensors": 2500,
                               "sub/tokenizer.json": 2}
    loaded = Path(local_model(ref, "test"))
    assert loaded.parent.parent == cache and loaded.parent.name.startswith("node-") and loaded.name == ref.digest
    assert same_tree(src, loaded) and not str(loaded).startswith(str(tmp_path / "round_0"))
    threads = [threading.Thread(target=local_model, args=(ref, f"t{i}")) for i in range(3)]  # one copy, shared
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not list(loaded.parent.glob("*.partial-*"))
    audit = read_audit(cache)
    assert [a["who"] for a in audit][0] == "test" and len(audit) == 4
    assert {a["path"] for a in audit} == {str(loaded)} and {a["model"] for a in audit} == {str(src)}
    assert ship("mistralai/Mistral-7B-Instruct-v0.2") == "mistralai/Mistral-7B-Instruct-v0.2"  # each node resolves it


def test_changed_folder_gets_a_new_copy_and_old_copies_are_evicted(tmp_path, cache, ray_cluster, monkeypatch):
    monkeypatch.setattr(model_cache, "KEEP", 2)
    src = make_model(tmp_path / "m", b"a" * 1500)
    copies = []
    for i in range(3):
        (src / "model.safetensors").write_bytes(bytes([65 + i]) * (1500 + i))
        copies.append(Path(local_model(ship(src), "test")))
        assert (copies[-1] / "model.safetensors").read_bytes() == bytes([65 + i]) * (1500 + i)
    assert len({c.name for c in copies}) == 3
    assert not copies[0].exists() and copies[1].exists() and copies[2].exists()


def test_put_folder_travels_as_objects_owned_by_the_caller(tmp_path, cache, ray_cluster):
    import ray

    src = make_model(tmp_path / "push", os.urandom(2100))
    ref = put_folder(src)
    assert ref.store is None and [len(c) for c in ref.chunks] == [1, 3, 1]

    @ray.remote(num_cpus=0)
    def load_elsewhere(r: ModelRef) -> str:  # another process: the refs arrive as an argument
        return local_model(r, "task")

    env = {"env_vars": {"PREFLOOP_MODEL_CACHE": str(cache)}}
    path = Path(ray.get(load_elsewhere.options(runtime_env=env).remote(ref), timeout=300))
    assert same_tree(src, path)
    assert [a["who"] for a in read_audit(cache)] == ["task"]
