"""Scalar reward models: ``AutoModelForSequenceClassification``, or a base model plus a custom head loaded
without ``trust_remote_code``.

UltraRM-13b (openbmb) is the case that matters: its config says ``architectures: ["LlamaRewardModel"]`` and its
checkpoint holds a ``LlamaModel`` (keys ``model.*``) plus ``regression_head.weight`` (``Linear(hidden, 1,
bias=False)``); its reward is the head's output at the last non-padding token. Loading it as a sequence
classifier would build a fresh random ``score`` head, so here the base is loaded by transformers and the head's
weights are read from the checkpoint files, with a strict key check: a missing or unexpected key is an error
naming the keys. Other custom heads are named in the recipe (``scorer.reward_head``).

Llama tokenizers have no pad token; for padded scoring the unk token (UltraRM's config: pad_token_id 0) or eos
is used, with right padding (the reward is read at the last real token, so the pad value never matters).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

KNOWN_HEADS = {"LlamaRewardModel": ("regression_head", False)}  # architectures[0] -> (head name, bias)


@dataclass(frozen=True)
class HeadSpec:
    name: str
    bias: bool

    @property
    def keys(self) -> list[str]:
        return [f"{self.name}.weight"] + ([f"{self.name}.bias"] if self.bias else [])


def head_spec(config: dict[str, Any], recipe_head: dict[str, Any] | None = None) -> HeadSpec | None:
    """The custom head to load: the recipe's, else a known architecture's, else None (a sequence classifier)."""
    if recipe_head:
        return HeadSpec(str(recipe_head["name"]), bool(recipe_head.get("bias", False)))
    arch = (config.get("architectures") or [None])[0]
    if arch in KNOWN_HEADS:
        name, bias = KNOWN_HEADS[arch]
        return HeadSpec(name, bias)
    return None


def _weight_files(model_dir: Path) -> list[Path]:
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (model_dir / index).is_file():
            names = set(json.loads((model_dir / index).read_text())["weight_map"].values())
            return [model_dir / n for n in sorted(names)]
    for single in ("model.safetensors", "pytorch_model.bin"):
        if (model_dir / single).is_file():
            return [model_dir / single]
    raise FileNotFoundError(f"reward model {model_dir}: no model.safetensors / pytorch_model.bin (or their index)")


def read_tensors(model_dir: Path, keys: list[str]) -> tuple[dict[str, Any], list[str]]:
    """The tensors ``keys`` from the checkpoint files, and every key the checkpoint holds."""
    import torch

    found, all_keys = {}, []
    for path in _weight_files(model_dir):
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                names = list(f.keys())
                all_keys += names
                found.update({k: f.get_tensor(k) for k in keys if k in names})
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
            all_keys += list(state)
            found.update({k: state[k] for k in keys if k in state})
    return found, all_keys


class HeadRewardModel:
    """A base model (``AutoModel``) and a Linear head; ``__call__`` gives the reward at the last real token."""

    def __init__(self, model_dir: str, head: HeadSpec, device: str, dtype: Any):
        import torch
        from transformers import AutoModel

        path = Path(model_dir)
        self.base, info = AutoModel.from_pretrained(model_dir, dtype=dtype, output_loading_info=True)
        tensors, ckpt_keys = read_tensors(path, head.keys)
        missing = sorted(set(info["missing_keys"]) | {k for k in head.keys if k not in tensors})
        unexpected = sorted(set(info["unexpected_keys"]) - set(head.keys))
        if missing or unexpected:
            raise ValueError(f"reward model {model_dir} ({head.name} head): checkpoint keys do not match: "
                             f"missing {missing}, unexpected {unexpected}")
        weight = tensors[f"{head.name}.weight"]
        self.head = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=head.bias, dtype=dtype)
        self.head.load_state_dict({k.split(".", 1)[1]: v for k, v in tensors.items()}, strict=True)
        self.base.to(device).eval().requires_grad_(False)
        self.head.to(device).eval().requires_grad_(False)
        log.info("reward model %s: base %s + %s head %s (%d checkpoint keys)", model_dir,
                 type(self.base).__name__, head.name, tuple(weight.shape), len(ckpt_keys))

    def __call__(self, input_ids: Any, attention_mask: Any) -> Any:
        hidden = self.base(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        rewards = self.head(hidden).squeeze(-1)  # [B, T]
        return rewards.gather(1, last_token_index(attention_mask)[:, None])[:, 0]


def last_token_index(attention_mask: Any) -> Any:
    """Index of the last non-padding token of each row (right or left padding)."""
    return attention_mask.long().cumsum(dim=1).argmax(dim=1)


def ensure_pad_token(tokenizer: Any) -> None:
    """Llama / Mistral tokenizers have no pad token: use unk (UltraRM's pad id 0), else eos; pad on the right."""
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.unk_token if tokenizer.unk_token is not None else tokenizer.eos_token
    tokenizer.padding_side = "right"


def max_input_tokens(model_dir: str, tokenizer: Any) -> int:
    """The most tokens the reward model takes: its config's ``max_position_embeddings`` and the tokenizer's
    ``model_max_length`` (when that is a real bound, not transformers' 1e30 placeholder), the smaller."""
    config = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    bounds = [int(config["max_position_embeddings"])] if config.get("max_position_embeddings") else []
    if getattr(tokenizer, "model_max_length", None) and tokenizer.model_max_length < 10**9:
        bounds.append(int(tokenizer.model_max_length))
    if not bounds:
        raise ValueError(f"reward model {model_dir}: neither max_position_embeddings nor model_max_length says how "
                         f"many tokens it takes")
    return min(bounds)


def load_reward_model(model_dir: str, device: str, dtype: Any, recipe_head: dict[str, Any] | None = None,
                      pad_token_id: int | None = None) -> Any:
    """A callable ``(input_ids, attention_mask) -> rewards [B]`` for any supported reward model layout."""
    import torch
    from transformers import AutoModelForSequenceClassification

    config = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    spec = head_spec(config, recipe_head)
    if spec is not None:
        return HeadRewardModel(model_dir, spec, device, dtype)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=dtype).to(device).eval()
    model.requires_grad_(False)
    if model.config.pad_token_id is None and pad_token_id is not None:
        model.config.pad_token_id = pad_token_id  # the classifier finds the last real token by the pad id

    def score(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return model(input_ids=input_ids, attention_mask=attention_mask).logits[:, 0]

    return score
