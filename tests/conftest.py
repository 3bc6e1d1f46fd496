import os

import pytest
import torch

# MOPD_GPU_TEST_DEVICE=cpu runs the `gpu` tests on the CPU: a dry run of their code paths (tests/gpu).
GPU_DRY_RUN = os.environ.get("MOPD_GPU_TEST_DEVICE") == "cpu"


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available() or GPU_DRY_RUN:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
