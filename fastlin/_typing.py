"""Type aliases of the public API (for editors and type checkers only).

``Data``
    What fastlin accepts as X, T or dY: anything numpy can turn into an
    array (lists, numpy arrays, torch CPU tensors), and GPU arrays (numba
    device arrays, CuPy arrays, torch CUDA tensors), which type checkers
    see as ``Any`` unless their libraries ship type information.
``FloatArray``
    A numpy array of float32 or float64.
``Array``
    What a layer returns: a numpy array on the CPU, a numba device array on
    CUDA.
``Reduction``, ``Device``, ``Seed``, ``StrPath``, ``InitFn``, ``Callback``
    The accepted values of ``reduction=``, ``device=``, ``seed=``, a file
    path, a callable ``init=`` and ``fit``'s ``callback=``.

Nothing here is imported at run time by the rest of fastlin except these
names; numba.cuda is imported only by type checkers.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

import numpy as np
from numpy.typing import ArrayLike, DTypeLike, NDArray

FloatArray: TypeAlias = NDArray[np.floating[Any]]
Data = ArrayLike
Reduction = Literal["mean", "sum"]
Device = Literal["cpu", "cuda", "auto"]
Seed = int | np.random.Generator | None
StrPath = str | os.PathLike[str]
# An initialiser: (rng, out_features, in_features) -> (W, b).
InitFn = Callable[[np.random.Generator, int, int], "tuple[ArrayLike, ArrayLike]"]
# fit's callback(step, loss): return True to stop early.
Callback = Callable[[int, float], "bool | None"]

if TYPE_CHECKING:
    from numba.cuda.cudadrv.devicearray import DeviceNDArray

    from .layer import Linear

    Array: TypeAlias = FloatArray | DeviceNDArray
else:
    Array = FloatArray
    # For annotations in modules that fastlin.layer imports (fastlin.optim):
    # the class itself cannot be imported there at run time.
    Linear = Any

__all__ = [
    "Array",
    "ArrayLike",
    "Callback",
    "DTypeLike",
    "Data",
    "Device",
    "FloatArray",
    "InitFn",
    "Linear",
    "NDArray",
    "Reduction",
    "Seed",
    "StrPath",
]
