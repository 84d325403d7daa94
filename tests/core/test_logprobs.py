"""Log-probability helpers: hand-computed values, masks for either padding side, gradient isolation."""

import math

import pytest
import torch

from prefloop.core.logprobs import (
    build_response_mask,
    full_kl,
    label_logps,
    response_token_counts,
    segment_logps,
    sequence_logps,
    token_logps,
)
from prefloop.core.packing import pack_sequences


def log_softmax_py(row, index):
    """log softmax(row)[index] by hand, in plain Python floats."""
    return row[index] - math.log(sum(math.exp(v) for v in row))


class ToyLM(torch.nn.Module):
    """Causal LM whose step t sees the masked mean of embeddings <= t: padding-invariant by construction."""

    def __init__(self, vocab=11, dim=8):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, dim)
        self.out = torch.nn.Linear(dim, vocab)

    def forward(self, ids, attn):
        m = attn.unsqueeze(-1).float()
        h = (self.emb(ids) * m).cumsum(1) / m.cumsum(1).clamp(min=1)
        return self.out(torch.tanh(h))


LOGITS = [[[0.0, 1.0, 2.0], [1.0, 0.5, -1.0], [2.0, 0.0, 0.0], [0.3, 0.3, 0.3]]]  # [1, 4, 3]
LABELS = [[0, 2, 0, 1]]


def test_token_logps_hand_computed():
    out = token_logps(torch.tensor(LOGITS), torch.tensor(LABELS))
    expected = [log_softmax_py(LOGITS[0][t], LABELS[0][t + 1]) for t in range(3)]
    assert out.shape == (1, 3)
    assert out[0].tolist() == pytest.approx(expected, abs=1e-6)


def test_sequence_logps_sums_only_response_tokens():
    mask = torch.tensor([[0, 0, 1, 1]])  # tokens 2 and 3 are the response
    expected_sum = log_softmax_py(LOGITS[0][1], 0) + log_softmax_py(LOGITS[0][2], 1)
    got = sequence_logps(torch.tensor(LOGITS), torch.tensor(LABELS), mask)
    assert got.item() == pytest.approx(expected_sum, abs=1e-6)
    got_mean = sequence_logps(torch.tensor(LOGITS), torch.tensor(LABELS), mask, average=True)
    assert got_mean.item() == pytest.approx(expected_sum / 2, abs=1e-6)
    assert response_token_counts(mask).tolist() == [2]


def test_masked_labels_may_be_ignore_index():
    labels = torch.tensor([[-100, -100, 0, 1]])
    mask = torch.tensor([[0, 0, 1, 1]])
    ref = sequence_logps(torch.tensor(LOGITS), torch.tensor(LABELS), mask)
    assert sequence_logps(torch.tensor(LOGITS), labels, mask).item() == pytest.approx(ref.item())


def test_empty_response_gives_zero():
    mask = torch.zeros(1, 4, dtype=torch.long)
    assert sequence_logps(torch.tensor(LOGITS), torch.tensor(LABELS), mask).item() == 0.0
    assert sequence_logps(torch.tensor(LOGITS), torch.tensor(LABELS), mask, average=True).item() == 0.0


def test_build_response_mask_right_left_and_mixed_padding():
    ids = torch.zeros(3, 6, dtype=torch.long)
    attn = torch.tensor([
        [1, 1, 1, 1, 0, 0],  # right padded: 2 prompt + 2 response
        [0, 0, 1, 1, 1, 1],  # left padded: same
        [0, 1, 1, 1, 1, 0],  # padded on both sides: 1 prompt + 3 response
    ])
    got = build_response_mask(ids, attn, torch.tensor([2, 2, 1]))
    assert got.tolist() == [
        [0, 0, 1, 1, 0, 0],
        [0, 0, 0, 0, 1, 1],
        [0, 0, 1, 1, 1, 0],
    ]
    with pytest.raises(ValueError):
        build_response_mask(ids, attn, [1, 2])


def test_left_and_right_padding_give_identical_sequence_logps():
    torch.manual_seed(0)
    model = ToyLM()
    prompts, responses, pad = [[1, 2, 3], [4, 5]], [[6, 7], [8, 9, 10, 2]], 0
    width = max(len(p) + len(r) for p, r in zip(prompts, responses))
    results = {}
    for side in ("left", "right"):
        ids = torch.full((2, width), pad)
        attn = torch.zeros(2, width, dtype=torch.long)
        for b, (p, r) in enumerate(zip(prompts, responses)):
            seq, n = p + r, len(p) + len(r)
            cols = slice(0, n) if side == "right" else slice(width - n, width)
            ids[b, cols], attn[b, cols] = torch.tensor(seq), 1
        mask = build_response_mask(ids, attn, torch.tensor([len(p) for p in prompts]))
        results[side] = sequence_logps(model(ids, attn), ids, mask)
    assert torch.allclose(results["left"], results["right"], atol=1e-6)
    # and it is really the response that was scored: 2 and 4 tokens
    assert not torch.equal(results["left"], torch.zeros(2))


def test_masked_positions_receive_no_gradient():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7, requires_grad=True)
    labels = torch.randint(0, 7, (2, 5))
    mask = torch.tensor([[0, 0, 1, 1, 0], [0, 1, 1, 1, 1]])
    sequence_logps(logits, labels, mask).sum().backward()
    grad_norm = logits.grad.abs().sum(-1)  # [2, 5]
    # position t gets gradient only if token t + 1 is a response token; the last position never does.
    expected_nonzero = torch.zeros(2, 5, dtype=torch.bool)
    expected_nonzero[:, :-1] = mask[:, 1:].bool()
    assert torch.equal(grad_norm > 0, expected_nonzero)


def test_nonfinite_logits_at_masked_positions_do_not_leak():
    logits = torch.tensor(LOGITS).clone()
    logits[0, 0] = float("nan")  # position 0 predicts token 1, which is prompt
    mask = torch.tensor([[0, 0, 1, 1]])
    assert torch.isfinite(sequence_logps(logits, torch.tensor(LABELS), mask)).all()


def test_full_kl_hand_computed_and_masked():
    p_logits = torch.tensor([[[0.0, 1.0], [2.0, 0.0], [0.0, 0.0]]])
    q_logits = torch.tensor([[[1.0, 0.0], [2.0, 0.0], [5.0, 5.0]]])
    mask = torch.tensor([[0, 1, 0]])  # only step 0 (predicting token 1) counts
    p = [math.exp(0) / (1 + math.e), math.e / (1 + math.e)]
    q = [p[1], p[0]]
    expected = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    got = full_kl(p_logits, q_logits, mask)
    assert got.shape == (1, 2)
    assert got[0, 0].item() == pytest.approx(expected, abs=1e-6)
    assert got[0, 1].item() == 0.0


def test_full_kl_is_zero_for_equal_models_and_nonnegative():
    torch.manual_seed(1)
    a, b = torch.randn(3, 6, 9), torch.randn(3, 6, 9)
    mask = torch.ones(3, 6, dtype=torch.long)
    assert full_kl(a, a, mask).abs().max().item() < 1e-6
    assert (full_kl(a, b, mask) >= -1e-7).all()


def test_shape_errors():
    with pytest.raises(ValueError):
        token_logps(torch.zeros(1, 4, 3), torch.zeros(1, 5, dtype=torch.long))
    with pytest.raises(ValueError):
        sequence_logps(torch.zeros(1, 4, 3), torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 3))


# ---------------------------------------------------------------- packed rows: label_logps, segment_logps

def test_label_logps_hand_computed_in_any_chunking():
    rows = torch.tensor([[0.0, 1.0, 2.0], [1.0, 0.5, -1.0], [2.0, 0.0, 0.0]])
    targets = torch.tensor([2, 0, 1])
    want = [log_softmax_py(r, t) for r, t in zip(rows.tolist(), targets.tolist())]
    for chunk in (1, 2, 3, 100):
        assert label_logps(rows, targets, chunk_rows=chunk).tolist() == pytest.approx(want, abs=1e-6)


def test_label_logps_equals_naive_log_softmax_and_its_gradient():
    torch.manual_seed(0)
    logits = (torch.randn(37, 50) * 4).requires_grad_(True)
    targets = torch.randint(0, 50, (37,))
    naive = torch.log_softmax(logits, -1).gather(-1, targets[:, None]).squeeze(-1)
    (g_naive,) = torch.autograd.grad(naive.sum(), logits)
    ours = label_logps(logits, targets, chunk_rows=8)
    (g_ours,) = torch.autograd.grad(ours.sum(), logits)
    assert torch.allclose(ours, naive, atol=1e-5)
    assert torch.allclose(g_ours, g_naive, atol=1e-5)
    bf16 = label_logps(logits.detach().bfloat16(), targets, chunk_rows=5)
    assert bf16.dtype == torch.float32  # computed in float32 whatever the logits' dtype


def test_segment_logps_sums_and_means_per_sequence():
    values = torch.tensor([-1.0, -2.0, -0.5, -3.0])
    segment = torch.tensor([2, 0, 2, 2])
    assert segment_logps(values, segment, 4).tolist() == [-2.0, 0.0, -4.5, 0.0]
    assert segment_logps(values, segment, 4, average=True).tolist() == [-2.0, 0.0, -1.5, 0.0]
    with pytest.raises(ValueError, match="segment ids"):
        segment_logps(values, segment, 2)
    with pytest.raises(ValueError, match="equal"):
        segment_logps(values, segment[:3], 4)
    with pytest.raises(ValueError, match="logits"):
        label_logps(torch.zeros(2, 3, 4), torch.zeros(2, dtype=torch.long))


def test_packed_logps_equal_padded_sequence_logps():
    """The same sequences, padded or packed (ToyLM sees only its own sequence either way): equal log-probs."""
    torch.manual_seed(1)
    seqs = [[3, 4, 5, 6, 7], [8, 9], [1, 2, 3, 4, 5, 6, 7, 8], [10, 4, 4]]
    prompts = [2, 1, 5, 3]  # the last one has no response token
    pad, width = 0, max(map(len, seqs))
    ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs])
    attn = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
    mask = torch.tensor([[0] * p + [1] * (len(s) - p) + [0] * (width - len(s)) for s, p in zip(seqs, prompts)])
    model = ToyLM()
    padded = sequence_logps(model(ids, attn), ids, mask)
    packed = pack_sequences(seqs, prompts, pad)
    assert packed.input_ids.shape[0] < len(seqs)  # some rows hold several sequences
    # ToyLM has no position ids: run each packed sequence alone, in its packed place, to get the same hidden rows
    logits = torch.zeros(*packed.input_ids.shape, 11)
    for r in range(packed.input_ids.shape[0]):
        starts = (packed.position_ids[r] == 0).nonzero().flatten().tolist() + [packed.input_ids.shape[1]]
        for a, b in zip(starts, starts[1:]):
            piece = packed.input_ids[r:r + 1, a:b]
            logits[r, a:b] = model(piece, torch.ones_like(piece))[0]
    got = segment_logps(label_logps(logits[packed.select], packed.targets), packed.segment, packed.n_seqs)
    assert torch.allclose(got, padded, atol=1e-5)
    assert got[3] == 0.0
