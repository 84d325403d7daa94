"""The tiny policy of the offline demo: a byte-level BPE tokenizer and a 2-layer Llama, pre-trained on CPU.

The tokenizer is trained on text of the synthetic world (``prefloop.tinyworld.topics``) and reused, with their own
chat templates, by the tiny judges. The policy is pre-trained (supervised, loss on the answer only) on chat
examples ``<s><|user|>\\n{prompt}\\n<|assistant|>\\n{answer}</s>`` whose answers stay on the prompt's topic
for some sentences and drift for others, and run one to four sentences. Its samples therefore vary on
what the judges score, which is what online DPO needs to learn from.

Shapes follow STACK.md: hidden 64, 2 layers, 2 heads of head_dim 32 (vLLM's CPU attention kernel needs
head_dim 32 or more), 1 KV head, float32.
"""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path
from typing import Callable, Iterable

import torch

from prefloop.actors.blender_compat import RANKER_MARKERS
from prefloop.core.templates import TULU_JINJA
from prefloop.core.train_config import lr_factor
from prefloop.tinyworld import topics

log = logging.getLogger(__name__)

BOS, EOS, PAD = "<s>", "</s>", "<pad>"
CHAT_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
# Sub-word vocabulary: most topic words take 2-3 tokens. (A whole-word vocabulary of ~1600 was tried: the
# tiny policy then learned topic coherence far more slowly in the same number of steps.)
VOCAB_SIZE = 1000

def world_texts(rng: random.Random, n: int = 3000) -> list[str]:
    """Text of the synthetic world, to train the BPE on: prompts, answers and the judges' template words."""
    out = []
    for i in range(n):
        prompt, names = topics.make_prompt(rng)
        answer = topics.make_answer(rng, names)
        out.append(f"Human: {prompt}\nAssistant: {answer}" if i % 10 == 0 else f"{prompt}\n{answer}")
    return out


def train_tokenizer(texts: Iterable[str], chat_template: str = TULU_JINJA, add_bos: bool = True):
    """Byte-level BPE trained on ``texts``, wrapped as a transformers fast tokenizer (right padding)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    specials = [PAD, BOS, EOS, *CHAT_TOKENS]
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator(texts, trainer)
    if add_bos:  # BOS comes from tokenisation (add_special_tokens=True), as with Llama tokenizers
        bos_id = core.token_to_id(BOS)
        core.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A $B",
                                                            special_tokens=[(BOS, bos_id)])
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                  additional_special_tokens=list(CHAT_TOKENS), padding_side="right",
                                  model_max_length=512, chat_template=chat_template)
    # llm-blender's PairRM collator adds its markers; they are in the shared vocabulary so every judge agrees
    # on ids. Plain added tokens, as llm-blender adds them (kept by decode).
    tok.add_tokens(list(RANKER_MARKERS))
    return tok


def chat_examples(rng: random.Random, n: int, exclude: set[str]) -> list[tuple[str, str]]:
    """(prompt, answer) pairs of the world; prompts in ``exclude`` (the held-out split) are never used."""
    out = []
    while len(out) < n:
        prompt, names = topics.make_prompt(rng)
        if prompt not in exclude:
            out.append((prompt, topics.make_answer(rng, names)))
    return out


def encode_chat(tok, pairs: list[tuple[str, str]], max_len: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids (right-padded) and labels (-100 outside the answer and its EOS) for chat pairs."""
    unique = sorted({p for p, _ in pairs})  # the world's prompts repeat (~3k distinct in 20k): tokenise each once
    texts = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
             for p in unique]
    by_prompt = dict(zip(unique, tok(texts, add_special_tokens=False)["input_ids"]))
    p_ids = [by_prompt[p] for p, _ in pairs]
    a_ids = tok([a + EOS for _, a in pairs], add_special_tokens=False)["input_ids"]
    ids = torch.full((len(pairs), max_len), tok.pad_token_id)
    labels = torch.full((len(pairs), max_len), -100)
    for i, (p, a) in enumerate(zip(p_ids, a_ids)):
        seq = (p + a)[:max_len]
        ids[i, : len(seq)] = torch.tensor(seq)
        labels[i, len(p): len(seq)] = torch.tensor(seq[len(p):])
    keep = int((ids != tok.pad_token_id).sum(1).max())
    return ids[:, :keep], labels[:, :keep]


def uniform_sampler(n_rows: int, batch: int, gen: torch.Generator) -> Callable[[int], torch.Tensor]:
    """Batches of row indices drawn uniformly (with replacement)."""
    return lambda step: torch.randint(0, n_rows, (batch,), generator=gen)


def train_loop(model, loss_of: Callable[[torch.Tensor], torch.Tensor], sample: Callable[[int], torch.Tensor],
               steps: int, lr: float, name: str) -> float:
    """A plain AdamW loop over batches of row indices from ``sample(step)``; logs progress; returns the
    final smoothed loss."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    warmup = min(50, steps // 10)
    model.train()
    start, running = time.monotonic(), None
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr * lr_factor(step, steps, warmup, "cosine")  # the trainer's schedule
        loss = loss_of(sample(step))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        running = loss.item() if running is None else 0.95 * running + 0.05 * loss.item()
        if (step + 1) % max(1, steps // 5) == 0:
            log.info("  %s: step %d/%d loss %.3f (%.0f s)", name, step + 1, steps, running,
                     time.monotonic() - start)
    model.eval()
    return float(running)


def build_policy(out: Path, tok, seed: int, exclude: set[str], steps: int = 1000, batch: int = 64,
                 lr: float = 5e-3) -> dict:
    """Pre-train the tiny Llama policy and save it (model, tokenizer, generation config) into ``out``."""
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    rng = random.Random(seed + 1)
    ids, labels = encode_chat(tok, chat_examples(rng, 20000, exclude))
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=32, max_position_embeddings=512,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         # untied: vLLM's in-place reload_weights leaves a tied LM head on the old weights,
                         # and the round loop swaps each round's weights into the running engines
                         pad_token_id=tok.pad_token_id, tie_word_embeddings=False, dtype="float32")
    model = LlamaForCausalLM(config)
    mask = ids != tok.pad_token_id

    def loss_of(idx: torch.Tensor) -> torch.Tensor:
        width = int(mask[idx].sum(1).max())  # trim the batch's common padding
        hidden = model.model(input_ids=ids[idx, :width], attention_mask=mask[idx, :width].long()).last_hidden_state
        # The 1000-way output layer is most of this model's compute: apply it only where there is a label.
        target = labels[idx, 1:width]
        keep = target != -100
        return torch.nn.functional.cross_entropy(model.lm_head(hidden[:, :-1][keep]), target[keep])

    sample = uniform_sampler(len(ids), batch, torch.Generator().manual_seed(seed))
    loss = train_loop(model, loss_of, sample, steps, lr, "policy")
    model.generation_config = GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                               pad_token_id=tok.pad_token_id, do_sample=True, temperature=1.0,
                                               max_new_tokens=96)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return {"policy_loss": round(loss, 4), "policy_params": sum(p.numel() for p in model.parameters())}
