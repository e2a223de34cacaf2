"""Benchmarks: scripts that print figures against a baseline run beside them (results in bench/RESULTS.md)."""
