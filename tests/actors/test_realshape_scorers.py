"""Scorers on the real architectures shrunk in width and depth (tests/builders.py), in-process on the CPU."""

from __future__ import annotations

import json

import pytest
import torch

from tests.builders import pairrm_download, sp_tokenizer, ultrarm, ultrarm_backbone

pytestmark = pytest.mark.models  # loads models in-process (no Ray): deselected by `make test-fast`

MSGS = [{"role": "user", "content": "tell me about cats"}]
CANDS = ["good cats and tea", "no", "very warm bread please"]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("realshape")
    return {"rm": ultrarm(root / "UltraRM-13b"), "pairrm": pairrm_download(root / "PairRM")}


def test_tokenizer_behaves_like_llamas():
    tok = sp_tokenizer()
    assert (tok.bos_token, tok.eos_token, tok.unk_token, tok.pad_token) == ("<s>", "</s>", "<unk>", None)
    ids = tok("Tell me about cats é")["input_ids"]
    assert ids[0] == 1 and "<0xC3>" in tok.convert_ids_to_tokens(ids)  # BOS added; é by byte fallback
    assert tok.decode(ids, skip_special_tokens=True) == "Tell me about cats é"


def test_pairrm_download_layout_ranks_order_equivariantly(dirs):
    from prefloop.actors.scorers import PairRMScorer

    config = json.loads((dirs["pairrm"] / "config.json").read_text())
    assert config["model_name"] == "microsoft/deberta-v3-large"  # as downloaded: the backbone found beside it
    scorer = PairRMScorer(str(dirs["pairrm"]), device="cpu")
    a = scorer.score(["tell me about cats"], [CANDS])[0]
    b = scorer.score(["tell me about cats"], [[CANDS[2], CANDS[0], CANDS[1]]])[0]
    assert len(a) == 3 and max(a) - min(a) > 1e-2  # distinct scores, so the permutation check can fail
    assert b == pytest.approx([a[2], a[0], a[1]], abs=1e-4)  # the full comparison matrix follows the candidates


def test_ultrarm_layout_padded_batch_equals_one_by_one_and_hand_forward(dirs):
    from prefloop.actors.scorers import RewardModelScorer
    from prefloop.core.templates import render_conversation

    scorer = RewardModelScorer(str(dirs["rm"]), chat_template="ultrarm", batch_size=3, device="cpu")
    assert scorer.tokenizer.pad_token == "<unk>"  # Llama tokenizers get one for padded scoring
    batched = scorer.score([MSGS], [CANDS])[0]
    # by hand, one text at a time (no padding): LlamaModel from the shards' model.* keys, head as a dot product
    state = {}
    for shard in sorted(dirs["rm"].glob("pytorch_model-*.bin")):
        state.update(torch.load(shard, weights_only=True))
    cfg = json.loads((dirs["rm"] / "config.json").read_text())
    base = ultrarm_backbone(cfg, state)
    want = []
    for c in CANDS:
        ids = scorer.tokenizer(render_conversation(MSGS, c, "ultrarm", scorer.tokenizer),
                               return_tensors="pt")["input_ids"]
        with torch.no_grad():
            want.append(float(base(input_ids=ids).last_hidden_state[0, -1] @ state["regression_head.weight"][0]))
    assert batched == pytest.approx(want, abs=1e-4)
