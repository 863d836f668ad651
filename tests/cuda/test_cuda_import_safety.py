"""``import fastlin`` needs no numba-cuda, no driver and no GPU, and asking
for CUDA there is a clear DeviceError.  Runs everywhere (NEEDS_CUDA is
False): it matters most on machines without CUDA."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

NEEDS_CUDA = False

# numba-cuda made unimportable at the import-system level (both the
# ``numba.cuda`` redirect and the ``numba_cuda`` package), as on a machine
# where it was never installed.
BLOCK = textwrap.dedent(
    """
    import sys
    class _NoNumbaCuda:
        def find_spec(self, name, path=None, target=None):
            if name == "numba_cuda" or name.startswith(("numba_cuda.", "numba.cuda")):
                raise ImportError(f"No module named {name!r} (blocked by the test)")
            return None
    sys.meta_path.insert(0, _NoNumbaCuda())
    """
)

CHECKS = textwrap.dedent(
    """
    import numpy as np
    import fastlin
    assert not fastlin.cuda_available()
    reason = fastlin._dispatch.cuda_unavailable_reason()
    assert "numba-cuda is not importable" in reason and "fastlin[cuda]" in reason, reason
    for make in (lambda: fastlin.Linear(3, 2, device="cuda"),
                 lambda: fastlin.Linear.from_weights(np.ones((2, 3)), device="cuda"),
                 lambda: fastlin.Linear(3, 2).to("cuda")):
        try:
            make()
        except fastlin.DeviceError as exc:
            assert isinstance(exc, RuntimeError) and "numba-cuda" in str(exc)
        else:
            raise AssertionError("device='cuda' did not raise")

    class FakeGpuArray:  # a GPU array handed to mse_loss on this machine
        __cuda_array_interface__ = {"shape": (2,), "typestr": "<f4", "data": (0, False), "version": 3}
        dtype = np.dtype(np.float32)
    try:
        fastlin.mse_loss(FakeGpuArray(), FakeGpuArray())
    except fastlin.DeviceError as exc:
        assert "numba-cuda" in str(exc)
    else:
        raise AssertionError("mse_loss on a GPU array did not raise DeviceError")

    model = fastlin.Linear(3, 2, device="auto", seed=0)
    assert model.device == "cpu"
    history = model.fit(np.ones((4, 3)), np.zeros((4, 2)), steps=5, lr=0.1)
    assert history.loss[-1] < history.loss[0]
    assert not any(m == "numba_cuda" or m.startswith(("numba_cuda.", "numba.cuda")) for m in sys.modules)
    print("ok")
    """
)


def test_fastlin_imports_and_explains_without_numba_cuda():
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    proc = subprocess.run([sys.executable, "-c", BLOCK + CHECKS], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().endswith("ok")
