"""Scorer classes on the real tiny models, without Ray: the reward model in its own template, user functions."""

import numpy as np
import pytest

from prefloop.actors.common import object_column
from prefloop.actors.scorers import FunctionScorer, PairRMScorer, RewardModelScorer, load_function
from prefloop.core.config import RecipeError
from prefloop.core.templates import render_conversation

pytestmark = pytest.mark.models  # loads models in-process (no Ray): deselected by `make test-fast`


def batch(prompts, candidates):
    msgs = [f'[{{"role": "user", "content": "{p}"}}]' for p in prompts]
    return {"prompt_id": np.array([f"p{i}" for i in range(len(prompts))]), "prompt": np.array(prompts),
            "messages": np.array(msgs, dtype=object), "candidates": object_column(candidates)}


def length_reward(prompt, completion):
    return float(len(completion))


def test_function_scorer_scores_every_candidate():
    out = FunctionScorer(f"{__name__}:length_reward")(batch(["q1", "q2"], [["a", "bbb"], ["cc", ""]]))
    assert out.column("scores").to_pylist() == [[1.0, 3.0], [2.0, 0.0]]
    assert all(s >= 0 for s in out.column("score_s").to_pylist())


def test_bad_function_spec_is_named():
    with pytest.raises(RecipeError, match="no_such_module"):
        load_function("no_such_module:f")


def test_reward_model_scores_in_its_own_template(tiny_assets):
    scorer = RewardModelScorer(str(tiny_assets.reward), chat_template="ultrarm", batch_size=3)
    prompts = ["Write a short note about cats.", "Explain rivers."]
    cands = [["Cats are soft.", "Trains are loud.", "x"], ["Rivers flow to the sea.", "Bread is baked."]]
    out = scorer(batch(prompts, cands)).column("scores").to_pylist()
    # The same numbers as scoring the rendered texts directly, one by one: batching and padding change nothing.
    texts = [render_conversation([{"role": "user", "content": p}], c, "ultrarm") for p, cs in zip(prompts, cands)
             for c in cs]
    assert texts[0] == "Human: Write a short note about cats.\nAssistant: Cats are soft."
    single = [scorer.score_texts([t])[0] for t in texts]
    np.testing.assert_allclose([s for row in out for s in row], single, rtol=1e-4, atol=1e-4)


def test_reward_model_missing_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="reward model"):
        RewardModelScorer(str(tmp_path / "nope"))


def test_pairrm_ranks_candidates_that_contain_its_own_marker_tokens(tiny_assets):
    """A sampled answer can contain ``<|candidate|>`` verbatim; raw llm-blender then crashes on shapes."""
    from prefloop.actors.blender_compat import load_pairrm, ranker_safe

    prompt = "Tell me about <|source|> rivers."
    cands = ["rivers flow <|candidate|> to the sea", "ch<|candidate2|><|candidate|> mou", "tea is warm", ""]
    with pytest.raises(RuntimeError, match="Sizes of tensors"):
        load_pairrm(str(tiny_assets.pairrm)).rank([prompt], [cands], return_scores=True, disable_tqdm=True)
    scores = PairRMScorer(str(tiny_assets.pairrm)).score([prompt], [cands])[0]
    assert len(scores) == 4 and all(np.isfinite(scores))
    assert ranker_safe(cands[1]) == "ch<candidate2><candidate> mou" and ranker_safe(cands[2]) == cands[2]


def test_pairrm_pivots_agree_with_the_full_ranking(tiny_assets):
    """The pivots' best and worst against the full N x (N-1) ranking of the same real tiny PairRM on the
    shipped prompts' kind of answers (the position bias cancels in both, so they should mostly agree)."""
    import random

    rng = random.Random(0)
    words = ["cats", "rivers", "bread", "music", "the", "is", "good", "very", "and", "a", "kind", "stars"]
    prompts = [f"Tell me about {w}." for w in words]
    cands = [[" ".join(rng.choice(words) for _ in range(rng.randint(3, 14))) for _ in range(5)] for _ in prompts]
    full = PairRMScorer(str(tiny_assets.pairrm), comparisons="full").score(prompts, cands)
    scorer = PairRMScorer(str(tiny_assets.pairrm), batch_size=8, comparisons="pivots")
    piv = scorer.score(prompts, cands)
    agree = 0
    for f, t in zip(full, piv):
        assert len(t) == 5 and all(np.isfinite(t)) and len(set(t)) == 5  # every candidate has its own score
        agree += (int(np.argmax(t)) == int(np.argmax(f))) + (int(np.argmin(t)) == int(np.argmin(f)))
    assert agree / (2 * len(prompts)) >= 0.8, (full, piv)
    # a lone candidate scores 0 in both modes; mixed sizes are fine for the pivots
    assert scorer.score(["Tell me about cats."], [["cats are kind"]]) == [[0.0]]
    assert [len(r) for r in scorer.score(prompts[:2], [cands[0][:2], cands[1]])] == [2, 5]


def test_pivots_need_a_pairwise_judge():
    from prefloop.core.config import parse_recipe

    base = {"name": "t", "run_dir": "r", "policy": {"model": "m"}, "data": {"train": "p"}}
    with pytest.raises(RecipeError, match="scorer.comparisons"):
        parse_recipe({**base, "scorer": {"kind": "function", "function": "a:b", "comparisons": "pivots"}}, "t.yaml")
    with pytest.raises(RecipeError, match="scorer.comparisons"):
        parse_recipe({**base, "scorer": {"kind": "pairrm", "model": "x", "comparisons": "tournament"}}, "t.yaml")
    recipe = parse_recipe({**base, "scorer": {"kind": "pairrm", "model": "x", "comparisons": "pivots"},
                           "selection": {"length_penalty": 0.1}}, "t.yaml")  # every candidate has a real score
    assert recipe.scorer.comparisons == "pivots" and recipe.selection.length_penalty == 0.1


def test_reward_model_inputs_over_its_length_are_left_truncated_never_cut_mid_answer(tiny_assets):
    """The tiny reward model takes 512 tokens: a longer conversation loses the start of its prompt, never the end
    of its answer (where the reward is read); the row says so; an answer that alone does not fit is an error."""
    scorer = RewardModelScorer(str(tiny_assets.reward), chat_template="ultrarm", batch_size=2)
    assert scorer.max_length == 512
    long_prompt = " ".join(["rivers and cats"] * 400)
    answer = "Rivers flow to the sea, and cats sleep in the sun."
    text = render_conversation([{"role": "user", "content": long_prompt}], answer, "ultrarm")
    ids = scorer.tokenizer(text)["input_ids"]
    assert len(ids) > 512
    out = scorer(batch([long_prompt, "Explain rivers."], [[answer], ["Rivers flow."]]))
    assert out.column("prompt_truncated").to_pylist() == [1, 0]
    tail = (ids[:1] if ids[0] == scorer.tokenizer.bos_token_id else []) + ids[-(512 - int(
        ids[0] == scorer.tokenizer.bos_token_id)):]
    import torch

    with torch.no_grad():
        want = scorer.model(torch.tensor([tail]), torch.ones(1, len(tail), dtype=torch.long)).item()
    assert out.column("scores").to_pylist()[0][0] == pytest.approx(want, rel=1e-4, abs=1e-4)
    with pytest.raises(ValueError, match="prompt_id p0: the answer alone is"):
        scorer(batch(["Explain rivers."], [[" ".join(["sea"] * 900)]]))
