"""Benchmarks, and the clustered test data that tests and benchmarks share (bench/clustered.py)."""
