"""Shared test fixtures: deterministic seeds, one intra-op thread per test process.

CI runs ``pytest -n 2`` on 2 cores: two workers with several OpenMP threads each oversubscribe the cores,
and spinning OpenMP threads then make small ops up to 100x slower.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads sleep instead of spinning

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
