"""Picks the backend for a device name ("cpu", "cuda", "auto") and nothing else.

numba-cuda is imported here only when a GPU is asked about, never at
``import fastlin`` time, so fastlin imports on machines with no CUDA at all.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
from typing import TYPE_CHECKING, cast

from ._errors import DeviceError

if TYPE_CHECKING:
    from .backends.protocol import Ops

DEVICES = ("cpu", "cuda", "auto")

# device="auto" sends a model to the GPU when it has at least this many
# parameters.  Models are sized before data is seen, so this is a proxy; the
# benchmarks (bench/RESULTS.md) measure the real crossover in rows.
AUTO_CUDA_MIN_PARAMS = 1 << 16

_INSTALL_HINT = "install it with: pip install 'fastlin[cuda]'"


@functools.lru_cache(maxsize=1)
def cuda_unavailable_reason() -> str | None:
    """Why fastlin cannot use CUDA here, or None when it can.

    ``fastlin.cuda_unavailable_reason()`` is None when CUDA kernels can run
    (a GPU, or numba's simulator under ``NUMBA_ENABLE_CUDASIM=1``), else one
    sentence saying why not: numba-cuda missing (with the install command),
    no driver or device, or no NVVM to compile kernels with.  It is the
    reason a ``device="cuda"`` model's :class:`fastlin.DeviceError` gives.
    The answer is computed once per process.

    >>> import fastlin
    >>> fastlin.cuda_available() == (fastlin.cuda_unavailable_reason() is None)
    True
    """
    try:
        missing = importlib.util.find_spec("numba_cuda") is None
    except (ImportError, ValueError) as exc:
        return f"numba-cuda is not importable ({exc}); {_INSTALL_HINT}"
    if missing:
        # numba's own, deprecated CUDA target may still import, but fastlin's
        # kernels are written for (and tested with) the numba-cuda package.
        return f"numba-cuda is not importable (not installed; numba's built-in CUDA target is not supported); {_INSTALL_HINT}"
    try:
        from numba import cuda
        from numba.cuda import config
    except Exception as exc:  # ImportError, or a broken numba-cuda install
        return f"numba-cuda is not importable ({exc}); {_INSTALL_HINT}"
    if config.ENABLE_CUDASIM:
        return None
    try:
        if not cuda.is_available():
            # is_available() swallows the cause; asking the driver raises it.
            cuda.cudadrv.driver.driver.get_device_count()
            return "no usable CUDA GPU (numba.cuda.is_available() is False: no NVIDIA driver or device found)"
    except Exception as exc:
        return f"no usable CUDA GPU: {' '.join(str(exc).split()).rstrip(' :')}"
    try:
        from numba.cuda.cudadrv import nvvm

        if not nvvm.is_available():
            return f"a GPU is present but NVVM (the CUDA compiler library) was not found; {_INSTALL_HINT}"
    except Exception as exc:
        return f"a GPU is present but NVVM cannot be loaded ({exc}); {_INSTALL_HINT}"
    return None


def cuda_available() -> bool:
    """True when fastlin can run on an NVIDIA GPU here (or under the CUDA simulator).

    When it is False, :func:`fastlin.cuda_unavailable_reason` says why.
    """
    return cuda_unavailable_reason() is None


def cuda_simulated() -> bool:
    """True when numba's CUDA simulator stands in for a GPU (``NUMBA_ENABLE_CUDASIM=1``)."""
    if cuda_unavailable_reason() is not None:
        return False
    from numba.cuda import config

    return bool(config.ENABLE_CUDASIM)


def resolve(device: object, n_params: int = 0) -> str:
    """Turn a device name into "cpu" or "cuda", or raise.

    ``"auto"`` picks CUDA when a real GPU is usable and the model has at
    least ``AUTO_CUDA_MIN_PARAMS`` parameters, else the CPU (never the
    simulator, which is for testing and thousands of times slower).
    ``"cuda"`` without a usable GPU raises :class:`fastlin.DeviceError`,
    never a silent fallback.
    """
    if not isinstance(device, str) or device not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(map(repr, DEVICES))}, got {device!r}")
    if device == "auto":
        if n_params >= AUTO_CUDA_MIN_PARAMS and cuda_available() and not cuda_simulated():
            return "cuda"
        return "cpu"
    if device == "cuda":
        reason = cuda_unavailable_reason()
        if reason is not None:
            raise DeviceError(f"device='cuda' was requested but CUDA cannot be used: {reason}")
    return device


_DLPACK_CUDA_DEVICES = (2, 13)  # kDLCUDA, kDLCUDAManaged


def is_device_array(a: object) -> bool:
    """True for arrays that live on a GPU: numba device arrays (the
    simulator's too), anything with ``__cuda_array_interface__`` (CuPy,
    PyTorch CUDA tensors) and DLPack arrays on a CUDA device."""
    if getattr(a, "__cuda_ndarray__", False):
        return True
    try:
        if hasattr(a, "__cuda_array_interface__"):
            return True
    except Exception:
        # It has the interface but refuses to export it (a torch tensor that
        # requires grad); the CUDA backend then says why.
        return True
    dlpack_device = getattr(a, "__dlpack_device__", None)
    if dlpack_device is None or type(a).__module__ == "numpy":
        return False
    try:
        return int(dlpack_device()[0]) in _DLPACK_CUDA_DEVICES
    except Exception:
        return False


_BACKENDS = {"cpu": "fastlin.backends.cpu_ops", "cuda": "fastlin.backends.cuda_ops"}


def backend(device: str) -> Ops:
    """The ops module of a resolved device ("cpu" or "cuda"), which provides
    :class:`fastlin.backends.protocol.Ops` (``tests/test_contract.py``).

    Asking for "cuda" where it cannot run raises :class:`fastlin.DeviceError`
    (e.g. ``mse_loss`` given a GPU array on a machine without numba-cuda).
    """
    if device == "cuda":
        resolve("cuda")
    return cast("Ops", importlib.import_module(_BACKENDS[device]))
