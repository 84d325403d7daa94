"""The tiny judges of the offline demo: a PairRM in llm-blender's own format, and a scalar reward model.

Both are trained briefly on synthetic pairs of the demo world (``prefloop.tinyworld.topics``) labelled by
NOISY draws of the gold preference (``gold.noisy_order``: Bradley-Terry on the gold scores, temperature
``gold.LABEL_TEMPERATURE``), so they are proxies of it, as a real reward model is of its raters; they are
measured against the exact gold order on fresh pairs for held-out prompts. Answers in the pairs carry small slips (dropped, repeated words, cut-off ends), like a tiny
policy's samples, so the judges are not thrown by them. Training follows a short curriculum (clear pairs
first, see ``training_pairs``) and each judge starts from the pre-trained policy, as real judges start
from a pre-trained language model.

- PairRM: ``pairrm/config.json`` (llm-blender's ``RankerConfig``: pairranker / deberta), ``model.safetensors``
  (the whole ``CrossCompareReranker``) and ``pairrm/backbone/`` (a 2-layer DebertaV2 with its tokenizer).
  It is built and trained through llm-blender's own ``load_ranker`` and ``CrossCompareReranker._forward``
  with its "instructgpt" pairwise loss, so what ``Blender().loadranker(dir)`` loads is what was trained.
- Reward model: the policy's 2-layer Llama with a scalar head (``LlamaForSequenceClassification``, one
  label), fed UltraRM's template ``Human: {prompt}\nAssistant: {answer}``, trained with the Bradley-Terry loss.
"""
from __future__ import annotations

import copy
import json
import logging
import random
from pathlib import Path

import torch

from prefloop.core.templates import ULTRARM_JINJA
from prefloop.tinyworld import gold, topics
from prefloop.tinyworld.policy import train_loop

log = logging.getLogger(__name__)

BACKBONE = "backbone"  # the DebertaV2 dir inside the pairrm dir
SOURCE_MAXLEN, CANDIDATE_MAXLEN = 48, 112  # tokens; the policy's answers stay well under 112


def _answer_pair(rng: random.Random, names: list[str], kind: str, marked: float) -> tuple[str, str]:
    """Two answers to a prompt about ``names``.

    - "easy": same length, one fully on topic, one fully off: the clearest signal, to start learning on;
    - "contrast": same length, different shares of on-topic sentences;
    - "random": two independent answers, as a policy's samples are (topic share and length both vary);
    - "garbled": an answer and itself with some words turned into non-words, as a policy pushed too far
      writes them (a judge that never saw gibberish can prefer it, and DPO then finds that out);
    - "short": an answer and its first one or two words (or an opener alone): brevity has a floor;
    - "repeat": an on-topic answer and itself with one sentence said twice (the gold penalises repeats; a
      judge that never saw them can reward the longer, still on-topic answer, and DPO then finds that out).
    """
    if kind == "random":
        return (topics.make_answer(rng, names, noise=0.3, marked=marked),
                topics.make_answer(rng, names, noise=0.3, marked=marked))
    if kind == "garbled":
        answer = topics.make_answer(rng, names)
        return answer, topics.garble(rng, answer, rng.uniform(0.15, 0.7))
    if kind == "repeat":
        answer = topics.make_answer(rng, names, on_topic=rng.choice((1.0, 0.75)), n_sentences=rng.randint(1, 3))
        return answer, topics.repeat_answer(rng, answer)
    if kind == "short":
        answer = topics.make_answer(rng, names, n_sentences=rng.randint(1, 2))
        return answer, rng.choice([rng.choice(topics.OPENERS), " ".join(answer.split()[: rng.randint(1, 2)])])
    k = rng.randint(1, 4)
    hi, lo = (1.0, 0.0) if kind == "easy" else rng.choice(((1.0, 0.5), (0.75, 0.25), (0.5, 0.0), (1.0, 0.25)))
    return (topics.make_answer(rng, names, on_topic=hi, n_sentences=k, noise=0.3, marked=marked),
            topics.make_answer(rng, names, on_topic=lo, n_sentences=k, noise=0.3, marked=marked))


def make_pairs(rng: random.Random, n: int, prompts: list[str] | None = None, kinds: tuple[str, ...] = ("random",),
               marked: float = 1.0, min_gap: float = 0.05, noise: float | None = None
               ) -> list[tuple[str, str, str, float]]:
    """``n`` pairs (prompt, preferred, other, gold gap), ordered by ``gold.gold_score``, or with ``noise`` (a
    temperature) by a noisy draw of it (``gold.noisy_order``; the gap is then negative where the label went
    against gold).

    Each pair's kind is drawn from ``kinds`` (see ``_answer_pair``); ``marked`` is the share of drifting
    sentences that announce themselves. Pairs whose gold scores differ by less than ``min_gap`` are skipped.
    Prompts come from ``prompts`` when given (the held-out split, for measuring), else are made fresh.
    """
    out = []
    while len(out) < n:
        if prompts:
            prompt = rng.choice(prompts)
            names = sorted(topics.prompt_topics(prompt))
        else:
            prompt, names = topics.make_prompt(rng)
        a, b = _answer_pair(rng, names, rng.choice(kinds), marked)
        if noise is not None:
            first, second, gap = gold.noisy_order(rng, prompt, a, b, noise)
            if abs(gap) >= min_gap:
                out.append((prompt, first, second, gap))
            continue
        sa, sb = gold.gold_score(prompt, a), gold.gold_score(prompt, b)
        if abs(sa - sb) >= min_gap:
            out.append((prompt, a, b, sa - sb) if sa > sb else (prompt, b, a, sb - sa))
    return out


def training_pairs(seed: int, n_easy: int, n_main: int) -> list[tuple[str, str, str, float]]:
    """The judges' curriculum, with noisy gold labels: ``n_easy`` easy pairs, then ``n_main`` pairs (3/10
    contrast, 2/10 random, 2/10 garbled, 1/10 short, 2/10 repeat).

    A tiny judge trained on random pairs alone sits at chance for hundreds of steps; easy pairs first get
    it past that plateau in a few dozen steps.
    """
    rng = random.Random(seed)
    return (make_pairs(rng, n_easy, kinds=("easy",), noise=gold.LABEL_TEMPERATURE)
            + make_pairs(rng, n_main, kinds=("contrast", "contrast", "contrast", "random", "random", "garbled",
                                             "garbled", "short", "repeat", "repeat"), noise=gold.LABEL_TEMPERATURE))


def curriculum_sampler(n_easy: int, n_rows: int, batch: int, easy_steps: int, gen: torch.Generator):
    """Row batches from the easy rows ``[0, n_easy)`` for ``easy_steps`` steps, then from the rest."""
    def sample(step: int) -> torch.Tensor:
        lo, hi = (0, n_easy) if step < easy_steps else (n_easy, n_rows)
        return torch.randint(lo, hi, (batch,), generator=gen)
    return sample


def accuracy(prefers_first: list[bool], pairs: list[tuple[str, str, str, float]]) -> float:
    """Share of pairs where the judge prefers the first answer (the gold-better one, in measuring pairs)."""
    return round(sum(prefers_first) / len(pairs), 3)


def held_out_pairs(seed: int, heldout: list[str]) -> dict[str, list[tuple[str, str, str, float]]]:
    """Fresh pairs of independent answers to held-out prompts, to measure a judge on. "marked": drift is
    announced, as in the policy's own samples; "unmarked": it is not, as a policy that learned to hide its
    drift would write it (the judge must then read the topic words)."""
    rng = random.Random(seed)
    return {"marked": make_pairs(rng, 300, heldout, marked=1.0), "unmarked": make_pairs(rng, 300, heldout, marked=0.0),
            "repeat": make_pairs(rng, 200, heldout, kinds=("repeat",))}


# ---- PairRM ----

def _ranker_config(backbone: str) -> dict:
    return {"ranker_type": "pairranker", "model_type": "deberta", "model_name": backbone,
            "source_maxlength": SOURCE_MAXLEN, "candidate_maxlength": CANDIDATE_MAXLEN, "n_tasks": 1,
            "loss_type": "instructgpt", "drop_out": 0.05, "fp16": False, "device": "cpu"}


def backbone_tokenizer(tok):
    """The shared tokenizer, framed like DeBERTa's: ``<s> text </s>`` (CLS ... SEP).

    llm-blender's PairRM collator relies on the tokenizer appending SEP to each of the source and the
    candidates (it finds the three parts by their SEP), as DeBERTa-v3's tokenizer does.
    """
    from tokenizers import processors

    framed = copy.deepcopy(tok)
    ids = [(framed.bos_token, framed.bos_token_id), (framed.eos_token, framed.eos_token_id)]
    framed.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> $B </s>", special_tokens=ids)
    framed.cls_token, framed.sep_token, framed.chat_template = framed.bos_token, framed.eos_token, None
    return framed


def save_backbone(out: Path, tok, embeddings: torch.Tensor) -> None:
    """A 2-layer DebertaV2 (v3-style relative attention) with a DeBERTa-framed tokenizer, saved to ``out``.

    Its token embeddings start from the pre-trained policy's (same tokenizer, same width 64), the way a
    real PairRM starts from a pre-trained DeBERTa rather than from noise; the rest starts fresh.
    """
    from transformers import DebertaV2Config, DebertaV2Model

    config = DebertaV2Config(vocab_size=len(tok), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                             intermediate_size=128, max_position_embeddings=512, relative_attention=True,
                             position_buckets=64, pos_att_type=["p2c", "c2p"], position_biased_input=False,
                             hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                             pad_token_id=tok.pad_token_id)
    model = DebertaV2Model(config)
    with torch.no_grad():
        model.embeddings.word_embeddings.weight.copy_(embeddings)
    model.save_pretrained(out)
    backbone_tokenizer(tok).save_pretrained(out)


def build_pairrm(out: Path, tok, seed: int, heldout: list[str], policy_dir: Path, steps: int = 600,
                 batch: int = 32) -> dict:
    """Train a tiny PairRM through llm-blender's own classes and save it in llm-blender's ranker format.

    600 steps: with noisy labels and the gold's finer distinctions (coverage, repeats), 300 steps left the
    2-layer ranker on its chance plateau (held-out accuracy 0.50); 600 reach 0.80 (about 35 s more)."""
    import safetensors.torch
    from transformers import AutoModelForCausalLM

    from prefloop.actors.blender_compat import import_llm_blender, load_pairrm

    import_llm_blender()
    from llm_blender.blender.blender_utils import load_ranker
    from llm_blender.pair_ranker.config import RankerConfig

    torch.manual_seed(seed)
    policy_embeddings = AutoModelForCausalLM.from_pretrained(policy_dir).get_input_embeddings().weight.detach()
    save_backbone(out / BACKBONE, tok, policy_embeddings)
    cfg = _ranker_config(str(out / BACKBONE))
    ranker, _, collator = load_ranker(RankerConfig.from_dict(cfg))  # what Blender.loadranker calls
    n_easy, n_main = 2000, 6000
    pairs = training_pairs(seed + 2, n_easy, n_main)
    # Candidate order is random so the judge learns "which is better", not "the first one is".
    flip = torch.rand(len(pairs), generator=torch.Generator().manual_seed(seed)) < 0.5
    rows = []
    for (prompt, good, bad, _), f in zip(pairs, flip.tolist()):
        cands, scores = ([bad, good], [[0.0], [1.0]]) if f else ([good, bad], [[1.0], [0.0]])
        rows.append({"source": prompt, "candidates": cands, "scores": scores})
    enc = collator(rows)  # tokenised once; the model trims each batch's padding columns itself
    src, src_m = enc["source_ids"], enc["source_attention_mask"]
    cand, cand_m, scores = enc["candidate_ids"], enc["candidate_attention_mask"], enc["scores"].float()

    def loss_of(idx: torch.Tensor) -> torch.Tensor:
        return ranker._forward(src[idx], src_m[idx], cand[idx, 0], cand_m[idx, 0], cand[idx, 1],
                               cand_m[idx, 1], scores[idx, 0], scores[idx, 1])["loss"]

    sample = curriculum_sampler(n_easy, len(rows), batch, steps // 4, torch.Generator().manual_seed(seed + 3))
    loss = train_loop(ranker, loss_of, sample, steps, 3e-3, "pairrm")
    safetensors.torch.save_model(ranker, str(out / "model.safetensors"))
    ranker.pretrained_model.save_pretrained(out / BACKBONE)  # the backbone dir holds the trained weights too
    cfg["model_name"] = BACKBONE  # relative while in the build dir; made absolute by finalize_pairrm
    (out / "config.json").write_text(json.dumps(cfg, indent=2), encoding="utf-8")

    blender = load_pairrm(out)  # measure through the same path users load it by
    info = {"pairrm_loss": round(loss, 4)}
    for name, test in held_out_pairs(seed + 4, heldout).items():
        s = blender.rank([p for p, *_ in test], [[g, b] for _, g, b, _ in test], return_scores=True,
                         batch_size=32)
        info[f"pairrm_acc_{name}"] = accuracy([bool(r[0] > r[1]) for r in s], test)
    log.info("  pairrm: held-out pair accuracy vs gold %.3f (drift marked), %.3f (unmarked), %.3f (repeats)",
             info["pairrm_acc_marked"], info["pairrm_acc_unmarked"], info["pairrm_acc_repeat"])
    return info


def finalize_pairrm(ranker_dir: Path) -> None:
    """Point config.json's model_name at the backbone's absolute path (after the build dir is renamed), so
    plain ``Blender().loadranker(ranker_dir)`` finds it from any working directory."""
    config = ranker_dir / "config.json"
    cfg = json.loads(config.read_text(encoding="utf-8"))
    cfg["model_name"] = str((ranker_dir / BACKBONE).resolve())
    tmp = config.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(cfg, indent=2), encoding="utf-8")
    tmp.replace(config)


# ---- scalar reward model ----

def reward_texts(tok, prompt: str, answers: list[str]) -> list[str]:
    """(prompt, answer) in the reward model's own chat template."""
    head = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                   add_generation_prompt=True)
    return [head + a for a in answers]


def reward_scores(model, tok, texts: list[str], batch: int = 64) -> torch.Tensor:
    """One scalar per text (no gradient)."""
    out = []
    with torch.no_grad():
        for i in range(0, len(texts), batch):
            enc = tok(texts[i:i + batch], return_tensors="pt", padding=True)
            out.append(model(**enc).logits[:, 0])
    return torch.cat(out)


def build_reward(out: Path, tok, seed: int, heldout: list[str], policy_dir: Path, steps: int = 300,
                 batch: int = 32) -> dict:
    """Train the tiny scalar reward model (Bradley-Terry on synthetic pairs) and save it into ``out``.

    As in InstructGPT, the reward model starts from the pre-trained policy, with a fresh scalar head.
    """
    from transformers import LlamaForSequenceClassification

    torch.manual_seed(seed)
    tok = copy.deepcopy(tok)  # the shared tokenizer keeps its own template
    tok.chat_template = ULTRARM_JINJA  # UltraRM's format (the ReMax card scored with it)
    model = LlamaForSequenceClassification.from_pretrained(policy_dir, num_labels=1)
    n_easy, n_main = 2000, 6000
    pairs = training_pairs(seed + 5, n_easy, n_main)
    texts = [t for p, g, b, _ in pairs for t in reward_texts(tok, p, [g, b])]  # chosen, rejected, ...
    enc = tok(texts, return_tensors="pt", padding=True)
    ids, mask = enc["input_ids"].view(len(pairs), 2, -1), enc["attention_mask"].view(len(pairs), 2, -1)

    def loss_of(idx: torch.Tensor) -> torch.Tensor:
        width = int(mask[idx].sum(-1).max())
        r = model(input_ids=ids[idx, :, :width].flatten(0, 1),
                  attention_mask=mask[idx, :, :width].flatten(0, 1)).logits.view(-1, 2)
        return -torch.nn.functional.logsigmoid(r[:, 0] - r[:, 1]).mean()  # Bradley-Terry

    sample = curriculum_sampler(n_easy, len(pairs), batch, steps // 4, torch.Generator().manual_seed(seed + 6))
    loss = train_loop(model, loss_of, sample, steps, 3e-3, "reward")
    model.save_pretrained(out)
    tok.save_pretrained(out)

    info = {"reward_loss": round(loss, 4)}
    for name, test in held_out_pairs(seed + 7, heldout).items():
        r = reward_scores(model, tok, [t for p, g, b, _ in test for t in reward_texts(tok, p, [g, b])])
        info[f"reward_acc_{name}"] = accuracy((r.view(-1, 2)[:, 0] > r.view(-1, 2)[:, 1]).tolist(), test)
    log.info("  reward: held-out pair accuracy vs gold %.3f (drift marked), %.3f (unmarked), %.3f (repeats)",
             info["reward_acc_marked"], info["reward_acc_unmarked"], info["reward_acc_repeat"])
    return info
