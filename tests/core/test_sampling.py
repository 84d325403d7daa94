"""Per-request seeds are stable and independent of batching; sample columns are laid out per candidate."""

from prefloop.core.sampling import Sample, SampleSpec, flatten_samples, request_seed


def test_request_seed_is_stable_and_differs_by_prompt():
    assert request_seed(0, "p1") == request_seed(0, "p1")
    assert request_seed(0, "p1") != request_seed(0, "p2")
    assert request_seed(0, "p1") != request_seed(1, "p1")
    assert 0 <= request_seed(7, "x") < 2**31


def test_sampling_kwargs():
    spec = SampleSpec(n=4, temperature=0.7, top_p=0.9, max_tokens=32, seed=3)
    kw = spec.kwargs_for("p1")
    assert kw["n"] == 4 and kw["logprobs"] == 0 and kw["seed"] == request_seed(3, "p1")
    assert "seed" not in SampleSpec(4, 1.0, 1.0, 8, None).kwargs_for("p1")


def test_flatten_samples():
    cols = flatten_samples([Sample("ab", [1, 2], "stop", [-0.5, -0.25]), Sample("c", [3], "length", [-1.0])])
    assert cols["candidates"] == ["ab", "c"]
    assert cols["num_tokens"] == [2, 1]
    assert cols["finish_reasons"] == ["stop", "length"]
    assert cols["sum_logprob"] == [-0.75, -1.0]
