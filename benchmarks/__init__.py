"""The benchmark harness: ``python -m benchmarks`` (see README.md beside this file)."""
