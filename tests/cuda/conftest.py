"""Test set-up for the CUDA backend.

These tests run on a real GPU or, with ``NUMBA_ENABLE_CUDASIM=1`` set in the
environment before Python starts, in numba's CUDA simulator (tiny shapes:
the simulator runs every GPU thread as a Python thread).  Anywhere else the
whole directory is skipped, with the reason, except modules that set
``NEEDS_CUDA = False`` (import safety, the PTX compile check, and the CPU
half of test_conformance.py, whose ``device`` fixture gives "cpu" and "cuda").

Small thread blocks: the kernels size shared memory with the block size, so
it is fixed when ``fastlin.backends.cuda_config`` is first imported.  We set it
here, before that, so that arrays of a few dozen rows span several blocks
and the cross-block reductions really run.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("FASTLIN_CUDA_TPB", "16")
os.environ.setdefault("FASTLIN_CUDA_TILE", "4")

import pytest  # noqa: E402 (after the environment is set)

from fastlin import _dispatch  # noqa: E402

HERE = Path(__file__).resolve().parent
UNAVAILABLE = _dispatch.cuda_unavailable_reason()

if _dispatch.cuda_simulated():
    # The simulator's block manager busy-polls its thread's barriers while
    # holding the GIL; with Python's default 5 ms switch interval every
    # syncthreads() costs milliseconds.  A short interval makes this suite
    # about 2.5x faster (and changes nothing the kernels compute).
    sys.setswitchinterval(2e-4)
    # Uninitialised device, shared and local memory reads as NaN / -1, so a
    # kernel that reads before it writes fails every run, not one in many.
    from tests.support import sim_poison

    sim_poison.install()


def _skip_reason():
    """Why a test that needs CUDA is skipped here (one text for all, so they fold into one line)."""
    return f"tests/cuda need a GPU, or NUMBA_ENABLE_CUDASIM=1 set before Python starts: {UNAVAILABLE}"


def pytest_runtest_setup(item):
    # Without CUDA, every test here that needs it is skipped by this one line,
    # so pytest's summary folds them into a single "SKIPPED [n] ...conftest.py"
    # line with one reason (a skip marker per test would list each test's
    # location, with the same long reason, dozens of times).
    if UNAVAILABLE is None:
        return
    path = Path(str(item.fspath)).resolve()
    needs_cuda = getattr(item.module, "NEEDS_CUDA", True)
    # The cuda half of a test over both devices (the ``device`` fixture) needs it too.
    on_cuda = getattr(getattr(item, "callspec", None), "params", {}).get("device") == "cuda"
    if HERE in path.parents and (needs_cuda or on_cuda):
        pytest.skip(_skip_reason())


@pytest.fixture(scope="session")
def kernels():
    from fastlin.backends import cuda

    return cuda


@pytest.fixture(scope="session")
def cops():
    from fastlin.backends import cuda_ops

    return cuda_ops


@pytest.fixture(scope="session")
def simulated():
    return _dispatch.cuda_simulated()


@pytest.fixture(params=["auto", "tiled"])
def path(request, monkeypatch):
    """Run a test with the automatic launch plan (the row-streaming kernels,
    for the small layers used here) and with the TS×TS tiled plan forced."""
    from fastlin.backends import cuda_config

    monkeypatch.setattr(cuda_config, "FORCE_TILED", request.param == "tiled")
    return request.param


@pytest.fixture(params=["one-launch", "per-step"])
def launches(request, monkeypatch):
    """Run a fit in one launch of one block, and as one launch per step."""
    from fastlin.backends import cuda_config

    monkeypatch.setattr(cuda_config, "FORCE_ONE_LAUNCH", request.param == "one-launch")
    return request.param


@pytest.fixture(params=["cpu", "cuda"])
def device(request):
    """The device a test of the public API runs on (test_conformance.py):
    ``"cpu"`` always; ``"cuda"`` on a GPU or in the simulator, else skipped
    with the reason (one reason for every such test, so pytest folds them into
    one line).  Tests that take it set ``NEEDS_CUDA = False`` so that their
    CPU half runs everywhere."""
    if request.param == "cuda" and UNAVAILABLE is not None:  # already skipped above, for tests in tests/cuda
        pytest.skip(_skip_reason())
    return request.param
