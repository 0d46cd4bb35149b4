"""Depthwise-conv backward on CPU: PyTorch's kernel vs medbench's small-map path.

For every depthwise conv of `efficientnet` at one image size, times forward + backward
(input and weight gradients) at the training batch size with PyTorch's `nn.Conv2d` and with
`medbench.models.layers.DepthwiseConv2d` forced onto its tap-sum weight gradient, in one
run, interleaved. The rows decide `layers.uses_tap_sums`: the tap sums must win on every
conv it sends to them. The last two columns do the same under bf16 autocast: PyTorch's
kernel on bf16 tensors, against `DepthwiseConv2d`, which trains in fp32 under CPU autocast.

    OMP_NUM_THREADS=1 python benchmarks/depthwise_grad.py --image-size 28
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import torch
from torch import nn

from medbench.models import build_model, layers


def _time(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image-size", type=int, default=28)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = build_model("efficientnet", 1, 2, image_size=args.image_size)
    shapes = []
    hooks = [
        m.register_forward_hook(lambda m, i, o: shapes.append((m, tuple(i[0].shape))))
        for m in model.modules()
        if isinstance(m, layers.DepthwiseConv2d)
    ]
    with torch.no_grad():
        model(torch.zeros(1, 1, args.image_size, args.image_size))
    for h in hooks:
        h.remove()
    print(f"threads {torch.get_num_threads()}, batch {args.batch}, {args.image_size} px")
    print(
        "| channels | map in -> out | kernel / stride | PyTorch ms | tap sums ms | speed-up | used "
        "| bf16 autocast: PyTorch ms | medbench ms |"
    )
    print("|---:|---|---|---:|---:|---:|---|---:|---:|")
    seen = set()
    total_native = total_best = total_bf16 = total_ours_bf16 = 0.0
    for conv, shape in shapes:
        c, h = shape[1], shape[2]
        k, s = conv.kernel_size[0], conv.stride[0]
        key = (c, h, k, s)
        x = torch.randn(args.batch, c, h, h).contiguous(memory_format=torch.channels_last)
        x.requires_grad_()
        native = nn.Conv2d(c, c, k, s, conv.padding, groups=c, bias=False)
        native.load_state_dict(conv.state_dict())
        y = native(x)
        grad = torch.randn_like(y)
        out = y.shape[-1]

        def run_native(native=native, x=x, grad=grad):
            torch.autograd.grad(native(x), [x, native.weight], grad)

        def run_taps(conv=conv, x=x, grad=grad, s=s):
            y = layers._SmallMapDepthwise.apply(x, conv.weight, s, conv.padding[0])
            torch.autograd.grad(y, [x, conv.weight], grad)

        xb = x.detach().to(torch.bfloat16).requires_grad_()

        def run_autocast(module, xb=xb, grad=grad):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                y = module(xb)
            torch.autograd.grad(y, [xb, module.weight], grad.to(y.dtype))

        t_native = t_taps = t_bf16 = t_ours_bf16 = 0.0
        for _ in range(2):  # interleave
            t_native += _time(run_native, args.repeats) / 2
            t_taps += _time(run_taps, args.repeats) / 2
            t_bf16 += _time(functools.partial(run_autocast, native), args.repeats) / 2
            t_ours_bf16 += _time(functools.partial(run_autocast, conv), args.repeats) / 2
        taps = layers.uses_tap_sums(out * out, k)
        used = t_taps if taps else t_native
        total_native += t_native
        total_best += used
        total_bf16 += t_bf16
        total_ours_bf16 += t_ours_bf16
        if key in seen:
            continue
        seen.add(key)
        print(
            f"| {c} | {h}x{h} -> {out}x{out} | {k}x{k} / {s} | {t_native:.1f} | {t_taps:.1f} "
            f"| {t_native / t_taps:.2f}x | {'tap sums' if taps else 'PyTorch'} "
            f"| {t_bf16:.1f} | {t_ours_bf16:.1f} |"
        )
    print(
        f"all {len(shapes)} depthwise convs, one training step: PyTorch {total_native:.0f} ms, "
        f"medbench {total_best:.0f} ms; under bf16 autocast: PyTorch {total_bf16:.0f} ms, "
        f"medbench {total_ours_bf16:.0f} ms"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
