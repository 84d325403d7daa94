"""The tiny offline assets, built once (``tiny_assets`` in conftest.py) and checked with the real libraries:
the policy generates word-like answers that end, the PairRM (through llm-blender) and the reward model prefer
what the gold preference (``gold.gold_score``) prefers, on fresh pairs and on the policy's own samples, though
they were trained on noisy labels of it; the cache works."""

import json
import random
import shutil
import time

import pytest
import torch

from prefloop.actors.blender_compat import import_llm_blender, load_pairrm
from prefloop.tinyworld import topics as T
from prefloop.tinyworld.assets import FORMAT_VERSION, build_assets, read_marker
from prefloop.tinyworld.gold import gold_score
from prefloop.tinyworld.judges import make_pairs

pytestmark = pytest.mark.models  # loads models in-process (no Ray): deselected by `make test-fast`

HELDOUT = [json.loads(line)["prompt"] for line in T.HELDOUT_FILE.read_text().splitlines()]


@pytest.fixture(scope="module")
def policy(tiny_assets):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_assets.policy), AutoTokenizer.from_pretrained(tiny_assets.policy)


@pytest.fixture(scope="module")
def samples(policy, tiny_assets):
    """4 sampled answers for each of 16 held-out prompts, as the loop's generator would draw them."""
    from transformers import AutoTokenizer

    model, _ = policy
    tok = AutoTokenizer.from_pretrained(tiny_assets.policy, padding_side="left")  # batched generation
    prompts = HELDOUT[:16]
    texts = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
             for p in prompts]
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    torch.manual_seed(0)
    out = model.generate(**enc, do_sample=True, max_new_tokens=96, num_return_sequences=4)
    new = out[:, enc["input_ids"].shape[1]:]
    answers = [tok.decode(row, skip_special_tokens=True).strip() for row in new]
    ended = [(row == tok.eos_token_id).any().item() for row in new]
    return prompts, [answers[i:i + 4] for i in range(0, len(answers), 4)], ended


def test_marker_records_the_build(tiny_assets):
    marker = read_marker(tiny_assets.root)
    assert marker["format"] == FORMAT_VERSION and marker["seed"] == 0
    # Proxies of the gold preference, trained on noisy labels of it and measured against its exact order on
    # pairs as close as 0.05 in gold: about 0.8 where drift is announced (the build measured 0.797 / 0.79).
    assert marker["pairrm_acc_marked"] > 0.72 and marker["reward_acc_marked"] > 0.72
    # The reward model learns that a repeated sentence costs; the tiny PairRM does not (0.39 measured on its
    # held-out repeat pairs): a proxy blind to what the gold judge punishes, which the eval judge is there to catch.
    assert marker["reward_acc_repeat"] > 0.6 and "pairrm_acc_repeat" in marker
    # Known limit, recorded rather than hidden: unannounced drift is near chance for these tiny judges.
    assert 0.0 <= marker["pairrm_acc_unmarked"] <= 1.0 and 0.0 <= marker["reward_acc_unmarked"] <= 1.0


def test_chat_template_is_tulu(policy):
    _, tok = policy
    msgs = [{"role": "user", "content": "Explain bees."}]
    assert tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == \
        "<s><|user|>\nExplain bees.\n<|assistant|>\n"
    done = tok.apply_chat_template(msgs + [{"role": "assistant", "content": "Hi."}], tokenize=False)
    assert done == "<s><|user|>\nExplain bees.\n<|assistant|>\nHi.\n"  # TuluV2: no EOS inside a prompt
    assert tok.padding_side == "right" and tok.pad_token == "<pad>"
    assert tok("x")["input_ids"][0] == tok.bos_token_id  # BOS comes from tokenisation, once
    assert tok.convert_tokens_to_ids("<|assistant|>") != tok.unk_token_id


def test_policy_writes_word_like_answers_that_end(samples):
    prompts, answers, ended = samples
    flat = [a for group in answers for a in group]
    assert sum(ended) / len(ended) > 0.9
    words = [w for a in flat for w in a.split()]
    known = {w for w in T.WORD_TOPIC} | {w for s in T.SENTENCES + T.OPENERS + T.DIGRESSIONS for w in T.words_of(s)}
    assert sum(w.strip(".,").lower() in known for w in words) / len(words) > 0.8
    assert len(set(flat)) == len(flat)  # sampled answers differ
    scores = [gold_score(p, a) for p, group in zip(prompts, answers) for a in group]
    assert max(scores) - min(scores) > 0.5  # they vary on what the judge scores


def test_pairrm_prefers_on_topic_answers(tiny_assets):
    blender = load_pairrm(tiny_assets.pairrm)
    pairs = make_pairs(random.Random(123), 24, HELDOUT, marked=1.0)  # drift announced, as the policy writes it
    scores = blender.rank([p for p, *_ in pairs], [[g, b] for _, g, b, _ in pairs], return_scores=True)
    assert sum(s[0] > s[1] for s in scores) >= 17  # ~0.8 of pairs, as the build measured
    ranks = blender.rank(["Explain bees."], [["By the way, watch the lava closely.", "Watch the honey closely."]])
    assert list(ranks[0]) == [2, 1]


def test_pairrm_agrees_with_the_preference_on_the_policys_samples(tiny_assets, samples):
    prompts, answers, _ = samples
    scores = load_pairrm(tiny_assets.pairrm).rank(prompts, answers, return_scores=True)
    agree = total = 0
    for p, group, judged in zip(prompts, answers, scores):
        truth = [gold_score(p, a) for a in group]
        for i in range(4):
            for j in range(i + 1, 4):
                if abs(truth[i] - truth[j]) >= 0.2:
                    total += 1
                    agree += (truth[i] > truth[j]) == (judged[i] > judged[j])
    # A proxy, not the gold: it agrees on ~0.7 of the clearly different pairs (the build measured 45 of 63).
    assert total >= 20 and agree / total > 0.65


def test_plain_llm_blender_loads_the_ranker(tiny_assets):
    llm_blender = import_llm_blender()
    blender = llm_blender.Blender(llm_blender.BlenderConfig(device="cpu"))
    blender.loadranker(str(tiny_assets.pairrm), device="cpu")  # config.json names the backbone absolutely
    assert blender.ranker_config.model_type == "deberta"


def test_reward_model_scores_good_over_bad(tiny_assets):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_assets.reward)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_assets.reward).eval()
    head = tok.apply_chat_template([{"role": "user", "content": "Explain bees."}], tokenize=False,
                                   add_generation_prompt=True)
    assert head == "Human: Explain bees.\nAssistant: "
    pairs = make_pairs(random.Random(321), 24, HELDOUT, marked=1.0)
    texts = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True) + a
             for p, g, b, _ in pairs for a in (g, b)]
    with torch.no_grad():
        r = model(**tok(texts, return_tensors="pt", padding=True)).logits[:, 0].view(-1, 2)
    assert int((r[:, 0] > r[:, 1]).sum()) >= 17


def test_second_build_is_a_cache_hit(tiny_assets):
    start = time.monotonic()
    again = build_assets(tiny_assets.root)
    assert again == tiny_assets and time.monotonic() - start < 1.0


def test_missing_or_incomplete_ranker_is_named(tmp_path, tiny_assets):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nope")):
        load_pairrm(tmp_path / "nope")
    broken = tmp_path / "broken"
    shutil.copytree(tiny_assets.pairrm, broken)
    (broken / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_pairrm(broken)


def test_a_copied_ranker_still_loads(tmp_path, tiny_assets):
    moved = tmp_path / "ranker"
    shutil.copytree(tiny_assets.pairrm, moved)
    config = json.loads((moved / "config.json").read_text())
    config["model_name"] = "/gone/backbone"
    (moved / "config.json").write_text(json.dumps(config))
    assert load_pairrm(moved).rank(["Explain bees."], [["Watch the honey closely.", "Sure."]]) is not None


def test_refuses_to_replace_a_directory_that_is_not_an_assets_dir(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a prefloop assets dir"):
        build_assets(tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"
