"""Fixtures shared by several test modules."""

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module whose networks and tensors are tiny: a second thread only spins and
    synchronises (measured: 4x more CPU time in the chart tests, the flow training tests ~20x slower on a busy
    2-core machine). Use with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
