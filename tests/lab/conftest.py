"""Lab tests run under ``torch.use_deterministic_algorithms(True)``, as the notebooks do, on one thread
(the lab's tensors are tiny; extra threads only spin on a shared machine)."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _deterministic_single_thread():
    previous = torch.are_deterministic_algorithms_enabled()
    threads = torch.get_num_threads()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    yield
    torch.use_deterministic_algorithms(previous)
    torch.set_num_threads(threads)
