"""Compile every CUDA kernel of fastlin to PTX, without a GPU.

Run as a script (``python tests/cuda/ptx_check.py [cc]``) in a process where
``NUMBA_ENABLE_CUDASIM`` is NOT set; it needs numba-cuda with its CUDA
toolkit wheels (NVVM, NVRTC), i.e. ``pip install 'fastlin[cuda]'``, but no
driver and no GPU.  Prints one line per kernel and dtype, exits 1 on any
failure, and 3 (with the reason) when numba-cuda or its toolkit is missing.  ``tests/cuda/test_cuda_compile.py`` runs it in a subprocess.

numba-cuda compiles the device functions a kernel calls for the *current*
device's compute capability, which needs a driver.  With no GPU we pin that
query to the target capability; nothing else of the device is used.
"""

from __future__ import annotations

import sys
import types


def main(cc=(9, 0)):
    import importlib.util

    try:
        missing = importlib.util.find_spec("numba_cuda") is None
    except ImportError:
        missing = True
    if missing:
        # numba's own deprecated CUDA target may import (and find a system
        # toolkit), but fastlin's kernels are written for numba-cuda.
        print("numba-cuda is not installed (numba's built-in CUDA target is not supported)")
        return 3
    try:
        import numba.cuda
        import numba.cuda.dispatcher as dispatcher
    except ImportError as exc:
        print(f"numba-cuda is not installed ({exc})")
        return 3
    if numba.cuda.config.ENABLE_CUDASIM:
        print("NUMBA_ENABLE_CUDASIM is set: the simulator cannot compile PTX", file=sys.stderr)
        return 2
    dispatcher.get_current_device = lambda: types.SimpleNamespace(compute_capability=cc)
    try:  # a trivial kernel first: is the toolkit (NVVM, NVRTC) there at all?
        numba.cuda.compile_ptx(lambda a: None, "void(float64[::1])", cc=cc)
    except Exception as exc:
        print(f"no CUDA toolkit to compile with: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}")
        return 3
    from fastlin.backends import cuda as kernels

    failures = 0
    for dtype in ("float32", "float64"):
        sigs = kernels.launch_signatures(dtype)
        for name, args in sigs.items():
            sig = numba.types.void(*args)
            try:
                ptx, _ = numba.cuda.compile_ptx(getattr(kernels, name).py_func, sig, cc=cc)
            except Exception as exc:
                failures += 1
                print(f"FAIL {name} {dtype}: {type(exc).__name__}: {exc}")
                continue
            # A float32 kernel must not have picked up float64 *storage*; the
            # float64 arithmetic is deliberate (see fastlin.backends.cuda_rows).
            print(f"ok   {name:14s} {dtype}  sm_{cc[0]}{cc[1]}  {len(ptx.splitlines())} PTX lines")
    return 1 if failures else 0


if __name__ == "__main__":
    cc = tuple(int(p) for p in sys.argv[1].split(".")) if len(sys.argv) > 1 else (9, 0)
    sys.exit(main(cc))
