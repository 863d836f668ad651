"""Every tuning knob of the CUDA backend, in one place.

Block size
    ``TPB`` threads per 1-D block and ``TS``×``TS`` per 2-D tile are fixed at
    import from ``FASTLIN_CUDA_TPB`` (default 256, a power of two up to
    ``TPB_MAX`` = 256) and ``FASTLIN_CUDA_TILE`` (default 16, a power of two
    up to ``TS_MAX`` = 16; larger values raise ValueError at import, as they
    would not fit 48 KB of static shared memory or an SM's registers): kernels size their
    shared memory with them, so they are compile-time constants.  Tests set
    small values so that several blocks and the cross-block reduction run on
    tiny arrays.

Caching
    Kernels are cached on disk (numba's ``cache=True``, switched as for the
    CPU kernels by :mod:`fastlin._jit`) only with the default block sizes: a
    cache entry is keyed by the source file, not by the values of ``TPB`` and
    ``TS`` baked into it, so other geometries always compile afresh.  (Nor
    by the modules a kernel's file imports -- this one, :mod:`.cuda_device`,
    :mod:`.cuda_loads`, :mod:`.permute`, :mod:`.rules`, :mod:`.counters`:
    after editing those, clear the cache.)

Launch planning
    The knobs at the bottom are read by :mod:`.cuda_ops` at every call, so
    tests may patch them here (``monkeypatch.setattr(cuda_config, ...)``).
"""

from __future__ import annotations

import os

from numba.cuda import config as _cuda_config

from .._jit import CACHE as _CACHE_ALLOWED


def _env_pow2(name, default, largest):
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from None
    if not 1 <= value <= largest or value & (value - 1):
        raise ValueError(
            f"{name} must be a power of two between 1 and {largest}, got {value} "
            "(larger blocks exceed 48 KB of static shared memory or the registers of an SM)"
        )
    return value


# Compile-time launch geometry (see "Block size" above).  The caps are what
# compiles for sm_90 within 48 KB of static shared memory per block and the
# register budget of a block (65,536 registers per SM): bench/gpu_static.py
# measures both and tests/cuda/test_gpu_static.py checks them at the caps.
TPB_MAX = 256
TS_MAX = 16
TPB = _env_pow2("FASTLIN_CUDA_TPB", 256, TPB_MAX)
TS = _env_pow2("FASTLIN_CUDA_TILE", 16, TS_MAX)
TS2 = TS * TS
# Row-streaming kernels (the "rows" plan): at most min(OMAX, TPB) outputs and at most
# ACC gradient elements per thread (float64 register accumulators), so that
# W (E <= ACC·TPB elements with its padding) fits the shared WS_SIZE.  A
# tile of at most TILE_ROWS rows (the float32 run length, as the CPU's
# FLUSH_ROWS) with rows padded to D + 1 lives in XS_SIZE.  At TPB = 256 the
# shared memory is 23.5 KB for float32 data, 44.5 KB for float64.  Larger
# layers take the "tiled" plan.
OMAX = 32
ACC = 8
TILE_ROWS = 64
XS_SIZE = 12 * TPB
WS_SIZE = ACC * TPB
# The streaming kernels of the rows plan promise ptxas TPB-thread blocks and 4
# resident blocks per SM, which caps them at 64 registers: 50% occupancy
# (bench/gpu_static.py checks that they do not spill).  numba's simulator
# takes no launch bounds.
ROWS_BOUNDS = {} if _cuda_config.ENABLE_CUDASIM else {"launch_bounds": (TPB, 4)}
# _finish_step: at most this many threads add one element's partials.
TEAM_MAX = min(32, TPB)
TILE_SIZE = TS * (TS + 1)  # one padded TS×TS tile; the pad avoids bank conflicts
# The tiled plan's two products (residual, grad_partials) are register
# blocked: each of the TS×TS threads of a block forms RB×RB outputs, so a block
# covers a BT×BT tile of outputs from TS-deep shared slices (TS × (BT + 1)
# elements each, BLOCK_SLICE).  Products run in the data's dtype, in runs of
# at most TILE_ROWS terms, flushed into float64 (see cuda_tiled, "Accuracy").
RB = 4
BT = TS * RB
BLOCK_SLICE = TS * (BT + 1)
# ptxas is promised TS×TS-thread blocks and 2 resident blocks per SM for
# those two kernels: at most 128 registers, which both dtypes fit without
# spilling (float32: 91 and 112; bench/gpu_static.py checks it).  Three
# blocks (80 registers) spill grad_partials.
TILED_BOUNDS = {} if _cuda_config.ENABLE_CUDASIM else {"launch_bounds": (TS * TS, 2)}
CACHE = bool(_CACHE_ALLOWED and TPB == 256 and TS == 16)

# The rows plan splits a batch into at most MAX_CHUNKS blocks of at least TPB rows:
# 1024 is about two waves of the 4 resident blocks on each of an H200's 132
# SMs, so that every SM has loads in flight while other blocks compute.  It
# depends on the shape only, so results are reproducible.
MAX_CHUNKS = 1024
# A whole fit runs in one launch of one block while a step has at most this
# many multiply-adds: below it the launch cost (~20 µs from Python) exceeds
# the step's work.  The benchmarks (bench/) measure the real crossover.
ONE_LAUNCH_WORK = 1 << 18
# The tiled plan: gradient splits over rows are added in a fixed order; enough
# splits to fill the GPU, each at least MIN_SPLIT_ROWS rows.
TARGET_BLOCKS = 512
MIN_SPLIT_ROWS = 256
# Tests may force the tiled plan for every shape (FORCE_TILED), and
# whether a fit runs in one launch (True, False; None: automatic).
FORCE_TILED = False
FORCE_ONE_LAUNCH = None


def _env_cupy():
    raw = os.environ.get("FASTLIN_CUDA_CUPY", "").strip().lower()
    if raw in ("", "auto"):
        return None
    if raw in ("0", "off", "false", "no"):
        return False
    if raw in ("1", "on", "true", "yes"):
        return True
    raise ValueError(f"FASTLIN_CUDA_CUPY must be 0, 1 or auto, got {raw!r}")


# The tiled plan's two products through cuBLAS (CuPy's matmul), the
# ``cublas`` extra (see cuda_cublas): None: whenever ``cupy`` imports (never
# in the simulator, where CuPy cannot run); False: never (the numba tiles);
# True: always (an ImportError at the first fit without CuPy).  Set from
# FASTLIN_CUDA_CUPY (0, 1 or auto) at import; tests patch it.
USE_CUPY = _env_cupy()
