"""Benchmark commands (``fpntools bench ...``): tables of medians measured side by side in one run."""
