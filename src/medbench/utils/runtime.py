"""Where and how computation runs: device, precision, threads, seeding, environment facts.

The engine asks this module; models never do (STYLE.md: a model knows nothing of devices).
"""

from __future__ import annotations

import contextlib
import os
import platform
import random
import sys
from dataclasses import dataclass

import numpy as np
import torch

from medbench import __version__
from medbench.errors import MedbenchError


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    precision: str  # "fp32", "bf16" or "fp16"
    channels_last: bool

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)

    def autocast(self) -> contextlib.AbstractContextManager:
        dtype = self.autocast_dtype
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """The loss scaler training needs: active for fp16 alone, whose 5-bit exponent flushes
        gradients below about 6e-8 to zero unless the loss is scaled up first (PyTorch's AMP
        recipe). bf16 has fp32's exponent range and needs none; a disabled scaler passes the
        loss and the optimiser step through unchanged."""
        return torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")


def place_model(model: torch.nn.Module, runtime: Runtime) -> torch.nn.Module:
    """Move a model to the runtime's device and memory format (in place; returned too).
    Weights and inputs in the same format give the same numbers in training and later use.
    Models of volumes (5D weights) stay in the default format: channels-last-3d is not
    measured to pay yet."""
    model.to(runtime.device)
    if runtime.channels_last and not any(p.dim() == 5 for p in model.parameters()):
        model.to(memory_format=torch.channels_last)
    return model


def cpu_has_native_bf16() -> bool:
    """True when the CPU has bf16 instructions (AVX512-BF16 or AMX); without them bf16
    autocast on CPU is emulated and slower than fp32 (measured: docs/models.md)."""
    try:
        with open("/proc/cpuinfo") as fh:
            flags = fh.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_runtime(
    device: str = "auto",
    precision: str = "auto",
    channels_last: bool = True,
    *,
    cpu_has_bf16: bool | None = None,
) -> Runtime:
    """Pick the device and precision. 'auto' means: CUDA if present, else MPS, else CPU;
    bf16 autocast on CPUs with native bf16, else fp32 (on CUDA GPUs too: on an H100, fp32
    with TF32 convolutions trained medbench's models at 28 px 1.6-1.7x faster than bf16
    autocast, and resnet18 as fast; docs/models.md). bf16 or fp16 on request.
    `cpu_has_bf16` says whether the CPU has native bf16; None asks the CPU."""
    dev = torch.device(_pick_device(device))
    if precision == "auto":
        if dev.type == "cpu":
            native = cpu_has_native_bf16() if cpu_has_bf16 is None else cpu_has_bf16
            precision = "bf16" if native else "fp32"
        else:
            precision = "fp32"
    if precision == "fp16" and dev.type == "cpu":
        raise MedbenchError("--precision fp16 is not supported on the CPU; use bf16 or fp32")
    return Runtime(device=dev, precision=precision, channels_last=channels_last)


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def _pick_device(device: str) -> str:
    """`device`, or for 'auto' the best one present; one that is absent is a MedbenchError."""
    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        return "mps" if _mps_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise MedbenchError(
            "--device cuda was asked for but no CUDA GPU is available; use --device cpu or auto"
        )
    if device == "mps" and not _mps_available():
        raise MedbenchError(
            "--device mps was asked for but MPS is not available; use --device cpu or auto"
        )
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def environment(runtime: Runtime | None = None) -> dict:
    """Library versions and hardware facts recorded with every result."""
    env = {
        "medbench": __version__,
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
    }
    if runtime is not None:
        env.update(
            device=str(runtime.device),
            precision=runtime.precision,
            channels_last=runtime.channels_last,
        )
        if runtime.device.type == "cuda":
            env["gpu"] = torch.cuda.get_device_name(runtime.device)
    return env
