"""Measurements that are not tests: `python3 -m benchmarks.bench` and the scripts beside it (docs/speed.md)."""
