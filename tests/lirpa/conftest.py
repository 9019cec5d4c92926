"""Fixtures for the auto_LiRPA plugin's tests."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The nets here are tiny, so intra-op threads buy nothing; on a busy shared machine their
    barriers cost minutes (auto_LiRPA's tanh relaxation table alone is ~600 ops over 50 000 points)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
