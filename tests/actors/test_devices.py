"""The device an actor computes on follows the GPUs Ray assigned to it."""

import pytest

from prefloop.actors.devices import choose_device


def test_no_assigned_gpu_stays_on_cpu_even_if_cuda_is_there():
    assert choose_device([], cuda_devices=8, bf16_supported=True) == ("cpu", "float32")


def test_assigned_gpu_is_cuda0_in_bf16_or_fp16():
    assert choose_device(["3"], cuda_devices=1, bf16_supported=True) == ("cuda:0", "bfloat16")
    assert choose_device([3], cuda_devices=1, bf16_supported=False) == ("cuda:0", "float16")


def test_assigned_gpu_that_cuda_cannot_see_is_an_error():
    with pytest.raises(RuntimeError, match=r"assigned GPU\(s\) \['0'\]"):
        choose_device(["0"], cuda_devices=0, bf16_supported=False)
