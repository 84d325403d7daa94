"""Tokenisation helpers, with a tiny word-level tokenizer built here (no hub)."""

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from prefloop.core.batching import encode_pairs, encode_prompts, mismatched_completions, pad_batch
from prefloop.core.logprobs import build_response_mask, sequence_logps

WORDS = ["<pad>", "<s>", "</s>", "<unk>"] + "a b c d e f g h i j".split()
PAD, BOS, EOS = 0, 1, 2
A, B, C, D, E, F, G, H, I, J = range(4, 14)


def make_tokenizer(padding_side="right"):
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
        padding_side=padding_side,
    )


def test_right_padding_layout():
    batch = encode_pairs(make_tokenizer(), ["a b", "c"], ["d", "e f g"])
    assert batch["input_ids"].tolist() == [[A, B, D, EOS, PAD], [C, E, F, G, EOS]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]
    assert batch["loss_mask"].tolist() == [[0, 0, 1, 1, 0], [0, 1, 1, 1, 1]]
    assert batch["prompt_lengths"].tolist() == [2, 1]
    assert batch["response_lengths"].tolist() == [2, 4]


def test_left_padding_follows_the_tokenizer_or_the_argument():
    batch = encode_pairs(make_tokenizer("left"), ["a b", "c"], ["d", "e f g"])
    assert batch["input_ids"].tolist() == [[PAD, A, B, D, EOS], [C, E, F, G, EOS]]
    assert batch["loss_mask"].tolist() == [[0, 0, 0, 1, 1], [0, 1, 1, 1, 1]]
    forced = encode_pairs(make_tokenizer("left"), ["a b"], ["d"], padding_side="right")
    assert forced["input_ids"].tolist() == [[A, B, D, EOS]]


def test_truncation_keeps_prompt_end_and_response_start():
    batch = encode_pairs(make_tokenizer(), ["a b c d e"], ["f g h i"], max_prompt_len=3, max_response_len=2)
    # prompt keeps "c d e"; response keeps "f g" and, having been cut, gets no EOS
    assert batch["input_ids"].tolist() == [[C, D, E, F, G]]
    assert batch["loss_mask"].tolist() == [[0, 0, 0, 1, 1]]


def test_eos_added_only_when_it_fits_and_never_twice():
    tok = make_tokenizer()
    assert encode_pairs(tok, ["a"], ["b c"], max_response_len=3)["input_ids"].tolist() == [[A, B, C, EOS]]
    assert encode_pairs(tok, ["a"], ["b c"], max_response_len=2)["input_ids"].tolist() == [[A, B, C]]
    assert encode_pairs(tok, ["a"], ["b </s>"])["input_ids"].tolist() == [[A, B, EOS]]
    assert encode_pairs(tok, ["a"], ["b"], add_eos=False)["input_ids"].tolist() == [[A, B]]


def test_bos_survives_prompt_truncation_and_is_not_doubled():
    tok = make_tokenizer()
    assert encode_prompts(tok, ["a b c d"], max_prompt_len=3, add_bos=True) == [[BOS, C, D]]
    assert encode_prompts(tok, ["<s> a b"], max_prompt_len=8, add_bos=True) == [[BOS, A, B]]
    assert encode_prompts(tok, ["<s> a b"], max_prompt_len=8) == [[BOS, A, B]]  # text is kept as written


def test_loss_mask_matches_build_response_mask_on_both_sides():
    for side in ("left", "right"):
        batch = encode_pairs(make_tokenizer(side), ["a b c", "d", "e f"], ["g", "h i j", ""])
        rebuilt = build_response_mask(batch["input_ids"], batch["attention_mask"], batch["prompt_lengths"])
        assert torch.equal(rebuilt, batch["loss_mask"])


def test_left_and_right_batches_score_the_same():
    torch.manual_seed(0)
    emb, out = torch.nn.Embedding(len(WORDS), 8), torch.nn.Linear(8, len(WORDS))

    def lm(ids, attn):  # causal masked-mean LM: padding-invariant by construction
        m = attn.unsqueeze(-1).float()
        return out(torch.tanh((emb(ids) * m).cumsum(1) / m.cumsum(1).clamp(min=1)))

    prompts, responses = ["a b c", "d", "e f"], ["g", "h i j", "a"]
    scores = []
    for side in ("left", "right"):
        batch = encode_pairs(make_tokenizer(side), prompts, responses)
        logits = lm(batch["input_ids"], batch["attention_mask"])
        scores.append(sequence_logps(logits, batch["input_ids"], batch["loss_mask"]))
    assert torch.allclose(scores[0], scores[1], atol=1e-6)


def test_pad_batch_and_empty_rows():
    ids, attn = pad_batch([[5, 6], []], pad_id=0, side="left")
    assert ids.tolist() == [[5, 6], [0, 0]] and attn.tolist() == [[1, 1], [0, 0]]


def test_mismatched_completions_rotate_by_one():
    assert mismatched_completions(["y0", "y1", "y2"]) == ["y2", "y0", "y1"]
    with pytest.raises(ValueError):
        mismatched_completions(["only"])


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError):
        encode_pairs(make_tokenizer(), ["a", "b"], ["c"])


def test_packed_encoding_holds_the_padded_encodings_tokens():
    from prefloop.core.batching import encode_pairs_packed

    tok = make_tokenizer()
    prompts, responses = ["a b", "c", "d e f"], ["d", "e f g", ""]
    padded = encode_pairs(tok, prompts, responses, add_bos=True)
    packed = encode_pairs_packed(tok, prompts, responses, add_bos=True)
    assert packed.tokens == int(padded["attention_mask"].sum()) == 16
    # the scored targets are the padded batch's response tokens (position 0 never scored), per sequence
    for i in range(3):
        row = padded["input_ids"][i][padded["loss_mask"][i].bool()].tolist()
        assert packed.targets[packed.segment == i].tolist() == row
