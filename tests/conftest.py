import os

import pytest
import torch

os.environ.setdefault("CI", "1")  # progress bars off in tests
torch.set_num_threads(1)  # faster than 2 threads for the small tensors of the tests


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts seeded, on one intra-op thread (a library such as scanpy's numba may
    have reset the shared OpenMP pool)."""
    torch.manual_seed(0)
    torch.set_num_threads(1)
