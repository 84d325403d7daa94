"""Model folders reach actors on any node through Ray, never by reading the driver's disk.

The driver's node holds the run directory (round models) and often the base model. Other nodes need not see
it: no shared filesystem is assumed.

- ``ship(path)`` (driver): a folder that exists on the driver's node becomes a ``ModelRef``. A ``ModelStore``
  actor pinned to the driver's node serves it; it is named per node and detached, so Serve replicas can still
  fetch a round after the driver exits. Anything else (a hub id such as ``mistralai/Mistral-7B-Instruct-v0.2``)
  stays a string that every node resolves itself, as transformers and vLLM do.
- ``local_model(model, who)`` (inside an actor): the folder on THIS node that holds ``model``.
  - A ``ModelRef`` is copied chunk by chunk into the node's cache once (``$PREFLOOP_MODEL_CACHE``, default
    ``~/.cache/prefloop/models``, one sub-folder per Ray node id). The copy goes through the object store.
  - Actors of one node share that copy: a file lock makes one of them fetch it while the others wait.
  - Each load is appended to the cache's ``loads.jsonl``, which audits where every actor read its weights.
- ``put_folder(path)`` (a training worker): the folder's chunks go into the object store, owned by the caller.
  This is for ReMax's per-step pushes, whose weights exist only on rank 0's node.

The cache keeps the newest ``KEEP`` models per node; older copies are removed when a new one arrives, except
a copy in use: each process holds a shared ``flock`` on ``<digest>.use`` for the copy each of its roles
(``who``: serve, generator, trainer ...) loaded last, and eviction skips a copy whose ``.use`` it cannot lock
exclusively. (A Serve replica reads its model folder after the load, e.g. a cSFT model's control token.)
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

log = logging.getLogger(__name__)

CHUNK_BYTES = 64 * 1024**2  # one object per chunk: bounded memory on both ends for multi-GB safetensors files
KEEP = 6  # model copies kept per node (ReMax pushes a new one every step)
FETCH_TIMEOUT_S = 600.0  # one chunk; a 7B model is ~230 chunks
STORE_PREFIX = "prefloop-model-store"
AUDIT = "loads.jsonl"
_IN_USE: dict[str, tuple[Path, Any]] = {}  # who -> (copy, open .use file holding a shared flock) in this process


@dataclass(frozen=True)
class ModelRef:
    """A model folder that actors on any node can copy: its name, a content key and where the bytes are."""

    name: str  # the folder on the machine that wrote it: the model's identity in manifests and checks
    digest: str  # the cache key (the folder's path, file names, sizes and mtimes)
    files: tuple[tuple[str, int], ...]  # (relative path, bytes)
    store: Any = None  # a ModelStore actor that reads the folder on request, or
    chunks: tuple[tuple[Any, ...], ...] | None = None  # object refs of each file's chunks (put_folder)


def model_name(model: str | ModelRef) -> str:
    return model.name if isinstance(model, ModelRef) else str(model)


def describe_folder(path: str | Path) -> tuple[str, tuple[tuple[str, int], ...]]:
    """The digest and (relative path, size) list of a model folder."""
    root = Path(path)
    files, key = [], hashlib.sha256(str(root.resolve()).encode())
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        rel, st = f.relative_to(root).as_posix(), f.stat()
        files.append((rel, st.st_size))
        key.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    if not files:
        raise FileNotFoundError(f"{root}: no model files to ship")
    return key.hexdigest()[:24], tuple(files)


def _chunks_of(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        while block := fh.read(chunk_bytes()):
            yield block


def chunk_bytes() -> int:
    """Bytes per object (``$PREFLOOP_MODEL_CHUNK_BYTES``, for tests; default 64 MiB)."""
    return int(os.environ.get("PREFLOOP_MODEL_CHUNK_BYTES", CHUNK_BYTES))


def put_folder(path: str | Path) -> ModelRef:
    """Put every file of ``path`` into the object store (owned by the caller, who must outlive its readers)."""
    import ray

    digest, files = describe_folder(path)
    chunks = tuple(tuple(ray.put(b) for b in _chunks_of(Path(path) / rel)) for rel, _ in files)
    return ModelRef(str(path), digest, files, chunks=chunks)


class ModelStore:
    """Serves model folders of its node, chunk by chunk (a Ray actor pinned to the driver's node)."""

    def __init__(self) -> None:
        self.shipped: dict[str, Path] = {}  # digest -> folder

    def ship(self, path: str) -> ModelRef:
        import ray

        digest, files = describe_folder(path)
        self.shipped[digest] = Path(path)
        return ModelRef(str(path), digest, files, store=ray.get_runtime_context().current_actor)

    def read(self, digest: str, rel: str, offset: int, size: int) -> bytes:
        folder = self.shipped.get(digest)
        if folder is None:
            raise KeyError(f"model store: no shipped model with digest {digest}")
        with open(folder / rel, "rb") as fh:
            fh.seek(offset)
            return fh.read(size)


def store_name() -> str:
    """The name of this node's ModelStore actor."""
    import ray

    return f"{STORE_PREFIX}-{ray.get_runtime_context().get_node_id()[:16]}"


def model_store() -> Any:
    """This node's ModelStore (created once; detached, so it outlives the driver that made it)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    node = ray.get_runtime_context().get_node_id()
    return ray.remote(ModelStore).options(
        name=store_name(), namespace="prefloop", get_if_exists=True, lifetime="detached",
        num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote()


def ship(path: str | os.PathLike) -> str | ModelRef:
    """The driver's handle on a model for actors anywhere: a ``ModelRef`` for a folder on this node, else the
    name unchanged (a hub id each node resolves). Call with Ray initialised."""
    from prefloop.actors.common import ray_get

    if not Path(path).is_dir():
        return str(path)
    return ray_get(model_store().ship.remote(str(path)), 120.0, f"shipping model {path}")


def shipping_store(path: str | os.PathLike) -> str | None:
    """For channels that carry only JSON (Serve's ``user_config``): ship ``path`` from this node and return the
    store's name, for ``fetch_model`` in the actor; None when ``path`` is no folder here (a hub id), or when Ray
    is not up here (an application built only to be inspected, e.g. by a Serve config builder's test)."""
    import ray

    if not Path(path).is_dir() or not ray.is_initialized():
        return None
    ship(path)
    return store_name()


def fetch_model(path: str, store: str | None, who: str) -> str:
    """In an actor: the local folder of the model ``path`` that the ModelStore ``store`` ships (or ``path`` itself
    when ``store`` is None)."""
    import ray

    from prefloop.actors.common import ray_get

    if store is None:
        return local_model(path, who)
    ref = ray_get(ray.get_actor(store, namespace="prefloop").ship.remote(path), 120.0, f"model {path} from {store}")
    return local_model(ref, who)


def cache_root() -> Path:
    """This node's model cache: one folder per Ray node id (nodes of one test machine keep separate caches)."""
    import ray

    base = Path(os.environ.get("PREFLOOP_MODEL_CACHE", Path.home() / ".cache" / "prefloop" / "models"))
    node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else "no-ray"
    return base.expanduser() / f"node-{node[:16]}"


def local_model(model: str | ModelRef, who: str) -> str:
    """The folder on this node to load ``model`` from (copied into the node cache first when it is a ref)."""
    if isinstance(model, ModelRef):
        path = str(_materialize(model, who))
    else:
        path = str(model)
    _audit(who, model_name(model), path)
    return path


def hold_copy(who: str, copy: Path) -> None:
    """Mark ``copy`` in use by this process's ``who`` (a shared flock on its ``.use`` file) and let go of the
    copy ``who`` held before."""
    previous = _IN_USE.get(who)
    if previous is not None and previous[0] == copy:
        return
    fh = open(copy.parent / f"{copy.name}.use", "a")
    fcntl.flock(fh, fcntl.LOCK_SH)
    _IN_USE[who] = (copy, fh)
    if previous is not None:
        previous[1].close()  # closing the file drops its flock


def _materialize(ref: ModelRef, who: str = "model") -> Path:
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    final = root / ref.digest
    with open(root / f"{ref.digest}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one fetch per node; the others wait, then find it done
        if not (final / ".complete").exists():
            started = time.perf_counter()
            partial = root / f"{ref.digest}.partial-{os.getpid()}"
            shutil.rmtree(partial, ignore_errors=True)
            for i, (rel, size) in enumerate(ref.files):
                _fetch_file(ref, i, rel, size, partial / rel)
            (partial / ".complete").touch()
            shutil.rmtree(final, ignore_errors=True)
            partial.rename(final)
            log.info("model %s copied to %s in %.1f s", ref.name, final, time.perf_counter() - started)
        os.utime(final)  # newest first when evicting
        hold_copy(who, final)  # before the fetch lock is let go: no evictor can take it in between
    _evict(root, keep=final)
    return final


def _fetch_file(ref: ModelRef, index: int, rel: str, size: int, out: Path) -> None:
    import ray

    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "wb") as fh:
        if ref.chunks is not None:
            for chunk in ref.chunks[index]:
                fh.write(ray.get(chunk, timeout=FETCH_TIMEOUT_S))
        else:
            step = chunk_bytes()
            for offset in range(0, size, step):
                fh.write(ray.get(ref.store.read.remote(ref.digest, rel, offset, step), timeout=FETCH_TIMEOUT_S))
    if out.stat().st_size != size:
        raise IOError(f"copy of {ref.name}/{rel} has {out.stat().st_size} bytes, expected {size}")


def _evict(root: Path, keep: Path) -> None:
    done = sorted((p for p in root.iterdir() if (p / ".complete").exists()), key=lambda p: p.stat().st_mtime,
                  reverse=True)
    for old in done[KEEP:]:
        if old == keep:
            continue
        with open(root / f"{old.name}.use", "a") as use:
            try:
                fcntl.flock(use, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # a process still reads this copy: it stays until it is let go
                log.info("model cache: keeping %s, still in use", old)
                continue
            shutil.rmtree(old, ignore_errors=True)  # its small .lock / .use files stay: others may open them


def _audit(who: str, name: str, path: str) -> None:
    """One line per load in the node cache's ``loads.jsonl``: who loaded which model from where (inside Ray)."""
    import ray

    if not ray.is_initialized():  # a bench or a test loading a model directly: nothing to audit
        return
    try:
        root = cache_root()
        root.mkdir(parents=True, exist_ok=True)
        line = {"time": time.time(), "pid": os.getpid(), "who": who, "model": name, "path": path,
                "node": root.name}
        with open(root / AUDIT, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(line) + "\n")
    except OSError:  # the audit trail must never fail a load
        log.warning("could not record the load of %s", name, exc_info=True)


def read_audit(base: str | Path) -> list[dict[str, Any]]:
    """Every node's load records under the cache base folder (tests and debugging)."""
    rows = []
    for f in sorted(Path(base).glob(f"node-*/{AUDIT}")):
        rows += [json.loads(line) for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]
    return rows
