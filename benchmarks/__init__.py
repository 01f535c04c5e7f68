"""Benchmark harness and the scripts that regenerate the README tables."""
