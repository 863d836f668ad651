"""Weight initialisers.

Each initialiser takes ``(rng, out_features, in_features)`` and returns the
weight (out, in) and the bias (out,) as float64 arrays, which the layer then
casts to its dtype -- so a float32 and a float64 model built from the same
seed hold the same values, up to rounding.

========================  ==========================================  ========
name                      weight                                      bias
========================  ==========================================  ========
``"uniform01"``           U[0, 1), Julia's ``rand`` in the seed post  U[0, 1)
``"kaiming_uniform"``     U(±√(6 / in))  (He, ReLU gain √2)           zeros
``"kaiming_normal"``      N(0, 2 / in)                                zeros
``"glorot_uniform"``      U(±√(6 / (in + out)))  (Xavier)             zeros
``"glorot_normal"``       N(0, 2 / (in + out))                        zeros
``"torch"``               U(±1/√in), ``torch.nn.Linear``'s default    U(±1/√in)
``"zeros"``               0                                           0
========================  ==========================================  ========

A callable with the same signature may be given instead of a name.  What it
returns is checked as :meth:`fastlin.Linear.from_weights` checks weights:
real numbers of the right shapes, finite, and within the layer dtype's range
(1e39 would become Inf in float32); a refused result builds nothing.  With
``bias=False`` its bias is ignored and may be None.
"""

from __future__ import annotations

import numpy as np

from . import _validate
from ._typing import FloatArray, InitFn


def uniform01(rng: np.random.Generator, out_features: int, in_features: int) -> tuple[FloatArray, FloatArray]:
    """U[0, 1) for both, like Julia's ``rand`` in the seed post."""
    return rng.random((out_features, in_features)), rng.random(out_features)


def kaiming_uniform(rng: np.random.Generator, out_features: int, in_features: int) -> tuple[FloatArray, FloatArray]:
    """He uniform: U(±√(6/in)) for W (ReLU gain √2), zero bias."""
    bound = np.sqrt(6.0 / in_features)
    return rng.uniform(-bound, bound, (out_features, in_features)), np.zeros(out_features)


def kaiming_normal(rng: np.random.Generator, out_features: int, in_features: int) -> tuple[FloatArray, FloatArray]:
    """He normal: N(0, 2/in) for W, zero bias."""
    std = np.sqrt(2.0 / in_features)
    return rng.normal(0.0, std, (out_features, in_features)), np.zeros(out_features)


def glorot_uniform(rng: np.random.Generator, out_features: int, in_features: int) -> tuple[FloatArray, FloatArray]:
    """Glorot/Xavier uniform: U(±√(6/(in+out))) for W, zero bias."""
    bound = np.sqrt(6.0 / (in_features + out_features))
    return rng.uniform(-bound, bound, (out_features, in_features)), np.zeros(out_features)


def glorot_normal(rng: np.random.Generator, out_features: int, in_features: int) -> tuple[FloatArray, FloatArray]:
    """Glorot/Xavier normal: N(0, 2/(in+out)) for W, zero bias."""
    std = np.sqrt(2.0 / (in_features + out_features))
    return rng.normal(0.0, std, (out_features, in_features)), np.zeros(out_features)


def torch_default(rng: np.random.Generator, out_features: int, in_features: int) -> tuple[FloatArray, FloatArray]:
    """``torch.nn.Linear``'s default: U(±1/√in) for W and b."""
    # nn.Linear: kaiming_uniform_(a=√5) gives U(±1/√fan_in); the bias uses the same bound.
    bound = 1.0 / np.sqrt(in_features)
    weight = rng.uniform(-bound, bound, (out_features, in_features))
    return weight, rng.uniform(-bound, bound, out_features)


def zeros(rng: np.random.Generator, out_features: int, in_features: int) -> tuple[FloatArray, FloatArray]:
    """All zeros."""
    return np.zeros((out_features, in_features)), np.zeros(out_features)


INITIALIZERS = {
    "uniform01": uniform01,
    "kaiming_uniform": kaiming_uniform,
    "kaiming_normal": kaiming_normal,
    "glorot_uniform": glorot_uniform,
    "glorot_normal": glorot_normal,
    "torch": torch_default,
    "zeros": zeros,
}


def get(init: str | InitFn) -> InitFn:
    """The initialiser called ``init`` (see the table above), or ``init``
    itself when it is a callable ``(rng, out, in) -> (W, b)``; ValueError
    for an unknown name."""
    if callable(init):
        return init
    try:
        return INITIALIZERS[init]
    except (KeyError, TypeError):
        names = ", ".join(repr(n) for n in INITIALIZERS)
        raise ValueError(f"unknown init {init!r}; expected one of {names} or a callable") from None


def checked(result, init, out_features, in_features, dtype, bias):
    """An initialiser's result -> ``(W, b)`` in ``dtype``, or raise.

    ``b`` is None when ``bias`` is False.  Raises TypeError/ValueError naming
    the initialiser for anything :meth:`fastlin.Linear.from_weights` would
    refuse (wrong shapes, NaN/Inf, values that overflow ``dtype``, masked
    entries, tensors that require grad, non-real dtypes).
    """
    label = init if isinstance(init, str) else getattr(init, "__qualname__", None) or repr(init)
    if not (isinstance(result, (tuple, list)) and len(result) == 2):
        raise TypeError(f"init {label} must return a pair (weight, bias), got {type(result).__name__}")
    W, b = result
    wname, bname = f"the weight returned by init {label}", f"the bias returned by init {label}"
    W = _validate.host_numpy(W, wname)
    if bias and b is None:
        raise ValueError(f"init {label} returned no bias (None) for a layer with bias=True")
    b = None if b is None else _validate.host_numpy(b, bname)
    if W.shape != (out_features, in_features) or (b is not None and b.shape != (out_features,)):
        raise ValueError(
            f"init {label} returned shapes {W.shape} and {None if b is None else b.shape}; "
            f"expected ({out_features}, {in_features}) and ({out_features},)"
        )
    W = _validate.finite_param(W, wname, dtype)
    return W, (_validate.finite_param(b, bname, dtype) if bias else None)
