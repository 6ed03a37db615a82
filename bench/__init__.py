"""Benchmarks for idcfs. `python -m bench` runs them; figures go to bench/RESULTS.md."""
