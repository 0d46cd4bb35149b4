"""Device and precision choice (medbench.utils.runtime.resolve_runtime)."""

from __future__ import annotations

import pytest
import torch

from medbench.errors import MedbenchError
from medbench.utils import runtime


@pytest.fixture
def cuda_machine(monkeypatch):
    """Pretend a CUDA GPU is present (resolve_runtime only asks, it allocates nothing)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)


def test_auto_on_a_gpu_trains_in_fp32_channels_last(cuda_machine):
    # Measured on an H100 (docs/models.md): at 28 px fp32 trained advanced_cnn and
    # efficientnet 1.6-1.7x faster than bf16 autocast in the engine, resnet18 as fast.
    rt = runtime.resolve_runtime()
    assert rt.device.type == "cuda"
    assert rt.precision == "fp32" and rt.autocast_dtype is None
    assert rt.channels_last


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_on_a_gpu_on_request(cuda_machine, precision):
    rt = runtime.resolve_runtime("cuda", precision)
    assert rt.precision == precision
    assert rt.autocast_dtype == {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]


@pytest.mark.parametrize("native", [True, False])
def test_auto_on_a_cpu_uses_bf16_only_where_the_cpu_has_it(native):
    rt = runtime.resolve_runtime("cpu", cpu_has_bf16=native)
    assert rt.precision == ("bf16" if native else "fp32")


def test_auto_on_a_cpu_asks_the_cpu_when_not_told():
    expected = "bf16" if runtime.cpu_has_native_bf16() else "fp32"
    assert runtime.resolve_runtime("cpu").precision == expected


def test_fp16_on_the_cpu_is_a_user_error():
    with pytest.raises(MedbenchError, match="fp16"):
        runtime.resolve_runtime("cpu", "fp16")


def test_cuda_asked_for_without_a_gpu_is_a_user_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(MedbenchError, match="no CUDA GPU"):
        runtime.resolve_runtime("cuda")
