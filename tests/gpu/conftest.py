"""GPU tests (every module here is marked ``gpu``: skipped without CUDA, see tests/conftest.py).

``MOPD_GPU_TEST_DEVICE=cpu`` runs them on the CPU instead: a dry run of the same code paths that checks
the tests themselves on a machine without a GPU (the CUDA-only assertions are skipped then).
"""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def device() -> str:
    return os.environ.get("MOPD_GPU_TEST_DEVICE", "cuda")
