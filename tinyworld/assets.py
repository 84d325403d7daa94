"""The tiny offline assets of the demo: build them once, deterministically from a seed, and cache them.

``build_assets(root)`` makes, with no download and in under two minutes on a 2-core CPU:

- ``root/policy``: a tiny Llama chat policy (TuluV2 template) pre-trained on the demo world
  (``policy``), loadable by transformers and vLLM;
- ``root/pairrm``: a tiny PairRM in llm-blender's on-disk format (``judges``), loadable with
  ``Blender().loadranker(root/"pairrm")`` or ``prefloop.actors.blender_compat.load_pairrm``;
- ``root/reward``: a tiny scalar reward model (``AutoModelForSequenceClassification``, UltraRM template).

The judges are proxies of ``prefloop.tinyworld.gold.gold_score``, trained on noisy labels of it; their
held-out pair accuracies against the exact gold order are logged and kept in the marker file. Caching: everything is built in a sibling temp dir, renamed into place, and only
then is the marker (format version + seed) written, atomically; a build that dies half-way never looks
finished. A lock file keeps two processes from building the same dir at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)

FORMAT_VERSION = 4  # bump when what a build produces changes; older caches are then rebuilt
MARKER = "prefloop-assets.json"
PARTS = ("policy", "pairrm", "reward")


@dataclass(frozen=True)
class TinyAssets:
    root: Path
    policy: Path
    pairrm: Path
    reward: Path

    @classmethod
    def at(cls, root: Path) -> "TinyAssets":
        return cls(root, root / "policy", root / "pairrm", root / "reward")


def default_assets_dir() -> Path:
    """``$PREFLOOP_ASSETS``, else ``~/.cache/prefloop/assets``."""
    env = os.environ.get("PREFLOOP_ASSETS")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "prefloop" / "assets"


def read_marker(root: Path) -> dict | None:
    """The finished build's record, or None when there is none (or it is unreadable)."""
    try:
        return json.loads((Path(root) / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _is_built(root: Path, seed: int) -> bool:
    marker = read_marker(root)
    return (marker is not None and marker.get("format") == FORMAT_VERSION and marker.get("seed") == seed
            and all((root / p).is_dir() for p in PARTS))


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    """An exclusive lock beside ``root``: a second builder waits, then finds the cache filled."""
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f".{root.name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """Train with a fixed thread count (same numbers on any machine), then restore the caller's."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _check_replaceable(root: Path) -> None:
    """Refuse to replace a directory that is not an assets dir (a typo must not delete someone's files)."""
    if root.exists():
        extra = {p.name for p in root.iterdir()} - {*PARTS, MARKER, MARKER + ".tmp"}
        if extra:
            raise FileExistsError(f"{root} exists and is not a prefloop assets dir (it holds {sorted(extra)[:5]}); "
                                  "choose an empty or new directory")


def _heldout_prompts() -> list[str]:
    """The shipped held-out prompts: the policy never trains on them, the judges are measured on them."""
    from prefloop.tinyworld import topics

    if topics.HELDOUT_FILE.is_file():
        lines = topics.HELDOUT_FILE.read_text(encoding="utf-8").splitlines()
        return [json.loads(line)["prompt"] for line in lines if line.strip()]
    return [r["prompt"] for r in topics.prompt_splits()[1]]


def _build_into(out: Path, seed: int) -> dict:
    """Build the three parts into ``out``; returns the metrics to record."""
    import torch

    from prefloop.tinyworld import judges, policy

    heldout = _heldout_prompts()
    info: dict = {}
    start = time.monotonic()
    steps = [
        ("tokenizer", None),
        ("policy", lambda tok: policy.build_policy(out / "policy", tok, seed, set(heldout))),
        ("pairrm", lambda tok: judges.build_pairrm(out / "pairrm", tok, seed, heldout, out / "policy")),
        ("reward", lambda tok: judges.build_reward(out / "reward", tok, seed, heldout, out / "policy")),
    ]
    tok = None
    for i, (name, fn) in enumerate(steps, 1):
        log.info("assets [%d/%d] %s ... (%.0f s so far)", i, len(steps), name, time.monotonic() - start)
        torch.manual_seed(seed)
        if fn is None:
            tok = policy.train_tokenizer(policy.world_texts(random.Random(seed)))
            info["vocab_size"] = len(tok)
        else:
            info.update(fn(tok))
    info["build_s"] = round(time.monotonic() - start, 1)
    return info


def build_assets(root: Path | str | None = None, seed: int = 0, force: bool = False) -> TinyAssets:
    """Build (or find cached) the tiny policy, PairRM and reward model under ``root``; see the module doc."""
    root = Path(root or default_assets_dir()).expanduser().resolve()
    if not force and _is_built(root, seed):
        log.info("assets: cached in %s (seed %d)", root, seed)
        return TinyAssets.at(root)
    with _locked(root):
        if not force and _is_built(root, seed):  # another process finished it while we waited
            return TinyAssets.at(root)
        _check_replaceable(root)
        for stale in [*root.parent.glob(f".{root.name}.build-*"), *root.parent.glob(f".{root.name}.old-*")]:
            shutil.rmtree(stale, ignore_errors=True)  # left by a build that died
        tmp = root.parent / f".{root.name}.build-{os.getpid()}"
        tmp.mkdir()
        log.info("assets: building into %s (seed %d); this takes about a minute on 2 cores", root, seed)
        try:
            with _torch_threads(2):
                info = _build_into(tmp, seed)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if root.exists():
            old = root.parent / f".{root.name}.old-{os.getpid()}"
            root.rename(old)
            tmp.rename(root)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(root)
        from prefloop.tinyworld.judges import finalize_pairrm

        finalize_pairrm(root / "pairrm")
        record = {"format": FORMAT_VERSION, "seed": seed, "built_at": time.strftime("%Y-%m-%dT%H:%M:%S"), **info}
        marker_tmp = root / (MARKER + ".tmp")
        marker_tmp.write_text(json.dumps(record, indent=2), encoding="utf-8")
        marker_tmp.replace(root / MARKER)  # written last: its presence means the build is complete
        log.info("assets: built in %.0f s: %s", info["build_s"],
                 ", ".join(f"{k}={v}" for k, v in info.items() if "acc" in k))
    return TinyAssets.at(root)
