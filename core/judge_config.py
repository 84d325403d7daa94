"""The judges' recipe sections: the training scorer (``scorer``) and the eval judge (``eval.judge``, ``eval``).

Which fields each kind requires, and which kinds exist, come from the judge registry (``core/judges.py``).
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, model_validator

from prefloop.core.judges import JUDGE_KINDS, SCORER_KINDS, judge_kind, missing_fields
from prefloop.core.leaderboard import LeaderboardConfig
from prefloop.core.strict import ChatTemplate, StrictModel


class RewardHeadConfig(StrictModel):
    """A reward model that is a base model plus a custom scalar head (UltraRM's ``regression_head``)."""

    name: str = Field(description="Attribute name of the head in the checkpoint: its weight key is NAME.weight.")
    bias: bool = Field(False, description="Whether the head has a bias (NAME.bias).")


class JudgeTarget(StrictModel):
    """What a judge of any kind grades with; each kind requires its own of these (``core/judges.py``)."""

    model: str | None = Field(None, description="Ranker dir (pairrm) or HF dir (reward_model); default null.")
    function: str | None = Field(None, description="'module:function' taking (prompt, completion) -> float "
                                 "(function); default null.")
    instructions: str | None = Field(None, description="ifeval only: JSONL table of each prompt's IFEval instructions "
                                     "({prompt_id, instruction_id_list, kwargs}; prefloop data prepare ifeval-synth).")
    instruction_ids: list[str] | None = Field(None, description="ifeval only: the instruction ids graded; null = "
                                              "every id whose checker runs here. One that cannot run is refused.")
    chat_template: ChatTemplate = Field("tokenizer", description="Reward model's rendering of (prompt, answer).")


class ScorerConfig(JudgeTarget):
    """Who judges the candidates: PairRM, a scalar reward model, or a user function."""

    kind: Literal[SCORER_KINDS] = "pairrm"  # type: ignore[valid-type]
    num_scorers: int = Field(1, ge=1)
    batch_size: int = Field(16, ge=1, description="Prompts per scorer call.")
    comparisons: Literal["full", "pivots"] = Field(
        "full", description="PairRM only. full: every ordered pair, N(N-1) passes per prompt (Blender.rank); "
        "pivots: each candidate against two pivots, 2(N-1) one-order passes per prompt with the position bias "
        "cancelled (core/pivots.py); both give every candidate a score.")
    reward_head: RewardHeadConfig | None = Field(
        None, description="reward_model only: a base model + scalar head checkpoint (e.g. {name: regression_head, "
        "bias: false}); null = recognised from config.json (architectures LlamaRewardModel: UltraRM's "
        "regression_head) or AutoModelForSequenceClassification.")

    @model_validator(mode="after")
    def _needs_target(self) -> "ScorerConfig":
        _require_fields(self, "scorer")
        if self.comparisons == "pivots" and not judge_kind(self.kind).pairwise:
            raise ValueError("scorer.comparisons: 'pivots' is for pairwise judges (scorer.kind: pairrm)")
        return self


class JudgeConfig(JudgeTarget):
    """The eval judge (``eval.judge``): who grades the held-out answers, independent of the training scorer.

    ``pairrm`` / ``reward_model`` / ``function`` run as the scorer stages do (their fields mean the same as in
    ``scorer``); ``llm_judge`` asks any OpenAI-compatible ``/v1/chat/completions`` endpoint, with AlpacaEval 2.0's
    pairwise protocol in both answer orders (``core/llm_judge.py``)."""

    kind: Literal[tuple(JUDGE_KINDS)] = Field(  # type: ignore[valid-type]
        description="pairrm (llm-blender ranker dir), reward_model (HF sequence classifier), function "
        "('module:function(prompt, completion) -> float'), llm_judge (an OpenAI-compatible endpoint), or ifeval "
        "(IFEval's instruction checkers, core/ifeval.py).")
    batch_size: int = Field(16, ge=1, description="Prompts per scorer call (pairrm, reward_model, function).")
    base_url: str | None = Field(None, description="llm_judge: the endpoint's base URL, up to and including "
                                 "'/v1' (e.g. http://host:8000/v1); default null.")
    model_name: str | None = Field(None, description="llm_judge: the 'model' field of each request; default null.")
    api_key_env: str | None = Field(None, description="llm_judge: name of the environment variable holding the "
                                    "API key (sent as a Bearer token); null = no key. Default null.")
    max_tokens: int = Field(4, ge=1, description="llm_judge: tokens the judge may answer with (the verdict is "
                            "one identifier); default 4.")
    top_logprobs: int = Field(5, ge=0, le=20, description="llm_judge: alternatives asked per answer token, to read "
                              "the preference from log-probs; 0 = read the text only. Default 5.")
    timeout_s: float = Field(60.0, gt=0, description="llm_judge: seconds per HTTP request; default 60.")
    retries: int = Field(2, ge=0, description="llm_judge: retries of a failed request (connection error, "
                         "HTTP 429 / 5xx), with backoff; default 2.")
    concurrency: int = Field(4, ge=1, description="llm_judge: requests in flight at once; default 4.")
    protocol: Literal["prefloop", "alpaca_eval"] = Field(
        "prefloop", description="llm_judge: prefloop = prefloop's own prompt (core/llm_judge.py); alpaca_eval = "
        "AlpacaEval 2.0's annotator (eval.judge.annotator), its prompt template, completion settings (max_tokens, "
        "temperature, top_logprobs) and log-prob parser read from the installed alpaca_eval package at run time "
        "(app/judging/alpaca_eval_judge.py). Default prefloop.")
    annotator: str = Field("weighted_alpaca_eval_gpt4_turbo", description="protocol alpaca_eval: the name of the "
                           "AlpacaEval annotator config (a folder of alpaca_eval/evaluators_configs) whose prompt "
                           "and log-prob verdict are used; it must use AlpacaEval's logprob_parser.")
    orders: Literal["both", "alpaca_eval"] = Field(
        "both", description="protocol alpaca_eval: both = every prompt asked in both answer orders, the two "
        "verdicts mapped back and averaged (position bias cancels per prompt); alpaca_eval = one order per prompt, "
        "switched as AlpacaEval does (its seeded RandomSwitchTwoColumnsProcessor on the instruction), as the "
        "leaderboard ran it. Default both.")

    @model_validator(mode="after")
    def _fields_fit_kind(self) -> "JudgeConfig":
        _require_fields(self, "eval.judge")
        if self.kind != "llm_judge" and (self.base_url or self.model_name or self.api_key_env):
            raise ValueError("eval.judge.base_url / model_name / api_key_env are only used by kind 'llm_judge'")
        # values other than the defaults count: a saved recipe (every field written out) must load again
        fields = type(self).model_fields
        given = {f for f in ("protocol", "annotator", "orders", "max_tokens", "top_logprobs")
                 if getattr(self, f) != fields[f].default}
        if self.kind != "llm_judge" and given & {"protocol", "annotator", "orders"}:
            raise ValueError("eval.judge.protocol / annotator / orders are only used by kind 'llm_judge'")
        if self.protocol == "alpaca_eval" and given & {"max_tokens", "top_logprobs"}:
            raise ValueError("eval.judge.max_tokens / top_logprobs: with protocol 'alpaca_eval' they are the "
                             "AlpacaEval annotator's (eval.judge.annotator); remove them")
        if self.protocol != "alpaca_eval" and given & {"annotator", "orders"}:
            raise ValueError("eval.judge.annotator / orders are only used with protocol 'alpaca_eval'")
        return self

    def as_scorer(self) -> "ScorerConfig":
        """The same judge as a ``scorer`` section, to run through the scorer stages (not for llm_judge)."""
        if judge_kind(self.kind).scorer is None:
            raise ValueError(f"a {self.kind} judge is not a scorer stage")
        return ScorerConfig(kind=self.kind, model=self.model, function=self.function,
                            chat_template=self.chat_template, batch_size=self.batch_size,
                            instructions=self.instructions, instruction_ids=self.instruction_ids)


class EvalSetConfig(StrictModel):
    """One more named held-out set (``eval.sets.NAME``), judged each round beside the main one (``data.eval``
    with the rest of ``eval``), with its own judge, baseline and figures (the eval manifest's ``eval_sets``)."""

    data: str = Field(description="Its held-out prompts (JSONL, Parquet or a local HF dataset dir, as data.eval).")
    judge: JudgeConfig | None = Field(None, description="Its eval judge; null = the training scorer (not "
                                      "independent, and the manifest says so). Default null.")
    baseline: Literal["base", "reference"] = Field("base", description="As eval.baseline, for this set.")
    reference_field: str = Field("reference_output", description="As eval.reference_field, for this set.")
    max_prompt_tokens: int | None = Field(None, ge=1, description="As eval.max_prompt_tokens, for this set.")
    limit: int | None = Field(None, ge=1, description="Judge only its first N accepted prompts (e.g. the ReMax "
                              "card's 500 Chat1M prompts); null = all. Default null.")


class EvalConfig(StrictModel):
    """How each round's held-out answers are judged against the base model's (``round_R/eval``)."""

    judge: JudgeConfig | None = Field(None, description="The eval judge; null = the training scorer, and the "
                                      "report warns that the judge is not independent. Default null.")
    best_of: int | None = Field(None, ge=2, description="Also evaluate best-of-N: N samples per held-out prompt, "
                                "reranked by PairRM (the eval judge if pairrm, else the training scorer, which "
                                "must then be pairrm), the top one judged like the greedy answer. Default null.")
    leaderboard: LeaderboardConfig | None = Field(None, description="lm_eval tasks (the Open LLM Leaderboard's) run "
                                                  "on each round's model (app/rounds/leaderboard.py). Default null.")
    baseline: Literal["base", "reference"] = Field(
        "base", description="What each round's answers are judged against: base = the base model's answers to the "
        "held-out prompts (generated once per run); reference = the held-out file's reference outputs "
        "(eval.reference_field; AlpacaEval's `output` column, which `prefloop data prepare alpaca-eval` keeps as "
        "reference_output), as AlpacaEval 2.0 judges. Default base.")
    reference_field: str = Field("reference_output", description="baseline reference: the held-out file's column "
                                 "of reference outputs; every row must have a non-empty one (checked at recipe "
                                 "check, naming the file and row).")
    max_tokens: int | None = Field(None, ge=1, description="Tokens each evaluated answer may take (greedy answers "
                                   "and best-of-N); null = the response length training uses (rollout.max_tokens, "
                                   "ReMax's train.max_response_len). Default null.")
    max_prompt_tokens: int | None = Field(None, ge=1, description="Held-out prompts longer than this (templated) "
                                          "are rejected (counted in the manifest's eval_prompts); null = "
                                          "data.max_prompt_tokens. Default null.")
    sets: dict[str, EvalSetConfig] = Field(default_factory=dict, description="More named held-out sets, each "
                                           "judged every round beside data.eval (e.g. AlpacaEval and Chat1M for "
                                           "ReMax); names are letters, digits, '-' and '_'. Default none.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="top_p of the evaluated answers (with "
                         "loop.eval_temperature > 0; AlpacaEval's leaderboard configs sample some cards' models "
                         "at 0.9 / 0.95). Default 1.0.")


    @model_validator(mode="after")
    def _set_names(self) -> "EvalConfig":
        for name in self.sets:
            if not re.fullmatch(r"[A-Za-z0-9_-]+", name) or name == "main":
                raise ValueError(f"eval.sets.{name}: a set's name is letters, digits, '-' and '_' (not 'main', "
                                 "the name of data.eval's set)")
        return self


def _require_fields(cfg: "ScorerConfig | JudgeConfig", key: str) -> None:
    missing = missing_fields(cfg)
    if missing:
        raise ValueError(f"{key}.{missing[0]} is required when {key}.kind is '{cfg.kind}'")
    if cfg.function is not None and ":" not in cfg.function:
        raise ValueError(f"{key}.function must be 'module:function'")
    judge_kind(cfg.kind).validate(cfg, key)
