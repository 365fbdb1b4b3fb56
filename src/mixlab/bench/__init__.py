"""Benchmarks: suites of runs, the results store, the runner and the report."""
