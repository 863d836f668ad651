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

A callable with the same signature may be given instead of a name.
"""

from __future__ import annotations

import numpy as np


def uniform01(rng, out_features, in_features):
    """U[0, 1) for both, like Julia's ``rand`` in the seed post."""
    return rng.random((out_features, in_features)), rng.random(out_features)


def kaiming_uniform(rng, out_features, in_features):
    """He uniform: U(±√(6/in)) for W (ReLU gain √2), zero bias."""
    bound = np.sqrt(6.0 / in_features)
    return rng.uniform(-bound, bound, (out_features, in_features)), np.zeros(out_features)


def kaiming_normal(rng, out_features, in_features):
    """He normal: N(0, 2/in) for W, zero bias."""
    std = np.sqrt(2.0 / in_features)
    return rng.normal(0.0, std, (out_features, in_features)), np.zeros(out_features)


def glorot_uniform(rng, out_features, in_features):
    """Glorot/Xavier uniform: U(±√(6/(in+out))) for W, zero bias."""
    bound = np.sqrt(6.0 / (in_features + out_features))
    return rng.uniform(-bound, bound, (out_features, in_features)), np.zeros(out_features)


def glorot_normal(rng, out_features, in_features):
    """Glorot/Xavier normal: N(0, 2/(in+out)) for W, zero bias."""
    std = np.sqrt(2.0 / (in_features + out_features))
    return rng.normal(0.0, std, (out_features, in_features)), np.zeros(out_features)


def torch_default(rng, out_features, in_features):
    """``torch.nn.Linear``'s default: U(±1/√in) for W and b."""
    # nn.Linear: kaiming_uniform_(a=√5) gives U(±1/√fan_in); the bias uses the same bound.
    bound = 1.0 / np.sqrt(in_features)
    weight = rng.uniform(-bound, bound, (out_features, in_features))
    return weight, rng.uniform(-bound, bound, out_features)


def zeros(rng, out_features, in_features):
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


def get(init):
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
