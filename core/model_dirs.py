"""What a model folder must hold before anything loads it, checked with the files alone (no torch, no transformers).

- ``check_model_dir``: a Hugging Face directory has ``config.json`` (raises, naming the recipe key and the path);
- ``model_dir_problems``: the preflight's fuller look: ``config.json`` loads and names a model, weights are there,
  and so is a tokenizer that loads (``tokenizers``, the Rust library, so no transformers import);
- ``check_ranker_dir``: an llm-blender PairRM ranker folder (config.json, weights, its backbone folder).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

WEIGHTS = ("*.safetensors", "*.bin", "*.pt")


def check_model_dir(path: str, what: str) -> None:
    """Fail early, naming the path, instead of deep inside vLLM or transformers."""
    if not Path(path, "config.json").is_file():
        raise FileNotFoundError(f"{what} {path!r}: not a Hugging Face model directory (no config.json)")


def tokenizer_problems(path: Path, key: str) -> list[str]:
    """Empty when ``path`` holds a tokenizer that loads."""
    if (path / "tokenizer.json").is_file():
        from tokenizers import Tokenizer

        try:
            Tokenizer.from_file(str(path / "tokenizer.json"))
        except Exception as err:  # the Rust loader raises a plain Exception for any bad file
            return [f"{key} {path}: tokenizer.json does not load: {err}"]
        return []
    if (path / "tokenizer_config.json").is_file() and any(
            (path / f).is_file() for f in ("tokenizer.model", "vocab.json", "vocab.txt", "spm.model")):
        return []
    return [f"{key} {path}: no tokenizer (tokenizer.json, or tokenizer_config.json with its vocabulary)"]


def model_dir_problems(path: str, key: str, tokenizer: bool = True) -> list[str]:
    """A Hugging Face model directory: config.json that loads, weights, and (``tokenizer``) a tokenizer."""
    d = Path(path)
    if not d.is_dir():
        return [f"{key} {path}: no such directory"]
    config = d / "config.json"
    if not config.is_file():
        return [f"{key} {path}: not a Hugging Face model directory (no config.json)"]
    try:
        doc = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        return [f"{key} {config}: does not load: {err}"]
    problems = [] if isinstance(doc, dict) and (doc.get("model_type") or doc.get("architectures")) else \
        [f"{key} {config}: no model_type or architectures (not a model's config.json)"]
    if not any(next(d.glob(w), None) for w in WEIGHTS):
        problems.append(f"{key} {path}: no weights (*.safetensors or *.bin)")
    return problems + (tokenizer_problems(d, key) if tokenizer else [])


def check_ranker_dir(ranker_dir: str | os.PathLike) -> Path:
    """The ranker dir, checked: config.json, weights, and a backbone dir; else FileNotFoundError naming it.

    A relative ``model_name`` in config.json is resolved against the ranker dir; an absolute one that no
    longer exists is looked for by its name inside the ranker dir, so a ranker with its backbone inside it
    can be moved or copied. Returns the backbone dir.
    """
    path = Path(ranker_dir)
    if not path.is_dir():
        raise FileNotFoundError(f"PairRM ranker dir {path} does not exist (build the tiny one with "
                                "`prefloop assets build`)")
    config = path / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"PairRM ranker dir {path}: no config.json (missing or incomplete ranker)")
    if not any((path / w).is_file() for w in ("model.safetensors", "pytorch_model.bin")):
        raise FileNotFoundError(f"PairRM ranker dir {path}: no model.safetensors or pytorch_model.bin")
    name = json.loads(config.read_text(encoding="utf-8")).get("model_name")
    if not name:
        raise FileNotFoundError(f"PairRM ranker dir {path}: config.json has no model_name (backbone dir)")
    backbone = Path(name) if Path(name).is_absolute() else path / name
    if not (backbone / "config.json").is_file() and (path / Path(name).name / "config.json").is_file():
        backbone = path / Path(name).name
    if not (backbone / "config.json").is_file():
        raise FileNotFoundError(f"PairRM ranker dir {path}: backbone dir {backbone} is missing or incomplete "
                                "(only local rankers are supported; nothing is downloaded)")
    return backbone
