"""Writers of small local copies of the cards' datasets, in each dataset's real schema and split names
(nothing is downloaded), with hostile rows: missing fields, wrong types, empty strings, conversations that end
with the assistant, non-English rows, multi-turn conversations where only the first turn is wanted, duplicates.

Two layouts, as the real datasets come: a directory saved by ``datasets`` (``DatasetDict.save_to_disk``, split
names kept) and the hub's data-file layout (``data/<split>-00000-of-00001.jsonl``), where a row may carry a
wrong type or a malformed line that Arrow's typed columns could not hold.
"""

from __future__ import annotations

import json
from pathlib import Path


def user_assistant(prompt, answer):
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]


def save_dict(path: Path, splits: dict[str, list[dict]]) -> Path:
    import datasets

    datasets.DatasetDict({k: datasets.Dataset.from_list(v) for k, v in splits.items()}).save_to_disk(str(path))
    return path


def write_hub_layout(path: Path, splits: dict[str, list]) -> Path:
    """``data/<split>-00000-of-00001.jsonl``; a str item is written as a raw (possibly malformed) line."""
    (path / "data").mkdir(parents=True, exist_ok=True)
    for split, rows in splits.items():
        lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
        (path / "data" / f"{split}-00000-of-00001.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def ultrafeedback_binarized(path: Path) -> Path:
    """HuggingFaceH4/ultrafeedback_binarized: 6 good prompts + hostile rows in train_prefs; other splits small."""
    def row(i, prompt, pid=None):
        return {"prompt": prompt, "prompt_id": pid or f"id{i}", "chosen": user_assistant(prompt, f"good {i}"),
                "rejected": user_assistant(prompt, f"bad {i}"), "messages": user_assistant(prompt, f"good {i}"),
                "score_chosen": 8.0, "score_rejected": 3.0}
    train = [row(i, f"Question number {i}?") for i in range(6)]
    train += [row(6, ""), row(7, "   "), row(8, None), row(9, "Question number 1?", "id-dup"),
              row(10, "Question number 2?  ")]  # empty, blank, missing, two duplicates (one up to whitespace)
    splits = {"train_prefs": train, "test_prefs": [row(20, "Held out?")], "train_sft": [row(0, "Question number 0?")],
              "test_sft": [row(21, "x?")], "train_gen": [row(22, "y?")], "test_gen": [row(23, "z?")]}
    return save_dict(path, splits)


def openbmb_ultrafeedback(path: Path) -> Path:
    """openbmb/UltraFeedback (split train): instruction + completions; a wrong type and a bad line."""
    completion = {"model": "m", "response": "r", "overall_score": 7.0, "principle": "helpfulness",
                  "custom_system_prompt": "", "critique": "", "fine-grained_score": 4.0, "annotations": {}}
    good = [{"source": "evol_instruct", "instruction": f"Instruction {i}", "models": ["m"],
             "completions": [completion], "correct_answers": [], "incorrect_answers": []} for i in range(4)]
    return write_hub_layout(path, {"train": good + [{"source": "x", "instruction": 42}, "{not json"]})


def snorkel(path: Path, per_iteration: int = 4) -> Path:
    """snorkelai/Snorkel-Mistral-PairRM-DPO-Dataset: train_iteration_1..3 and test_iteration_1..3."""
    def row(it, i, prompt=None, chosen=None, rejected=None):
        prompt = prompt if prompt is not None else f"Iteration {it} prompt {i}"
        answers = [f"a{k} for {prompt}" for k in range(5)]
        return {"prompt_id": f"it{it}-{i}", "prompt": prompt,
                "chosen": chosen if chosen is not None else user_assistant(prompt, answers[0]),
                "rejected": rejected if rejected is not None else user_assistant(prompt, answers[4]),
                "all_generated_responses": answers, "all_rm_scores": [0.9, 0.5, 0.4, 0.3, 0.1]}
    splits = {}
    for it in (1, 2, 3):
        rows = [row(it, i) for i in range(per_iteration)]
        splits[f"train_iteration_{it}"] = rows
        splits[f"test_iteration_{it}"] = [row(it, 100)]
    p = "Iteration 1 prompt 0"
    splits["train_iteration_1"] += [
        row(1, 90, chosen=[{"role": "user", "content": p}]),                       # chosen ends with the user
        row(1, 91, rejected=user_assistant(p, "")),                                 # empty rejected answer
        row(1, 92, chosen=user_assistant("same", "x"), rejected=user_assistant("same", "x"))]  # identical
    splits["train_iteration_2"].append(row(2, 93, prompt=p))  # a prompt iteration 1 already has
    return save_dict(path, splits)


def hh(path: Path) -> Path:
    """Anthropic/hh-rlhf (splits train, test): chosen / rejected whole transcripts."""
    def t(*turns):
        return "".join(f"\n\n{'Human' if i % 2 == 0 else 'Assistant'}: {x}" for i, x in enumerate(turns))
    train = [{"chosen": t(f"How do I bake {x}?", f"Carefully, {x}."), "rejected": t(f"How do I bake {x}?", "No.")}
             for x in ("bread", "cake", "pie")]
    train += [{"chosen": t("Hi", "Hello!", "Tell me a joke", "A pun."), "rejected": t("Hi", "Hello!", "Tell me a joke", "")},
              {"chosen": t("Hi", "Hello!", "Tell me a joke", "A pun."), "rejected": t("Hi", "Hello!", "Tell me a joke", "Nope.")},
              {"chosen": t("Q1", "A1"), "rejected": t("Q2", "A2")},                  # different prompts
              {"chosen": "no turns at all", "rejected": t("Q", "A")},
              {"chosen": t(f"How do I bake bread?", "Carefully, bread."), "rejected": t("How do I bake bread?", "No.")},
              {"chosen": 7, "rejected": t("Q", "A")}]                                 # wrong type
    return write_hub_layout(path, {"train": train, "test": [train[0]]})


def shp(path: Path) -> Path:
    """stanfordnlp/SHP (train/validation/test): one post with 7 strong pairs (cap 5), weak and bad rows."""
    def row(post, i, a, b, label=1, history=None):
        return {"post_id": post, "domain": "askscience_train", "upvote_ratio": 0.9,
                "history": history if history is not None else f"Post {post}: why is the sky blue?",
                "c_root_id_A": f"a{i}", "c_root_id_B": f"b{i}", "created_at_utc_A": 1, "created_at_utc_B": 2,
                "score_A": a, "score_B": b, "human_ref_A": f"answer A{i} of {post}", "human_ref_B": f"answer B{i} of {post}",
                "labels": label, "seconds_difference": 1.0, "score_ratio": max(a, b) / max(min(a, b), 1)}
    train = [row("p1", i, 10 + i, 2, label=1) for i in range(7)]
    train += [row("p2", 0, 3, 12, label=0), row("p3", 0, 5, 4), row("p4", 0, 10, 2, label=2),
              row("p5", 0, 10, 2, history=""), row("p6", 0, 10, 0)]
    return write_hub_layout(path, {"train": train, "validation": [row("v", 0, 4, 2)], "test": [row("t", 0, 4, 2)]})


def oasst(path: Path) -> Path:
    """OpenAssistant/oasst1 (train, validation): a tree with 3 ranked replies, a second turn, German, orphans."""
    def m(mid, parent, role, text, rank=None, lang="en", deleted=False, tree="t1"):
        return {"message_id": mid, "parent_id": parent, "user_id": "u", "created_date": "2023", "text": text,
                "role": role, "lang": lang, "review_count": 3, "review_result": True, "deleted": deleted,
                "rank": rank, "synthetic": False, "model_name": None, "detoxify": None, "message_tree_id": tree,
                "tree_state": "ready_for_export", "emojis": None, "labels": None}
    train = [m("r", None, "prompter", "What is a prime?"),
             m("a0", "r", "assistant", "A number with two divisors.", 0),
             m("a1", "r", "assistant", "An odd number.", 1),
             m("a2", "r", "assistant", "Dunno.", 2),
             m("f", "a0", "prompter", "Give an example."),
             m("f0", "f", "assistant", "7.", 0), m("f1", "f", "assistant", "9.", 1),
             m("u", "r", "assistant", "Unranked reply."),                               # rank null
             m("g", None, "prompter", "Was ist eine Primzahl?", lang="de", tree="t2"),
             m("o1", "missing", "assistant", "Orphan.", 1),                             # parent not in the split
             m("d", "r", "assistant", "deleted", 3, deleted=True),
             m("a0", "r", "assistant", "duplicate id", 0)]
    return write_hub_layout(path, {"train": train, "validation": [m("v", None, "prompter", "Hi?")]})


def lmsys(path: Path) -> Path:
    """lmsys/lmsys-chat-1m (train): multi-turn conversations, other languages, flagged and redacted rows."""
    def row(i, first, language="English", flagged=False, turns=1, role="user"):
        conv = [{"role": role, "content": first}, {"role": "assistant", "content": "reply"}]
        for k in range(1, turns):
            conv += [{"role": "user", "content": f"follow-up {k}"}, {"role": "assistant", "content": "r"}]
        moderation = [{"categories": {}, "category_scores": {}, "flagged": flagged} for _ in conv]
        return {"conversation_id": f"c{i}", "model": "vicuna-13b", "conversation": conv, "turn": turns,
                "language": language, "openai_moderation": moderation, "redacted": i == 3}
    train = [row(i, f"First question {i}", turns=1 + i % 3) for i in range(8)]
    train += [row(20, "Bonjour", language="French"), row(21, "bad thing", flagged=True), row(22, ""),
              row(23, "First question 0"), row(24, "assistant first", role="assistant")]
    return save_dict(path, {"train": train})


def alpaca_eval(path: Path, n: int = 5) -> Path:
    """tatsu-lab/alpaca_eval (config alpaca_eval, split eval): instruction, output, generator, dataset."""
    rows = [{"instruction": f"Instruction {i}", "output": f"out {i}", "generator": "text_davinci_003",
             "dataset": "helpful_base"} for i in range(n)]
    rows += [{"instruction": "", "output": "o", "generator": "g", "dataset": "d"},
             {"instruction": "Instruction 0", "output": "o", "generator": "g", "dataset": "d"}]
    return save_dict(path, {"eval": rows})
