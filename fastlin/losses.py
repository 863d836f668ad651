"""Loss functions on arrays."""

from __future__ import annotations

import math

from . import _dispatch, _validate
from ._typing import Data, Reduction


def mse_loss(pred: Data, target: Data, reduction: Reduction = "mean", *, check_finite: bool = True) -> float:
    """Mean squared error between two arrays of the same shape.

    Parameters
    ----------
    pred, target : array-like, same shape, 1-D or 2-D
        Float32 data (in either byte order) stays float32 (sums are float64
        either way).  Refused as for :meth:`fastlin.Linear.loss`: masked
        arrays with masked entries, torch tensors that require grad (pass
        ``.detach()``), missing values (NA), non-real dtypes.
    reduction : {"mean", "sum"}
        ``"mean"`` divides the sum of squares by the number of elements.

    Returns
    -------
    float
    """
    reduction_sum = _validate.check_reduction(reduction)
    for name, a in (("pred", pred), ("target", target)):
        _validate.check_not_requires_grad(a, name)  # CPU or GPU tensor: say .detach()
    ops = _dispatch.backend("cuda" if _dispatch.is_device_array(pred) else "cpu")
    dtype = _validate.natural_float_dtype(pred)
    pred = ops.as_input(pred, "pred", dtype)
    target = ops.as_input(target, "target", dtype)
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have the same shape, got {pred.shape} and {target.shape}")
    if pred.ndim not in (1, 2):
        raise ValueError(f"pred must be 1-D or 2-D, got {pred.ndim}-D")
    if pred.size == 0:
        raise ValueError("pred is empty; the loss of no samples is undefined")
    shape2d = (pred.shape[0], 1) if pred.ndim == 1 else pred.shape
    sse = ops.sse(pred.reshape(shape2d), target.reshape(shape2d))
    if check_finite and not math.isfinite(sse):
        for name, a in (("pred", pred), ("target", target)):
            if not ops.all_finite(a):
                raise ValueError(_validate.nonfinite_message(name))
    return sse if reduction_sum else sse / pred.size
