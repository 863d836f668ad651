"""Picks the backend for a device name ("cpu", "cuda", "auto") and nothing else.

numba-cuda is imported here only when a GPU is asked about, never at
``import fastlin`` time, so fastlin imports on machines with no CUDA at all.
"""

from __future__ import annotations

import functools
import importlib

from ._errors import DeviceError

DEVICES = ("cpu", "cuda", "auto")

# device="auto" sends a model to the GPU when it has at least this many
# parameters.  Models are sized before data is seen, so this is a proxy; the
# benchmarks (bench/RESULTS.md) measure the real crossover in rows.
AUTO_CUDA_MIN_PARAMS = 1 << 16


@functools.lru_cache(maxsize=1)
def cuda_unavailable_reason():
    """None when CUDA kernels can run here, else a sentence saying why not."""
    try:
        from numba import cuda
    except Exception as exc:  # ImportError, or a broken numba-cuda install
        return f"numba-cuda is not importable ({exc}); install it with: pip install 'fastlin[cuda]'"
    try:
        if cuda.is_available():
            return None
        # is_available() swallows the cause; detect() prints it, so ask the driver.
        cuda.cudadrv.driver.driver.get_device_count()
    except Exception as exc:
        return f"no usable CUDA GPU: {exc}"
    return "no usable CUDA GPU (numba.cuda.is_available() is False: no NVIDIA driver or device found)"


def cuda_available():
    """True when fastlin can run on an NVIDIA GPU here (or under the CUDA simulator)."""
    return cuda_unavailable_reason() is None


def resolve(device, n_params=0):
    """Turn a device name into "cpu" or "cuda", or raise.

    ``"auto"`` picks CUDA when a GPU is usable and the model has at least
    ``AUTO_CUDA_MIN_PARAMS`` parameters, else the CPU.  ``"cuda"`` without a
    usable GPU is an error, never a silent fallback.
    """
    if not isinstance(device, str) or device not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(map(repr, DEVICES))}, got {device!r}")
    if device == "auto":
        return "cuda" if n_params >= AUTO_CUDA_MIN_PARAMS and cuda_available() else "cpu"
    if device == "cuda":
        reason = cuda_unavailable_reason()
        if reason is not None:
            raise DeviceError(f"device='cuda' was requested but CUDA cannot be used: {reason}")
    return device


def is_device_array(a):
    """True for GPU arrays (numba device arrays, CuPy, torch CUDA tensors)."""
    return hasattr(a, "__cuda_array_interface__")


_BACKENDS = {"cpu": "fastlin.backends.cpu_ops", "cuda": "fastlin.backends.cuda_ops"}


def backend(device):
    """The ops module of a resolved device ("cpu" or "cuda")."""
    return importlib.import_module(_BACKENDS[device])
