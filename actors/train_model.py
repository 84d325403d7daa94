"""The model side of training, shared by the train loop, the reference pass and ReMax: loading a policy (LoRA,
gradient checkpointing) in the precision ``core/precision.py`` picks from ``policy.dtype``, FSDP2 sharding with
its mixed-precision policy, encoding (prompt, response) batches, summed response log-probs under autocast, and
``ReferenceLogps``, the Ray Data actor that computes a frozen reference's log-probs once per round.

Sequence log-probs (DPO, KTO, the reference pass) run on packed batches (``core/packing.py``, ``train.packing``):
no padding, and the LM head projects only the hidden states of the positions that predict a response token (a
forward pre-hook on the output embedding hands it ``hidden[select]``), so neither prompt positions nor padding
reach the vocabulary-sized matmul and log-softmax.

The compute dtype a model was loaded for travels with it (``compute_dtype(model)``), so every forward of that
model (``seq_logps``, ``autocast(cfg, device, model)``) uses it without threading it through each call.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager, nullcontext
from typing import Any, Iterator

import numpy as np
import torch

from prefloop.core.batching import encode_pairs, encode_pairs_packed
from prefloop.core.logprobs import label_logps, segment_logps, sequence_logps
from prefloop.core.packing import Packed
from prefloop.core.precision import Precision, resolve_precision
from prefloop.core.train_config import TrainConfig

log = logging.getLogger(__name__)


def wants_bos(tokenizer: Any) -> bool:
    """Whether tokenisation with special tokens starts with BOS (the templates' rule: tokenisation adds it)."""
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("x", add_special_tokens=True)["input_ids"][:1] == [bos]


def encode(tokenizer: Any, prompts: Any, responses: Any, cfg: TrainConfig) -> dict[str, torch.Tensor]:
    return encode_pairs(tokenizer, [str(p) for p in prompts], [str(r) for r in responses], cfg.max_prompt_len,
                        cfg.max_response_len, add_bos=wants_bos(tokenizer), padding_side="right")


def _inner(model: Any) -> Any:
    return model.module if hasattr(model, "module") else model  # DDP wrapper


# attention implementations that read packed sequences from restarting position ids with any batch size
PACKING_ATTENTION = ("sdpa", "eager")


def packs(model: Any, cfg: TrainConfig) -> bool:
    """Whether ``seq_batch`` packs for this model: ``train.packing`` and an attention that supports it."""
    impl = getattr(getattr(_inner(model), "config", None), "_attn_implementation", None)
    return cfg.packing and impl in PACKING_ATTENTION


def seq_batch(tokenizer: Any, prompts: Any, responses: Any, cfg: TrainConfig, model: Any) -> Packed | dict:
    """What ``seq_logps`` takes: a packed batch where the model supports it, else the padded ``encode``."""
    if not packs(model, cfg):
        return encode(tokenizer, prompts, responses, cfg)
    return encode_pairs_packed(tokenizer, [str(p) for p in prompts], [str(r) for r in responses],
                               cfg.max_prompt_len, cfg.max_response_len, add_bos=wants_bos(tokenizer))


def batch_tokens(batch: Packed | dict) -> int:
    """Real (non-pad) tokens of a ``seq_batch`` batch."""
    return batch.tokens if isinstance(batch, Packed) else int(batch["attention_mask"].sum())


@contextmanager
def scored_positions_only(model: Any, select: torch.Tensor) -> Iterator[None]:
    """During this forward the LM head sees ``hidden[select]`` ([N, H]) instead of [R, C, H]: logits are [N, V]."""
    head = _inner(model).get_output_embeddings()
    if head is None:
        raise ValueError(f"{type(_inner(model)).__name__} has no output embedding to score packed positions with")
    handle = head.register_forward_pre_hook(lambda _module, args: (args[0][select], *args[1:]))
    try:
        yield
    finally:
        handle.remove()


COMPUTE_ATTR = "_prefloop_compute_dtype"


def precision_for(cfg: TrainConfig | None, device: torch.device, policy_dtype: str = "float32",
                  model_dir: str | None = None) -> Precision:
    """``core.precision.resolve_precision`` for this device; a changed request is logged once here."""
    config_dtype = None
    if policy_dtype == "auto" and model_dir is not None:
        from transformers import AutoConfig

        raw = getattr(AutoConfig.from_pretrained(model_dir), "dtype", None)
        config_dtype = str(raw).replace("torch.", "") if raw is not None else None
    bf16_ok = device.type != "cuda" or torch.cuda.is_bf16_supported()
    p = resolve_precision(policy_dtype, bool(cfg and cfg.bf16), device.type, bf16_ok, config_dtype)
    if p.note:
        log.warning("policy.dtype %s: %s", policy_dtype, p.note)
    return p


def compute_dtype(model: Any) -> torch.dtype | None:
    name = getattr(_inner(model), COMPUTE_ATTR, None)
    return getattr(torch, name) if name else None


def autocast(cfg: TrainConfig, device: torch.device, model: Any = None) -> Any:
    """Autocast in the model's compute dtype (``load_model``); without a model, ``train.bf16`` as before."""
    dtype = compute_dtype(model) if model is not None else None
    if dtype is None:
        if not cfg.bf16:
            return nullcontext()
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            log.warning("bf16 asked for but this GPU has no bfloat16: training in float32")
            return nullcontext()
        dtype = torch.bfloat16
    if dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def seq_logps(model: Any, enc: Packed | dict[str, torch.Tensor], cfg: TrainConfig,
              device: torch.device) -> torch.Tensor:
    """Summed (IPO: averaged) response log-probs [B] of a ``seq_batch`` batch (packed) or an ``encode`` one."""
    if isinstance(enc, Packed):
        p = enc.to(device)
        # no attention mask: the model reads the packing from the restarting position ids
        with autocast(cfg, device, model), scored_positions_only(model, p.select):
            logits = model(input_ids=p.input_ids, position_ids=p.position_ids, use_cache=False).logits
        return segment_logps(label_logps(logits, p.targets), p.segment, p.n_seqs, average=cfg.ipo)
    ids, attn, mask = (enc[k].to(device) for k in ("input_ids", "attention_mask", "loss_mask"))
    with autocast(cfg, device, model):
        logits = model(input_ids=ids, attention_mask=attn).logits
    return sequence_logps(logits, ids, mask, average=cfg.ipo)


def load_model(model_dir: str, device: torch.device, trainable: bool, cfg: TrainConfig | None = None,
               dtype: str = "float32") -> Any:
    """The policy (trainable) or a frozen model, in the precision ``policy.dtype`` asks for on this device:
    frozen models and a LoRA base in the compute dtype, full fine-tuning with fp32 master weights."""
    from transformers import AutoModelForCausalLM

    p = precision_for(cfg, device, dtype, model_dir)
    full = trainable and cfg is not None and cfg.lora is None
    load_dtype = getattr(torch, p.master if full else p.frozen)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=load_dtype)
    if not trainable:
        model = model.to(device).eval().requires_grad_(False)
        setattr(model, COMPUTE_ATTR, p.compute)  # frozen fp32 weights still compute under bf16 autocast if asked
        return model
    if cfg.gradient_checkpointing:
        model.config.use_cache = False
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.lora is not None:
        from peft import LoraConfig, get_peft_model

        lora = cfg.lora
        # peft keeps the adapters in fp32 on a bf16/fp16 base (autocast_adapter_dtype): they are the master weights
        model = get_peft_model(model, LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                                 target_modules=list(lora.target_modules), task_type="CAUSAL_LM"))
        if cfg.method == "csft":
            # the new control-token embeddings start random: train the embedding and head rows with the adapters,
            # in fp32 like every trainable weight
            for name, module in model.named_modules():
                if name.endswith(("embed_tokens", "lm_head")) and hasattr(module, "weight"):
                    module.float().weight.requires_grad_(True)
    setattr(model, COMPUTE_ATTR, p.compute)
    return model.train()


def shard_fsdp(model: Any, device: torch.device, world: int) -> Any:
    """FSDP2 (``fully_shard``): each transformer block (the model's ``_no_split_modules``), then the root, over
    all workers. Unlike FSDP1 it runs with gloo on CPU as with NCCL on GPUs, so CPU tests cover it. With a
    bf16/fp16 compute dtype the gathered parameters are cast to it and gradients are reduced in fp32."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device.type, (world,))
    dtype = compute_dtype(model)
    kwargs: dict[str, Any] = {"mesh": mesh}
    if dtype is not None and dtype != torch.float32:
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
    blocks = set(getattr(model, "_no_split_modules", None) or ())
    for module in [m for m in model.modules() if type(m).__name__ in blocks]:
        fully_shard(module, **kwargs)
    return fully_shard(model, **kwargs)


def load_reference(model_dir: str, device: torch.device, cfg: TrainConfig, dtype: str, world: int,
                   sharded: bool) -> Any:
    """A frozen reference in the compute dtype, no grad; sharded over the workers when the policy is (FSDP)."""
    model = load_model(model_dir, device if not sharded else torch.device("cpu"), False, cfg, dtype)
    # fully_shard moves each worker's shard to the mesh's device: no worker holds the whole reference there
    return shard_fsdp(model, device, world) if sharded else model


class ReferenceLogps:
    """Ray Data actor: the frozen reference's log-probs of every example, computed once per round, no grad.

    Adds ``ref_chosen``/``ref_rejected`` (DPO) or ``ref_logps``/``ref_kl_logps`` (KTO) to each batch.
    """

    def __init__(self, model_dir: Any, tokenizer_dir: Any, train: dict[str, Any], dtype: str = "float32"):
        from transformers import AutoTokenizer

        from prefloop.actors.model_cache import local_model

        model_dir, tokenizer_dir = local_model(model_dir, "reference"), local_model(tokenizer_dir, "tokenizer")
        self.cfg = TrainConfig.model_validate(train)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        self.model = load_model(model_dir, self.device, False, self.cfg, dtype)

    @torch.no_grad()
    def _logps(self, prompts: Any, responses: Any) -> np.ndarray:
        enc = seq_batch(self.tokenizer, prompts, responses, self.cfg, self.model)
        return seq_logps(self.model, enc, self.cfg, self.device).float().cpu().numpy()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        prompts = batch["prompt_text"]
        if self.cfg.method == "dpo":
            batch["ref_chosen"] = self._logps(prompts, batch["chosen"])
            batch["ref_rejected"] = self._logps(prompts, batch["rejected"])
        else:
            batch["ref_logps"] = self._logps(prompts, batch["completion"])
            batch["ref_kl_logps"] = self._logps(prompts, batch["kl_completion"])
        return batch
