import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # Triton kernels run on CPU tensors (no GPU here); read at triton import

import pytest
import torch

# Tests run on 2 cores: keep torch's thread count deterministic across machines.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)
    yield
