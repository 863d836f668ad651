"""Every CUDA kernel compiles to PTX for an H100/H200 (sm_90), both dtypes,
without a GPU: proof that code tested in the simulator also types and
lowers for real hardware.  Needs numba-cuda's CUDA toolkit wheels
(``pip install 'fastlin[cuda]'``: NVVM and NVRTC); skipped, with the reason,
without them.  Runs in a subprocess because the simulator replaces
``numba.cuda`` in this one.  (NEEDS_CUDA is False: no GPU needed.)"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

NEEDS_CUDA = False
SCRIPT = Path(__file__).with_name("ptx_check.py")
ROOT = Path(__file__).resolve().parents[2]


def test_every_kernel_compiles_to_ptx_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, str(SCRIPT), "9.0"], capture_output=True, text=True, env=env, timeout=600)
    if proc.returncode == 3:
        pytest.skip(proc.stdout.strip().splitlines()[-1])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("ok")]
    assert len(lines) == 2 * 18, proc.stdout
