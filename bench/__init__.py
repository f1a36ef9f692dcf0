"""Benchmarks: frame codec throughput (test_frames.py) and the load generator (load.py)."""
