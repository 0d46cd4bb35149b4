"""Run a benchmark grid from keyword arguments, as the tests write them.

`run_benchmark_with(datasets=..., train_fn=fake, epochs=2)` is `run_benchmark(BenchmarkConfig(
datasets=..., epochs=2), train_fn=fake)`: the grid's fields go to the config, the
injected stand-ins (`train_fn`, `speed_fn`, `prepare_data`, `clock`) to the call.
"""

from __future__ import annotations

from typing import Any

from medbench.workflows.benchmark import BenchmarkConfig, GridOutcome, run_benchmark

INJECTED = ("train_fn", "speed_fn", "prepare_data", "clock")


def run_benchmark_with(*args: Any, **kwargs: Any) -> GridOutcome:
    injected = {k: kwargs.pop(k) for k in INJECTED if k in kwargs}
    return run_benchmark(BenchmarkConfig(*args, **kwargs), **injected)
