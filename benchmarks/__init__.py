"""Benchmark scripts: run from the repository root as ``python -m benchmarks.<name>`` (or ``python benchmarks/<name>.py``)."""
