"""Scorers: classes Ray Data turns into an actor pool after the generators, one score per candidate.

- ``PairRMScorer``: llm-blender's PairRM ranker over all N candidates of a prompt (``Blender.rank`` with
  ``return_scores=True``: each candidate's aggregate of the full N x (N-1) comparison matrix), or with
  ``comparisons="pivots"`` each candidate against two pivots in 2(N-1) passes (``core/pivots.py``).
- ``RewardModelScorer``: a scalar reward model (``AutoModelForSequenceClassification``, or a base model plus a
  custom head such as UltraRM's, see ``actors/reward_model.py``), fed each (prompt, answer) in the reward model's
  own chat template, which may differ from the policy's.

PairRM and reward models run on the GPU their actor was given (``actors/devices.py``): fp16/bf16 there, fp32 on
the CPU.
- ``FunctionScorer``: a user function ``module:function`` with signature ``(prompt: str, completion: str) -> float``.

Each scorer reads the columns ``prompt``, ``messages`` and ``candidates`` and adds ``scores``.
"""

from __future__ import annotations

import json
import logging
import math
import os
from typing import Any

import numpy as np

from prefloop.actors.common import object_column, timed
from prefloop.core.judges import load_function
from prefloop.core.model_dirs import check_model_dir

log = logging.getLogger(__name__)


def _as_lists(column: Any) -> list[list[str]]:
    return [list(c) for c in column]


def _messages(batch: dict[str, Any]) -> list[list[dict[str, str]]]:
    return [json.loads(m) if isinstance(m, str) else list(m) for m in batch["messages"]]


def _with_scores(batch: dict[str, Any], scores: list[list[float]]) -> dict[str, Any]:
    for i, row in enumerate(scores):
        bad = [s for s in row if not math.isfinite(s)]
        if bad:
            raise ValueError(f"scorer returned a non-finite score {bad[0]!r} for prompt_id {batch['prompt_id'][i]}")
    out = dict(batch)
    out["scores"] = object_column([[float(s) for s in row] for row in scores])
    return out


class PairRMScorer:
    """PairRM through llm-blender. ``comparisons="full"``: every ordered pair of a prompt's candidates
    (``Blender.rank``); ``"pivots"``: each candidate against two pivots, 2(N-1) one-order passes per prompt
    (``core/pivots.py``), all in one ``Blender.compare`` call."""

    def __init__(self, ranker_dir: str, batch_size: int = 16, device: str | None = None,
                 comparisons: str = "full"):
        from prefloop.actors.blender_compat import load_pairrm, ranker_safe
        from prefloop.actors.devices import actor_device

        if comparisons not in ("full", "pivots"):
            raise ValueError(f"scorer.comparisons: {comparisons!r} is not 'full' or 'pivots'")
        self.safe = ranker_safe
        device = device or actor_device()[0]
        # llm-blender halves the ranker only for the device string "cuda" (PairRM was trained in fp16); inside an
        # actor its assigned GPU is cuda:0, so "cuda" names it
        self.blender = load_pairrm(ranker_dir, device="cuda" if device.startswith("cuda") else device)
        if device.startswith("cuda"):
            self.blender.ranker.half()
        self.batch_size, self.comparisons = batch_size, comparisons

    def score(self, prompts: list[str], candidates: list[list[str]]) -> list[list[float]]:
        prompts = [self.safe(p) for p in prompts]
        candidates = [[self.safe(c) for c in cands] for cands in candidates]
        if self.comparisons == "pivots":
            return self.pivots(prompts, candidates)
        scores = self.blender.rank(prompts, candidates, return_scores=True, batch_size=self.batch_size,
                                   disable_tqdm=True)
        return np.asarray(scores, dtype=np.float64).tolist()

    def pivots(self, prompts: list[str], candidates: list[list[str]]) -> list[list[float]]:
        from prefloop.core.pivots import pivot_scores

        def judge(passes: list[tuple[int, int, int]]) -> list[float]:
            # sorted by length, so each mini-batch pads little (the collator trims to the batch's longest);
            # one order per pass ("[A,B]"): core/pivots.py chooses the orientation so the position bias cancels
            def chars(k: int) -> int:
                p, i, j = passes[k]
                return len(prompts[p]) + len(candidates[p][i]) + len(candidates[p][j])

            order = sorted(range(len(passes)), key=chars)
            picked = [passes[k] for k in order]
            logits = self.blender.compare([prompts[p] for p, _, _ in picked],
                                          [candidates[p][i] for p, i, _ in picked],
                                          [candidates[p][j] for p, _, j in picked], batch_size=self.batch_size,
                                          return_logits=True, mode="[A,B]", disable_tqdm=True)
            out = [0.0] * len(passes)
            for k, logit in zip(order, np.asarray(logits, dtype=np.float64).reshape(-1).tolist()):
                out[k] = logit
            return out

        return pivot_scores([len(c) for c in candidates], judge)

    @timed("score_s")
    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        return _with_scores(batch, self.score(list(batch["prompt"]), _as_lists(batch["candidates"])))


class RewardModelScorer:
    """A scalar reward model: one forward pass per (prompt, candidate), in the model's own template.

    The reward is read at the last token, so an input longer than the model takes (``max_length``: the smaller
    of the tokenizer's ``model_max_length`` and the config's ``max_position_embeddings``) is never cut at its
    end: the conversation is left-truncated (its first token, say BOS, kept), which drops the start of the
    prompt and scores the whole answer; each row says how many of its candidates were (``prompt_truncated``,
    summed in the rollout manifest). An answer that alone does not fit is an error naming the prompt."""

    def __init__(self, model_dir: str, chat_template: str = "tokenizer", batch_size: int = 16,
                 device: str | None = None, reward_head: dict[str, Any] | None = None):
        check_model_dir(model_dir, "reward model")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch
        from transformers import AutoTokenizer

        from prefloop.actors.devices import actor_device
        from prefloop.actors.reward_model import ensure_pad_token, load_reward_model, max_input_tokens

        self.torch = torch
        if device is None:
            device, dtype_name = actor_device()
        else:
            dtype_name = "float32" if device == "cpu" else "bfloat16"
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        ensure_pad_token(self.tokenizer)
        self.max_length = max_input_tokens(model_dir, self.tokenizer)
        self.model = load_reward_model(model_dir, device, getattr(torch, dtype_name), reward_head,
                                       pad_token_id=self.tokenizer.pad_token_id)
        self.template, self.batch_size, self.device = chat_template, batch_size, device

    def fit(self, text: str, answer: str, where: str) -> tuple[list[int], bool]:
        """The token ids to score (left-truncated when too long) and whether they were truncated."""
        ids = self.tokenizer(text)["input_ids"]
        if len(ids) <= self.max_length:
            return ids, False
        keep_first = ids[0] == self.tokenizer.bos_token_id
        tail = ids[len(ids) - (self.max_length - int(keep_first)):]
        answer_tokens = len(self.tokenizer(answer, add_special_tokens=False)["input_ids"])
        if answer_tokens >= len(tail) - 1:
            raise ValueError(f"reward model scoring {where}: the answer alone is {answer_tokens} tokens; the reward "
                             f"model takes {self.max_length} in all (lower the answer tokens or use another "
                             f"reward model)")
        return (ids[:1] if keep_first else []) + tail, True

    def score_texts(self, texts: list[str], answers: list[str] | None = None,
                    where: list[str] | None = None) -> list[float]:
        """Rewards of rendered conversations (``answers``: each text's answer, for the length check)."""
        return self.score_fitted(texts, answers, where)[0]

    def score_fitted(self, texts: list[str], answers: list[str] | None = None,
                     where: list[str] | None = None) -> tuple[list[float], list[bool]]:
        """``score_texts`` and, per text, whether it was left-truncated to fit."""
        fitted = [self.fit(t, (answers or [""] * len(texts))[i], (where or ["a text"] * len(texts))[i])
                  for i, t in enumerate(texts)]
        out: list[float] = []
        for start in range(0, len(fitted), self.batch_size):
            chunk = [ids for ids, _ in fitted[start:start + self.batch_size]]
            enc = self.tokenizer.pad({"input_ids": chunk}, return_tensors="pt").to(self.device)
            with self.torch.no_grad():
                out.extend(self.model(enc["input_ids"], enc["attention_mask"]).float().tolist())
        return out, [cut for _, cut in fitted]

    def score(self, messages: list[list[dict[str, str]]], candidates: list[list[str]],
              prompt_ids: list[str] | None = None) -> list[list[float]]:
        """Per prompt its candidates' rewards."""
        return self.score_counted(messages, candidates, prompt_ids)[0]

    def score_counted(self, messages: list[list[dict[str, str]]], candidates: list[list[str]],
                      prompt_ids: list[str] | None = None) -> tuple[list[list[float]], list[int]]:
        """``score`` and, per prompt, how many of its candidates were scored from a left-truncated text."""
        from prefloop.core.templates import render_conversation

        texts, answers, where = [], [], []
        for i, (m, cands) in enumerate(zip(messages, candidates)):
            for c in cands:
                texts.append(render_conversation(m, c, self.template, self.tokenizer))
                answers.append(c)
                where.append(f"prompt_id {prompt_ids[i]}" if prompt_ids else f"prompt {i}")
        flat, cut = self.score_fitted(texts, answers, where)
        scores, truncated, pos = [], [], 0
        for cands in candidates:
            scores.append(flat[pos:pos + len(cands)])
            truncated.append(sum(cut[pos:pos + len(cands)]))
            pos += len(cands)
        return scores, truncated

    @timed("score_s")
    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        scores, truncated = self.score_counted(_messages(batch), _as_lists(batch["candidates"]),
                                               [str(p) for p in batch["prompt_id"]])
        out = _with_scores(batch, scores)
        out["prompt_truncated"] = np.asarray(truncated, dtype=np.int64)
        return out


class FunctionScorer:
    """A user reward function called per candidate."""

    def __init__(self, function: str):
        self.spec, self.fn = function, load_function(function)

    @timed("score_s")
    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        scores = [[float(self.fn(p, c)) for c in cands]
                  for p, cands in zip(batch["prompt"], _as_lists(batch["candidates"]))]
        return _with_scores(batch, scores)
