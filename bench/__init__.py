"""Benchmarks run by hand; each prints ratios against stock savers measured in the same run."""
