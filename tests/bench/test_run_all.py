"""`make bench` runs bench.run_all: every benchmark it names must exist and have a main()."""

from __future__ import annotations

import importlib
from pathlib import Path

from bench.run_all import BENCHMARKS, GPU_BENCHMARKS, PEER_BENCHMARKS

BENCH_DIR = Path(__file__).resolve().parents[2] / "bench"


def test_every_listed_benchmark_is_a_runnable_module():
    for name in BENCHMARKS + GPU_BENCHMARKS + PEER_BENCHMARKS:  # a peer is imported lazily
        module = importlib.import_module(f"bench.{name}")
        assert callable(getattr(module, "main", None)), f"bench.{name} has no main()"


def test_every_benchmark_module_is_listed():
    modules = {p.stem for p in BENCH_DIR.glob("bench_*.py")}
    assert modules == set(BENCHMARKS + GPU_BENCHMARKS + PEER_BENCHMARKS)
