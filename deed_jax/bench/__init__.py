"""Benchmarks: scripts that print a table and write JSON (`python -m deed_jax.bench.<name>`)."""
