"""The tiny offline assets of the demo: build them once, deterministically from a seed, and cache them.

``build_assets(root)`` makes, with no download and in under two minutes on a 2-core CPU:

- ``root/policy``: a tiny Llama chat policy (TuluV2 template) pre-trained on the demo world
  (``policy``), loadable by transformers and vLLM;
- ``root/pairrm``: a tiny PairRM in llm-blender's on-disk format (``judges``), loadable with
  ``Blender().loadranker(root/"pairrm")`` or ``prefloop.actors.blender_compat.load_pairrm``;
- ``root/reward``: a tiny scalar reward model (``AutoModelForSequenceClassification``, UltraRM template).

The judges are proxies of ``prefloop.tinyworld.gold.gold_score``, trained on noisy labels of it; their
held-out pair accuracies against the exact gold order are logged and kept in the marker file.

Parts are built on demand: ``build_assets(root, parts=...)`` builds only the parts asked for (the policy always,
since the judges start from it), and a later call for another part adds it beside them. A recipe asks for the
parts its paths name (``parts_used``): the demo needs the policy and PairRM, not the reward model (about 30 s
of a 2-core build). Each part is trained from its own seed whether it is built alone or with the others, so the
result does not depend on the order they were asked for in.

Caching: parts are built in a sibling temp dir and renamed into place, and only then is the marker (format
version, seed, parts) written, atomically; a build that dies half-way never looks finished, and a part dir the
marker does not list is rebuilt. A lock file keeps two processes from building the same dir at once.
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
from typing import Any, Iterable, Iterator

log = logging.getLogger(__name__)

FORMAT_VERSION = 5  # bump when what a build produces changes; older caches are then rebuilt
MARKER = "prefloop-assets.json"
PARTS = ("policy", "pairrm", "reward")
# Torch threads per builder, fixed so the numbers do not depend on the machine. The policy's pre-training gives
# the same bits at 1 and 2 threads, and on a busy machine 2 threads wait on each other at every op while 1 does
# not. The judges' DeBERTa / Llama steps differ in the last bits between 1 and 2 threads, so they keep 2.
THREADS = {"tokenizer": 1, "policy": 1, "pairrm": 2, "reward": 2}


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


def built_parts(root: Path, seed: int) -> set[str]:
    """The parts a finished build of this format and seed holds (a marker without ``parts`` holds all three)."""
    marker = read_marker(root)
    if marker is None or marker.get("format") != FORMAT_VERSION or marker.get("seed") != seed:
        return set()
    return {p for p in marker.get("parts", PARTS) if p in PARTS and (root / p).is_dir()}


def _wanted(parts: Iterable[str]) -> set[str]:
    """The parts asked for plus the policy, which every judge starts from; an unknown name is an error."""
    wanted = set(parts)
    unknown = wanted - set(PARTS)
    if unknown:
        raise ValueError(f"unknown tiny asset part(s) {sorted(unknown)}; the parts are {list(PARTS)}")
    return wanted | {"policy"}


def parts_used(values: Any, root: Path | str) -> set[str]:
    """The parts a recipe names: every string in ``values`` (a recipe dumped to a dict) under ``root/PART``."""
    prefixes = {str(Path(root).expanduser()) + os.sep, str(Path(root).expanduser().resolve()) + os.sep}
    found: set[str] = set()

    def walk(v: Any) -> None:
        if isinstance(v, dict):
            for item in v.values():
                walk(item)
        elif isinstance(v, (list, tuple)):
            for item in v:
                walk(item)
        elif isinstance(v, str):
            for prefix in prefixes:
                rest = Path(v[len(prefix):]).parts if v.startswith(prefix) else ()
                if rest and rest[0] in PARTS:
                    found.add(rest[0])

    walk(values)
    return found


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


# Beside the parts, the cache holds the models `prefloop model import` made (app/models/catalog.py): a rebuild of the
# tiny world keeps them.
KEPT = ("imported",)


def _check_replaceable(root: Path) -> None:
    """Refuse to replace a directory that is not an assets dir (a typo must not delete someone's files)."""
    if root.exists():
        extra = {p.name for p in root.iterdir()} - {*PARTS, *KEPT, MARKER, MARKER + ".tmp"}
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


def _tokenizer(seed: int, policy_dir: Path | None):
    """The shared tokenizer, trained from the seed; when the policy is already built, checked against its
    vocabulary (a judge built later must use the very ids the policy was trained on)."""
    from prefloop.tinyworld import policy

    tok = policy.train_tokenizer(policy.world_texts(random.Random(seed)))
    if policy_dir is not None:
        from transformers import AutoTokenizer

        if AutoTokenizer.from_pretrained(policy_dir).get_vocab() != tok.get_vocab():
            raise RuntimeError(f"the tokenizer trained from seed {seed} differs from {policy_dir}'s; "
                               "rebuild the assets with --force")
    return tok


def _build_into(out: Path, seed: int, parts: set[str], policy_dir: Path | None = None) -> dict:
    """Build ``parts`` into ``out`` (the judges from ``policy_dir``, else from the policy built here);
    returns the metrics to record."""
    import torch

    from prefloop.tinyworld import judges, policy

    heldout = _heldout_prompts()
    info: dict = {}
    start = time.monotonic()
    policy_dir = policy_dir or out / "policy"
    builders = {
        "policy": lambda tok: policy.build_policy(out / "policy", tok, seed, set(heldout)),
        "pairrm": lambda tok: judges.build_pairrm(out / "pairrm", tok, seed, heldout, policy_dir),
        "reward": lambda tok: judges.build_reward(out / "reward", tok, seed, heldout, policy_dir),
    }
    steps = ["tokenizer", *(p for p in PARTS if p in parts)]
    tok = None
    for i, name in enumerate(steps, 1):
        log.info("assets [%d/%d] %s ... (%.0f s so far)", i, len(steps), name, time.monotonic() - start)
        torch.manual_seed(seed)
        with _torch_threads(THREADS[name]):
            if name == "tokenizer":
                tok = _tokenizer(seed, None if "policy" in parts else policy_dir)
                info["vocab_size"] = len(tok)
            else:
                info.update(builders[name](tok))
    info["build_s"] = round(time.monotonic() - start, 1)
    return info


def build_assets(root: Path | str | None = None, seed: int = 0, force: bool = False,
                 parts: Iterable[str] = PARTS) -> TinyAssets:
    """Build (or find cached) the tiny assets under ``root``: ``parts`` of policy / pairrm / reward (the policy
    always); see the module doc."""
    root = Path(root or default_assets_dir()).expanduser().resolve()
    wanted = _wanted(parts)
    if not force and wanted <= built_parts(root, seed):
        log.info("assets: cached in %s (seed %d)", root, seed)
        return TinyAssets.at(root)
    with _locked(root):
        have = set() if force else built_parts(root, seed)
        if wanted <= have:  # another process finished it while we waited
            return TinyAssets.at(root)
        _check_replaceable(root)
        for stale in [*root.parent.glob(f".{root.name}.build-*"), *root.parent.glob(f".{root.name}.old-*")]:
            shutil.rmtree(stale, ignore_errors=True)  # left by a build that died
        if "policy" in have:
            _add_parts(root, seed, sorted(wanted - have), have)
        else:
            _build_fresh(root, seed, wanted)
    return TinyAssets.at(root)


def _build_fresh(root: Path, seed: int, parts: set[str]) -> None:
    """Build ``parts`` (with the policy) into a temp dir and swap it in for whatever ``root`` held."""
    tmp = root.parent / f".{root.name}.build-{os.getpid()}"
    tmp.mkdir()
    log.info("assets: building %s into %s (seed %d); this takes 2-3 minutes on 2 cores",
             ", ".join(p for p in PARTS if p in parts), root, seed)
    try:
        info = _build_into(tmp, seed, parts)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if root.exists():
        for kept in KEPT:  # not the tiny world's: carried over to the new dir
            if (root / kept).exists():
                (root / kept).rename(tmp / kept)
        old = root.parent / f".{root.name}.old-{os.getpid()}"
        root.rename(old)
        tmp.rename(root)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(root)
    _finish(root, seed, parts, info)


def _add_parts(root: Path, seed: int, missing: list[str], have: set[str]) -> None:
    """Build the judges ``missing`` from the policy already in ``root`` and move them in beside it."""
    tmp = root.parent / f".{root.name}.build-{os.getpid()}"
    tmp.mkdir()
    log.info("assets: adding %s to %s (seed %d)", ", ".join(missing), root, seed)
    try:
        info = _build_into(tmp, seed, set(missing), policy_dir=root / "policy")
        for part in missing:
            if (root / part).exists():  # a part dir the marker does not list: left by a build that died
                shutil.rmtree(root / part)
            (tmp / part).rename(root / part)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _finish(root, seed, have | set(missing), {**(read_marker(root) or {}), **info})


def _finish(root: Path, seed: int, parts: set[str], info: dict) -> None:
    """Point the ranker at its backbone's final path, then write the marker last (atomically): its presence
    means the parts it lists are complete."""
    from prefloop.tinyworld.judges import finalize_pairrm

    if "pairrm" in parts:
        finalize_pairrm(root / "pairrm")
    info = {k: v for k, v in info.items() if k not in ("format", "seed", "parts", "built_at")}
    record = {"format": FORMAT_VERSION, "seed": seed, "parts": [p for p in PARTS if p in parts],
              "built_at": time.strftime("%Y-%m-%dT%H:%M:%S"), **info}
    marker_tmp = root / (MARKER + ".tmp")
    marker_tmp.write_text(json.dumps(record, indent=2), encoding="utf-8")
    marker_tmp.replace(root / MARKER)
    log.info("assets: built in %.0f s: %s", info["build_s"],
             ", ".join(f"{k}={v}" for k, v in info.items() if "acc" in k))
