"""AlpacaEval 2.0's own annotator as the eval judge (``eval.judge.kind: llm_judge``, ``protocol: alpaca_eval``).

Everything that defines the AlpacaEval verdict is read from the installed ``alpaca_eval`` package at run time,
never copied here: the annotator's config (``evaluators_configs/<annotator>/configs.yaml``; by default
``weighted_alpaca_eval_gpt4_turbo``), its prompt template, its completion settings (``max_tokens`` 1,
``temperature``, ``logprobs``, ``top_logprobs`` 5) and its parser. A prompt is made by AlpacaEval's
``utils.make_prompts`` and turned into chat messages by its ``utils.prompt_to_chatml``, as its
``openai_completions`` does; the reply (``choice.model_dump()`` of the ``openai`` client, as AlpacaEval passes it)
goes through its ``logprob_parser``: ``2 - P(m) / (P(m) + P(M))`` over the first token's top log-probs, where
``m`` names ``output_1`` and ``M`` names ``output_2``. Only the endpoint and model come from the recipe
(``base_url``, ``model_name``, ``api_key_env``): gpt-4-turbo with a key, or any OpenAI-compatible server.

AlpacaEval's convention: ``output_1`` is the baseline, ``output_2`` the model, preference in [1, 2] with 2 = the
model's answer is better. ``orders: alpaca_eval`` asks one order per prompt, switched by AlpacaEval's own
``RandomSwitchTwoColumnsProcessor`` (seeded on the instruction, seed 123, as its annotator builds it) and mapped
back with ``3 - p``; ``orders: both`` asks both orders and averages the two mapped-back verdicts. A reply with
neither identifier among its top log-probs (AlpacaEval's NaN) stops the evaluation with the reply quoted: a
silently dropped prompt would change the win rate's denominator.
"""

from __future__ import annotations

import logging
import math
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from prefloop.core.judge_config import JudgeConfig
from prefloop.core.judges import JudgeRequestError, endpoint_key

log = logging.getLogger(__name__)
SEED = 123  # AlpacaEval's SingleAnnotator default seed, which its processors receive
SWITCH_COLUMN = "is_switched_outputs"
REQUEST_KEYS = ("max_tokens", "temperature", "logprobs", "top_logprobs", "top_p", "seed")


class VerdictError(ValueError):
    """A judge reply from which AlpacaEval's parser reads no preference."""


@lru_cache(maxsize=None)
def annotator_config(name: str) -> tuple[dict[str, Any], str]:
    """The annotator's config (its ``configs.yaml`` entry) and its prompt template, from the installed package."""
    import alpaca_eval

    root = Path(alpaca_eval.__file__).parent / "evaluators_configs"
    path = root / name / "configs.yaml"
    if not path.is_file():
        raise JudgeRequestError(f"eval.judge.annotator {name!r}: alpaca_eval has no {path}")
    config = yaml.safe_load(path.read_text(encoding="utf-8"))[name]
    if config.get("fn_completion_parser") != "logprob_parser":
        raise JudgeRequestError(f"eval.judge.annotator {name!r}: its parser is {config.get('fn_completion_parser')!r}"
                                "; prefloop runs AlpacaEval annotators whose verdict is logprob_parser's")
    template = (root / config["prompt_template"]).read_text(encoding="utf-8")
    return config, template


def alpaca_messages(template: str, instruction: str, output_1: str, output_2: str) -> list[dict[str, str]]:
    """The chat messages AlpacaEval sends for one example (its make_prompts, then its prompt_to_chatml)."""
    import pandas as pd
    from alpaca_eval import utils

    prompts, _ = utils.make_prompts(pd.DataFrame([{"instruction": instruction, "output_1": output_1,
                                                   "output_2": output_2}]), template)
    return utils.prompt_to_chatml(prompts[0])


def switched(instructions: list[str]) -> list[bool]:
    """Per instruction, whether AlpacaEval's annotator swaps output_1 and output_2 before asking."""
    import pandas as pd
    from alpaca_eval.processors import RandomSwitchTwoColumnsProcessor

    proc = RandomSwitchTwoColumnsProcessor(two_columns_to_switch=["output_1", "output_2"], seed=SEED,
                                           random_seed_columns=["instruction"], _switch_column=SWITCH_COLUMN)
    df = pd.DataFrame({"instruction": instructions, "output_1": [""] * len(instructions),
                       "output_2": [""] * len(instructions)})
    return [bool(x) for x in proc.preprocess(df)[SWITCH_COLUMN]]


class AlpacaEvalJudge:
    """AlpacaEval's annotator over an OpenAI-compatible endpoint, through the ``openai`` client."""

    def __init__(self, cfg: JudgeConfig):
        from openai import OpenAI

        self.cfg = cfg
        self.config, self.template = annotator_config(cfg.annotator)
        kwargs = dict(self.config.get("completions_kwargs") or {})
        ignored = sorted(set(kwargs) - set(REQUEST_KEYS) - {"model_name"})
        if ignored:
            log.warning("AlpacaEval annotator %s: completion settings not sent to the endpoint: %s", cfg.annotator,
                        ", ".join(ignored))
        self.request = {k: kwargs[k] for k in REQUEST_KEYS if k in kwargs}
        self.parser_kwargs = dict(self.config.get("completion_parser_kwargs") or {})
        # the client requires a key: without api_key_env a placeholder goes, never a variable the recipe did not name
        self.client = OpenAI(base_url=cfg.base_url, api_key=endpoint_key(cfg) or "none", timeout=cfg.timeout_s,
                             max_retries=cfg.retries)

    def ask(self, instruction: str, output_1: str, output_2: str) -> float:
        """AlpacaEval's preference for one order: in [1, 2], 2 = ``output_2`` is better."""
        from alpaca_eval.completion_parsers import logprob_parser
        import openai

        messages = alpaca_messages(self.template, instruction, output_1, output_2)
        try:
            reply = self.client.chat.completions.create(model=self.cfg.model_name, messages=messages, **self.request)
        except openai.OpenAIError as err:
            raise JudgeRequestError(f"{self.cfg.base_url}: {type(err).__name__}: {err}") from None
        if not reply.choices:
            raise VerdictError(f"{self.cfg.base_url}: the judge's reply has no choices")
        choice = reply.choices[0].model_dump()
        if not (choice.get("logprobs") or {}).get("content"):
            raise VerdictError(f"{self.cfg.base_url}: the judge's reply has no log-probs (AlpacaEval's "
                               f"{self.cfg.annotator} reads its verdict from them): {str(choice)[:300]}")
        pref = float(logprob_parser(choice, **self.parser_kwargs)[0])
        if math.isnan(pref):
            raise VerdictError(f"{self.cfg.base_url}: neither identifier among the judge's top log-probs "
                               f"(AlpacaEval would record NaN): {str(choice['logprobs'])[:300]}")
        return pref

    def judge_one(self, instruction: str, answer: str, baseline: str, switch: bool | None) -> dict[str, Any]:
        """One prompt's verdict: ``preference`` in [0, 1] for ``answer`` and AlpacaEval's in [1, 2]."""
        if switch is None:  # both orders: baseline as output_1, then the answer as output_1
            kept = self.ask(instruction, baseline, answer)
            swapped = 3.0 - self.ask(instruction, answer, baseline)
            pref = (kept + swapped) / 2
            extra = {"alpaca_eval_pref_baseline_first": kept, "alpaca_eval_pref_answer_first": swapped}
        else:
            pref = 3.0 - self.ask(instruction, answer, baseline) if switch else self.ask(instruction, baseline, answer)
            extra = {"alpaca_eval_switched": switch}
        return {"preference": pref - 1.0, "alpaca_eval_preference": pref, **extra}

    def judge(self, prompts: list[str], answers: list[str], baselines: list[str]) -> list[dict[str, Any]]:
        """One verdict per prompt, in order (``concurrency`` prompts at a time)."""
        switches = switched(prompts) if self.cfg.orders == "alpaca_eval" else [None] * len(prompts)
        with ThreadPoolExecutor(max_workers=self.cfg.concurrency) as pool:
            return list(pool.map(self.judge_one, prompts, answers, baselines, switches))
