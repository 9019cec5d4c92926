"""Fixtures for the liplt plugin's tests."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Float64 products of small nets: intra-op threads buy nothing, and on a busy shared machine
    their barriers cost far more than the work (an eigvalsh of 512×512 goes from 0.05 s to 7 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
