"""Benchmarks: each module measures one thing and writes bench/results/<name>.json."""
