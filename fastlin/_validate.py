"""Every check of user input, in one place, called at the API edge.

The functions here either return a clean value or raise a ``TypeError`` /
``ValueError`` that names the argument and what was expected.  They never
touch model state, so a call that fails here has changed nothing.

Shape checks take *shapes*, not arrays, so the CUDA backend can apply the same
rules to device arrays without copying them to the host.
"""

from __future__ import annotations

import math
import numbers
import operator

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
REDUCTIONS = ("mean", "sum")

_KIND_NAMES = {
    "c": "complex",
    "O": "object",
    "U": "string",
    "S": "bytes",
    "V": "structured/void",
    "M": "datetime",
    "m": "timedelta",
}


def float_dtype(dtype, name="dtype"):
    """Return ``dtype`` as np.float32 or np.float64, or raise."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"{name} must be float32 or float64, got {dtype!r}") from None
    if dt not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32 or float64, got {dt}")
    return dt


def natural_float_dtype(a):
    """float32 for float32 arrays (numpy, CuPy, torch, numba), float64 for anything else."""
    return np.dtype(np.float32) if str(getattr(a, "dtype", "")).endswith("float32") else np.dtype(np.float64)


def check_dtype_kind(dtype, name):
    """Accept bool, integer and float dtypes; reject complex, object, strings, ..."""
    kind = np.dtype(dtype).kind
    if kind not in "biuf":
        what = _KIND_NAMES.get(kind, str(dtype))
        raise TypeError(f"{name} must hold real numbers, got a {what} array (dtype {dtype})")


def as_host_array(a, name, dtype):
    """Convert array-likes (lists, any numeric dtype, any layout) to a
    C-contiguous numpy array of ``dtype``.  Copies only when needed."""
    if type(a) is np.ndarray and a.dtype == dtype and a.flags.c_contiguous:
        return a  # the common case, kept cheap: it is on every call's path
    if isinstance(a, np.ndarray):
        arr = a
    else:
        if hasattr(a, "__cuda_array_interface__"):
            raise TypeError(
                f"{name} is a GPU array but the model is on the CPU; "
                "move the model with model.to('cuda') or copy the array to the host"
            )
        try:
            arr = np.asarray(a)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{name} could not be read as a numeric array: {exc}") from None
    check_dtype_kind(arr.dtype, name)
    return np.asarray(arr, dtype=dtype, order="C")  # (ascontiguousarray would make 0-D 1-D)


def check_input_shape(shape, in_features, name="X"):
    """Validate X's shape: (in,) for one sample or (N, in).

    Returns ``(n_rows, single_sample)``.
    """
    if len(shape) not in (1, 2):
        raise ValueError(f"{name} must be 1-D (one sample of {in_features} features) or 2-D (N, {in_features}), got {len(shape)}-D with shape {tuple(shape)}")
    if len(shape) == 1:
        if shape[0] != in_features:
            raise ValueError(f"{name} has {shape[0]} features but the model expects in_features={in_features}")
        return 1, True
    n_rows, n_cols = shape
    if n_rows == 0:
        raise ValueError(f"{name} is empty (0 rows); at least one sample is needed")
    if n_cols != in_features:
        raise ValueError(f"{name} has {n_cols} features (columns) but the model expects in_features={in_features}")
    return n_rows, False


def target_shape(shape, n_rows, single, out_features, name="T"):
    """Validate a target / upstream-gradient shape against the input's.

    Accepts (out,) for a single sample, (N, out), and (N,) when out == 1.
    Returns the 2-D shape the kernels use.
    """
    shape = tuple(shape)
    if single:
        if shape in ((out_features,), (1, out_features)):
            return (1, out_features)
        raise ValueError(f"{name} must have shape ({out_features},) for a single sample, got {shape}")
    if len(shape) == 2:
        if shape[0] != n_rows:
            raise ValueError(f"X has {n_rows} rows but {name} has {shape[0]}; they must match")
        if shape[1] != out_features:
            raise ValueError(f"{name} has {shape[1]} columns but the model has out_features={out_features}")
        return shape
    if len(shape) == 1 and out_features == 1:
        if shape[0] != n_rows:
            raise ValueError(f"X has {n_rows} rows but {name} has {shape[0]}; they must match")
        return (n_rows, 1)
    raise ValueError(f"{name} must have shape ({n_rows}, {out_features}), got {shape}")


def check_reduction(reduction):
    """Return True for "sum", False for "mean"."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    return reduction == "sum"


def check_int(value, name, minimum=0, allow_none=False):
    """An integer >= minimum (bools are refused: ``steps=True`` is a mistake)."""
    if value is None and allow_none:
        return None
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {value!r}") from None
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_real(value, name, *, minimum=None, strict=False):
    """A finite real number, optionally >= (or > when ``strict``) ``minimum``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if minimum is not None:
        if strict and not value > minimum:
            raise ValueError(f"{name} must be > {minimum}, got {value}")
        if not strict and not value >= minimum:
            raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_bool(value, name):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def check_features(value, name):
    return check_int(value, name, minimum=1)


def check_seed(seed):
    """None, a non-negative int, or a numpy Generator."""
    if seed is None or isinstance(seed, np.random.Generator):
        return seed
    return check_int(seed, "seed", minimum=0)


def nonfinite_message(name):
    return (
        f"{name} contains NaN or Inf. Clean or impute the data first; "
        "pass check_finite=False to skip this diagnosis (training then stops with DivergenceError)"
    )
