"""Benchmark scripts, run from the repository root as ``python -m benchmarks.<name>``.

Results go to ``benchmarks/results/<name>/``.
"""
