"""Shared pytest fixtures."""

import pytest
import torch


@pytest.fixture
def one_torch_thread():
    """Run a test with one intra-op thread, then restore the count.

    Schedule planning and plan metrics are many tiny tensor ops; on a loaded 2-core machine (CI) OpenMP threads
    spin-wait for each other and make them up to 10x slower. Opt in per module with
    ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
