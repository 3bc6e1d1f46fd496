import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Tiny float64 kernels: threads only contend (10x slower on a loaded 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
