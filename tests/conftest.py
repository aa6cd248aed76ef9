import os

import pytest
import torch

# Tests are sized for 2 cores; keep torch from oversubscribing when pytest-xdist runs two workers.
THREADS = max(1, min(2, (os.cpu_count() or 1) // 2))
torch.set_num_threads(THREADS)


@pytest.fixture(autouse=True)
def _threads():
    """Commands run in-process (the demos, `reparam bench`) set torch's thread count for the
    process: each test starts with the suite's, so one test cannot oversubscribe the next ones."""
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(THREADS)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
