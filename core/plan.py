"""Memory of every actor kind, from a model's ``config.json`` alone: no weights, no GPU, no torch.

``prefloop plan`` (app/front/plan.py) sets these figures against the GPUs of a cluster file; ``bench/gpu_check.py``
prints them next to the peak memory it measures. Parameter counts are exact arithmetic over the layer shapes of
the architectures the recipes use (Llama / Mistral / Qwen2 decoders, UltraRM's ``LlamaRewardModel``, DeBERTa-v2 and
llm-blender's PairRM head); any other ``model_type`` is counted by building the model on PyTorch's meta device.

Memory is in bytes, printed in decimal GB (Mistral-7B: 7.24 B parameters, 14.5 GB of bf16 weights). Activation
terms are estimates (stated per formula below, ours), the rest is exact bookkeeping of weights, gradients and
AdamW states. An estimate is meant to catch a plan that cannot fit, not to size a batch to the last MB.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

GB = 1e9
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
DECODER_TYPES = ("llama", "mistral", "qwen2")
# CUDA context, cuBLAS / NCCL workspaces, allocator slack per GPU process (ours; ~1 GB is typical on H100 / A100)
RUNTIME_OVERHEAD = 1.5 * GB
# vLLM's own default gpu_memory_utilization: the engine plans inside this share of the GPU
VLLM_GPU_SHARE = 0.9


@dataclass(frozen=True)
class ModelShape:
    """What the memory formulas need from a config.json."""

    name: str
    kind: str  # "decoder" | "reward" (decoder body + scalar head) | "pairrm" | "other"
    params: int
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    intermediate: int
    source: str = ""

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        """K and V of every layer for one token (vLLM's KV cache)."""
        return 2 * self.layers * self.kv_heads * self.head_dim * dtype_bytes

    def linear_params(self) -> int:
        """Parameters of the decoder blocks' linear layers (what LoRA on all linear layers adapts)."""
        return self.layers * self._layer_linear()

    def _layer_linear(self) -> int:
        h, kv = self.hidden, self.kv_heads * self.head_dim
        return h * self.heads * self.head_dim * 2 + 2 * h * kv + 3 * h * self.intermediate

    def lora_params(self, r: int, targets: tuple[str, ...]) -> int:
        """LoRA A (r x in) and B (out x r) for each targeted projection of every decoder block."""
        h, q, kv, i = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim, self.intermediate
        dims = {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}
        return self.layers * sum(r * (dims[t][0] + dims[t][1]) for t in targets if t in dims)


def _decoder_params(c: dict[str, Any]) -> tuple[int, int, int, int, int, int, int]:
    h, layers, heads = c["hidden_size"], c["num_hidden_layers"], c["num_attention_heads"]
    kv = c.get("num_key_value_heads") or heads
    hd = c.get("head_dim") or h // heads
    inter, vocab = c["intermediate_size"], c["vocab_size"]
    attn = h * heads * hd + 2 * h * kv * hd + heads * hd * h
    if c.get("model_type") == "qwen2":
        attn += heads * hd + 2 * kv * hd  # q/k/v biases
    per_layer = attn + 3 * h * inter + 2 * h  # + input / post-attention RMSNorm
    return per_layer * layers + vocab * h + h, layers, h, heads, kv, hd, inter  # + embeddings + final norm


def _deberta_params(c: dict[str, Any]) -> int:
    """DeBERTa-v2/v3 (``DebertaV2Model``): embeddings (+ LayerNorm), blocks, relative-position embeddings."""
    h, layers, inter, vocab = c["hidden_size"], c["num_hidden_layers"], c["intermediate_size"], c["vocab_size"]
    emb = vocab * h + 2 * h
    if c.get("position_biased_input", True):
        emb += c.get("max_position_embeddings", 512) * h
    if c.get("type_vocab_size", 0) > 0:
        emb += c["type_vocab_size"] * h
    emb_size = c.get("embedding_size", h)
    if emb_size != h:
        emb += emb_size * h
    block = 4 * (h * h + h) + 2 * h + (h * inter + inter) + (inter * h + h) + 2 * h  # attn, LN, FFN, LN
    rel = 0
    if c.get("relative_attention", False):
        buckets = c.get("position_buckets", -1)
        max_rel = c.get("max_relative_positions", -1)
        span = buckets if buckets > 0 else (max_rel if max_rel > 0 else c.get("max_position_embeddings", 512))
        rel = 2 * span * h
        if "layer_norm" in c.get("norm_rel_ebd", "none"):
            rel += 2 * h
    return emb + layers * block + rel


def _meta_params(config_dir: Path) -> int:
    """Any other architecture: build it on the meta device (no memory, no weights) and count."""
    import torch
    from transformers import AutoConfig, AutoModel

    cfg = AutoConfig.from_pretrained(str(config_dir))
    with torch.device("meta"):
        model = AutoModel.from_config(cfg)
    return sum(p.numel() for p in model.parameters())


def model_shape(config: dict[str, Any], name: str, config_dir: Path | None = None, source: str = "") -> ModelShape:
    """The shape of a decoder, a ``LlamaRewardModel``, a DeBERTa backbone; other types via the meta device."""
    mtype = config.get("model_type", "")
    arch = (config.get("architectures") or [""])[0]
    if mtype in DECODER_TYPES:
        body, layers, h, heads, kv, hd, inter = _decoder_params(config)
        vocab = config["vocab_size"]
        if arch == "LlamaRewardModel" or arch.endswith("ForSequenceClassification"):
            labels = 1 if arch == "LlamaRewardModel" else config.get("num_labels", 2)
            return ModelShape(name, "reward", body + h * labels, layers, h, heads, kv, hd, vocab, inter, source)
        lm_head = 0 if config.get("tie_word_embeddings", False) else vocab * h
        return ModelShape(name, "decoder", body + lm_head, layers, h, heads, kv, hd, vocab, inter, source)
    if mtype in ("deberta-v2", "deberta"):
        h, heads = config["hidden_size"], config["num_attention_heads"]
        return ModelShape(name, "other", _deberta_params(config), config["num_hidden_layers"], h, heads, heads,
                          h // heads, config["vocab_size"], config["intermediate_size"], source)
    if config_dir is None:
        raise ValueError(f"{name}: model_type {mtype!r} has no formula here and no config dir to build it from")
    h = config.get("hidden_size", 0)
    heads = config.get("num_attention_heads", 1)
    return ModelShape(name, "other", _meta_params(config_dir), config.get("num_hidden_layers", 0), h, heads, heads,
                      h // max(heads, 1), config.get("vocab_size", 0), config.get("intermediate_size", 4 * h), source)


def pairrm_shape(ranker: dict[str, Any], backbone: ModelShape, name: str) -> ModelShape:
    """llm-blender's PairRM: the backbone + 3 added special tokens + head Linear(2h, h) -> Tanh -> Linear(h, n)."""
    h, n = backbone.hidden, int(ranker.get("n_tasks", 1))
    extra = 3 * h + (2 * h * h + h) + (h * n + n)
    return ModelShape(name, "pairrm", backbone.params + extra, backbone.layers, h, backbone.heads,
                      backbone.kv_heads, backbone.head_dim, backbone.vocab, backbone.intermediate, backbone.source)


def read_config(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: cannot read config.json: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: config.json is not a JSON object")  # noqa: TRY004 - a bad file, not a bad call
    return data


@dataclass
class Need:
    """One actor's memory on one GPU: named parts (bytes) and the share of the GPU it may use."""

    actor: str
    model: str
    parts: dict[str, float] = field(default_factory=dict)
    gpu_share: float = 1.0  # vLLM plans inside 90 % of the GPU
    gpus: float = 1.0       # GPUs per actor (a fraction shares one GPU)
    note: str = ""

    @property
    def total(self) -> float:
        return sum(self.parts.values())


def generator_need(shape: ModelShape, dtype_bytes: int, max_model_len: int, kv_cache_gb: float | None,
                   tp: int = 1, actor: str = "generator") -> Need:
    """vLLM: weights (split over tensor parallelism) + KV cache (the recipe's size, or at least one full
    ``max_model_len`` sequence when vLLM sizes it) + runtime overhead, inside vLLM's 90 % of the GPU."""
    kv = kv_cache_gb * GB if kv_cache_gb else shape.kv_bytes_per_token(dtype_bytes) * max_model_len
    note = "" if kv_cache_gb else "KV: one max_model_len sequence (vLLM gives the rest of its 90 % to the cache)"
    return Need(actor, shape.name, {"weights": shape.params * dtype_bytes / tp, "kv_cache": kv / tp,
                                    "runtime": RUNTIME_OVERHEAD}, gpu_share=VLLM_GPU_SHARE, note=note)


def scorer_need(shape: ModelShape, dtype_bytes: int, batch: int, seq_len: int, actor: str = "scorer") -> Need:
    """No-grad forward in fp16/bf16: weights + the widest activations of one batch (hidden + MLP intermediate
    of one layer, kept twice) + for DeBERTa, whose disentangled attention materialises scores, c2p and p2c,
    three [batch, heads, seq, seq] tensors (ours: estimates)."""
    act = batch * seq_len * (shape.hidden + shape.intermediate) * dtype_bytes * 2
    if shape.kind == "pairrm":
        act += 3 * batch * shape.heads * seq_len * seq_len * dtype_bytes
    return Need(actor, shape.name, {"weights": shape.params * dtype_bytes, "activations": act,
                                    "runtime": RUNTIME_OVERHEAD})


@dataclass(frozen=True)
class TrainShape:
    """What the trainer formulas need from the recipe's train section."""

    strategy: str       # ddp | fsdp
    workers: int
    micro_batch: int    # sequences per forward (a DPO pair counts 2)
    seq_len: int
    lora_r: int | None = None
    lora_targets: tuple[str, ...] = ()
    checkpointing: bool = True


def train_need(shape: ModelShape, dtype_bytes: int, t: TrainShape, actor: str = "trainer") -> Need:
    """One Ray Train worker (see actors/precision.py for the precision each strategy uses):

    - LoRA (ddp): the frozen base in the training dtype; adapters in fp32 with their gradients and AdamW
      (4 + 4 + 8 bytes per adapter parameter);
    - full ddp: fp32 master weights, fp32 gradients, AdamW moments: 16 bytes per parameter, plus autocast's
      bf16 weight copies (2 bytes per parameter);
    - full fsdp over N workers: the 16 bytes per parameter sharded N ways, plus the gathered bf16 parameters of
      the largest unit (the root: embeddings + head; one block is smaller) twice (prefetch).

    Activations (ours): with gradient checkpointing, each block's input (seq x hidden, 2 bytes) plus one block's
    full activations (~34 x seq x hidden bytes, Korthikanti et al. 2022, SDPA: no seq^2 term); without, all blocks'.
    Logits in fp32 for the log-softmax: seq x vocab x 4 bytes, ~3 live copies (logits, log-softmax, grad).
    """
    p, sharded = shape.params, t.strategy == "fsdp" and t.workers > 1
    parts: dict[str, float] = {}
    if t.lora_r:
        lora = shape.lora_params(t.lora_r, t.lora_targets)
        parts["weights"] = p * dtype_bytes
        parts["adapters+grads+adam"] = lora * 16
    elif sharded:
        parts["master+grads+adam"] = p * 16 / t.workers
        parts["gathered_params"] = 2 * (2 * shape.vocab * shape.hidden) * dtype_bytes
    else:
        parts["master+grads+adam"] = p * 16
        parts["autocast_copies"] = p * 2
    tokens = t.micro_batch * t.seq_len
    block = 34 * tokens * shape.hidden
    stored = tokens * shape.hidden * 2 * shape.layers if t.checkpointing else block * shape.layers
    parts["activations"] = stored + (block if t.checkpointing else 0)
    parts["logits"] = 3 * tokens * shape.vocab * 4
    parts["runtime"] = RUNTIME_OVERHEAD
    note = f"{t.strategy} x{t.workers}" + (f", LoRA r={t.lora_r}" if t.lora_r else ", full")
    return Need(actor, shape.name, parts, note=note)


def reference_need(shape: ModelShape, dtype_bytes: int, t: TrainShape, actor: str = "reference") -> Need:
    """A frozen reference in the training dtype, no grad: its weights (sharded like the trainer under fsdp)
    and one forward's logits."""
    shard = t.workers if t.strategy == "fsdp" and t.workers > 1 else 1
    tokens = t.micro_batch * t.seq_len
    return Need(actor, shape.name, {"weights": shape.params * dtype_bytes / shard,
                                    "logits": tokens * shape.vocab * 4}, note="no grad")


def fmt_gb(n: float) -> str:
    return f"{n / GB:.1f}"
