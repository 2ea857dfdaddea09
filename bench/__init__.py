"""Benchmark and soak of tokend (see README.md here)."""
