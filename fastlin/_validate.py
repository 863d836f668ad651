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
import sys

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
    """float32 for float32 arrays (numpy in either byte order, CuPy, torch,
    numba, pandas ``Float32``), float64 for anything else."""
    dt = getattr(a, "dtype", None)
    if isinstance(dt, np.dtype):
        is32 = dt.kind == "f" and dt.itemsize == 4  # '>f4' is float32 too
    else:
        is32 = str(dt).lower().endswith("float32")  # torch.float32, pandas Float32
    return np.dtype(np.float32) if is32 else np.dtype(np.float64)


def check_dtype_kind(dtype, name):
    """Accept bool, integer and float dtypes; reject complex, object, strings, ..."""
    kind = np.dtype(dtype).kind
    if kind not in "biuf":
        what = _KIND_NAMES.get(kind, str(dtype))
        raise TypeError(f"{name} must hold real numbers, got a {what} array (dtype {dtype})")


def _top_module(a):
    return (type(a).__module__ or "").partition(".")[0]


def check_not_requires_grad(a, name):
    """Refuse a torch tensor that requires grad (CPU or GPU), naming ``.detach()``.

    Detected by its type's module and ``requires_grad``; torch is never imported.
    """
    if _top_module(a) == "torch" and getattr(a, "requires_grad", False) is True:
        how = f"pass {name}.detach() instead" if name.isidentifier() else "call .detach() on it"
        raise TypeError(
            f"{name} is a torch tensor that requires grad; fastlin computes its own gradients and does "
            f"not take part in autograd: {how} (a view, no copy)"
        )


def _unmasked(a, name):
    """A numpy masked array -> its data when nothing is masked, else raise.

    numpy.ma is only looked at when it was already imported (a masked array
    cannot exist otherwise), so this costs nothing for other inputs.
    """
    ma = sys.modules.get("numpy.ma")
    if ma is None or not isinstance(a, ma.MaskedArray):
        return a
    mask = ma.getmask(a)
    if mask is not ma.nomask:
        n_masked = int(np.count_nonzero(mask.view(np.bool_) if mask.dtype.names else mask))
        if n_masked:
            raise ValueError(
                f"{name} is a masked array with masked entries ({n_masked} of {a.size}); fastlin does not skip them "
                f"(the hidden values would be used). Fill them with {name}.filled(value), or drop them "
                f"({name}.compressed() for 1-D data; for rows, keep = ~np.ma.getmaskarray({name}).any(axis=1) "
                f"and index X and T with it) first"
            )
    return a.data  # nothing masked: the data is exactly what it looks like


def _is_missing_type(t):
    return t is type(None) or (t.__name__ in ("NAType", "NaTType") and t.__module__.startswith("pandas"))


def _is_real_type(t):
    # numbers.Real covers bool, int (any size), float, Fraction and numpy's
    # real scalars; Decimal is a Number that is not Complex.
    if issubclass(t, (numbers.Real, np.bool_)):
        return True
    return issubclass(t, numbers.Number) and not issubclass(t, numbers.Complex)


def _object_to_float(arr, name):
    """An object array of real Python numbers (e.g. ints beyond int64) ->
    float64, as scikit-learn converts them; missing values, strings and other
    objects are refused."""
    types = set(map(type, arr.flat))
    missing = [t for t in types if _is_missing_type(t)]
    if missing:
        n = sum(1 for v in arr.flat if _is_missing_type(type(v)))
        raise ValueError(f"{name} has missing values (NA / None) in {n} of {arr.size} entries; fill or drop them first")
    bad = sorted(t.__name__ for t in types if not _is_real_type(t))
    if bad:
        what = (
            "strings (convert them to numbers first)"
            if {"str", "bytes", "str_", "bytes_"} & set(bad)
            else ", ".join(bad) + " values"
        )
        raise TypeError(f"{name} must hold real numbers, got an object array holding {what}")
    try:
        return arr.astype(np.float64)
    except OverflowError:
        raise ValueError(f"{name} holds a number too large for float64 (beyond about 1.8e308)") from None
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} could not be read as real numbers: {exc}") from None


def _read_array(a, name, **kwargs):
    """``np.asarray(a)`` (or ``a.to_numpy(**kwargs)``), with its failures as a ValueError naming ``name``."""
    try:
        return a.to_numpy(**kwargs) if kwargs else np.asarray(a)
    except (ValueError, TypeError, RuntimeError) as exc:  # ragged lists, odd objects, torch refusing
        raise ValueError(f"{name} could not be read as a numeric array: {exc}") from None


def _from_pandas(a, name):
    """A pandas Series / DataFrame / Index / array -> ndarray.

    Nullable dtypes (``Float64``, ``Int64``, ``boolean``, ...) would otherwise
    become object arrays (or NaN): they are checked for missing values (NA)
    and converted to float64, as scikit-learn does.
    """
    dtypes = list(a.dtypes) if hasattr(a, "columns") else [getattr(a, "dtype", None)]
    nullable = [d for d in dtypes if d is not None and not isinstance(d, np.dtype)]
    if not nullable or any(getattr(d, "kind", "O") not in "biuf" for d in nullable):
        return _read_array(a, name)  # plain numpy dtypes; anything else is judged as an array
    n_missing = int(np.asarray(a.isna()).sum())
    if n_missing:
        raise ValueError(
            f"{name} has missing values (NA) in {n_missing} entries; fill them ({name}.fillna(value)) "
            f"or drop them ({name}.dropna()) first"
        )
    return _read_array(a, name, dtype=np.float64)


def host_numpy(a, name, gpu_hint="copy it to the host first"):
    """Any array-like -> an ndarray of a real dtype (bool, integer or float).

    Refuses, with a message that names ``name``: torch tensors that require
    grad, masked arrays with masked entries (one with none masked is used as
    its data), GPU arrays, missing values in pandas nullable dtypes and in
    object arrays, and non-real dtypes.  Object arrays of real Python numbers
    (integers beyond int64) become float64.
    """
    check_not_requires_grad(a, name)
    if isinstance(a, np.ndarray):
        arr = _unmasked(a, name)
    else:
        try:
            on_gpu = hasattr(a, "__cuda_array_interface__")
        except Exception:  # noqa: BLE001  (it has the interface but refuses to export it)
            on_gpu = True
        if on_gpu:
            raise TypeError(f"{name} is a GPU array; {gpu_hint}")
        arr = _from_pandas(a, name) if _top_module(a) == "pandas" else _read_array(a, name)
    if arr.dtype.kind == "O":
        arr = _object_to_float(arr, name)
    check_dtype_kind(arr.dtype, name)
    return arr


def as_host_array(a, name, dtype):
    """Convert array-likes (lists, any numeric dtype, any layout) to a
    C-contiguous numpy array of ``dtype``.  Copies only when needed.

    See :func:`host_numpy` for what is refused.  A float64 value too large for
    a float32 ``dtype`` is a ValueError, not a silent Inf.
    """
    if type(a) is np.ndarray and a.dtype == dtype and a.flags.c_contiguous:
        return a  # the common case, kept cheap: it is on every call's path
    if type(a) is np.ndarray and a.dtype.kind in "biuf":
        arr = a  # a plain ndarray to cast: nothing else to look at
    else:
        arr = host_numpy(
            a, name, "the model is on the CPU; move the model with model.to('cuda') or copy the array to the host"
        )
    if arr.dtype.kind != "f" or arr.dtype.itemsize <= np.dtype(dtype).itemsize:
        return np.asarray(arr, dtype=dtype, order="C")  # cannot overflow (ascontiguousarray would make 0-D 1-D)
    with np.errstate(over="raise"):  # float64 -> float32: 1e39 would become Inf silently
        try:
            return np.asarray(arr, dtype=dtype, order="C")
        except FloatingPointError:
            big = float(np.nanmax(np.abs(arr)))
            raise ValueError(
                f"{name} has values too large for {np.dtype(dtype)} (largest magnitude {big:.4g}); they would become Inf"
            ) from None


def finite_param(arr, name, dtype):
    """A host ndarray of a real dtype -> a finite C-contiguous copy of ``dtype``.

    Raises ValueError for NaN/Inf and for values that overflow ``dtype``
    (e.g. 1e39 for float32), which would otherwise become Inf.
    """
    dtype = np.dtype(dtype)
    with np.errstate(over="ignore", invalid="ignore"):
        out = np.array(arr, dtype=dtype, order="C", copy=True)
    if not np.isfinite(out).all():
        if arr.dtype.kind != "f" or np.isfinite(arr).all():
            big = float(np.abs(arr.astype(np.float64)).max())
            raise ValueError(
                f"{name} has values too large for {dtype} (largest magnitude {big:.4g} > {float(np.finfo(dtype).max):.4g}); "
                "they would become Inf"
            )
        raise ValueError(f"{name} contains NaN or Inf")
    return out


def check_input_shape(shape, in_features, name="X"):
    """Validate X's shape: (in,) for one sample or (N, in).

    Returns ``(n_rows, single_sample)``.
    """
    if len(shape) not in (1, 2):
        raise ValueError(
            f"{name} must be 1-D (one sample of {in_features} features) or 2-D (N, {in_features}), got {len(shape)}-D with shape {tuple(shape)}"
        )
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


def host_param(value, name, dtype):
    """A parameter given by the user -> a finite host numpy array.

    ``dtype`` None picks float32 for float32 input and float64 otherwise.
    """
    # Refuses what data inputs refuse (masked entries, tensors that require
    # grad, NA, non-real dtypes) and values that would overflow ``dtype``.
    arr = host_numpy(value.copy_to_host() if hasattr(value, "copy_to_host") else value, name)
    if dtype is None:
        dtype = natural_float_dtype(arr)  # float32 in either byte order
    return finite_param(arr, name, dtype)
