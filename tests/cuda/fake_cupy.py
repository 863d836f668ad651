"""A stand-in for the few CuPy calls of :mod:`fastlin.backends.cuda_cublas`,
in numpy, for numba's simulator (whose device arrays hold numpy arrays).

It implements exactly what fastlin calls, as strictly as CuPy does:

``asarray(a)``
    a zero-copy view of a device array, through the array interface
    (``__cuda_array_interface__`` on a GPU; in the simulator the device array
    forwards numpy's ``__array_interface__``); anything else is refused;
``matmul(a, b, out=...)``
    2-D, same dtype everywhere, ``out`` of the product's shape and dtype,
    written in place (float32 data are multiplied and summed in float32, as
    by SGEMM); it records each call and the stream that was current;
``cuda.Stream.null``, ``cuda.ExternalStream(handle)``
    stream objects usable as ``with stream:``, which set the current stream.

Everything else raises AttributeError, so a new CuPy call in fastlin fails
here until it is added (and thought about) on purpose.
"""

from __future__ import annotations

import types

import numpy as np


class _Stream:
    def __init__(self, handle):
        self.ptr = handle

    def __enter__(self):
        _state.stack.append(self)
        return self

    def __exit__(self, *exc):
        _state.stack.pop()
        return False

    def __repr__(self):
        return f"<fake stream {self.ptr}>"


class _State:
    def __init__(self):
        self.stack = []
        self.calls = []  # (shape a, shape b, dtype, current stream handle or None)
        self.views = 0


_state = _State()
_NULL = _Stream(0)


def reset():
    """Forget the recorded calls."""
    _state.stack.clear()
    _state.calls.clear()
    _state.views = 0


def calls():
    return list(_state.calls)


def views_made():
    return _state.views


def asarray(a):
    if isinstance(a, np.ndarray) or not hasattr(a, "__array_interface__") or not hasattr(a, "copy_to_host"):
        raise TypeError(f"fake cupy.asarray takes device arrays only, got {type(a).__name__}")
    view = np.asarray(a)
    if not np.shares_memory(view, a._ary):  # the simulator's device array holds this numpy array
        raise AssertionError("fake cupy.asarray made a copy")
    _state.views += 1
    return view


def matmul(a, b, out=None):
    if out is None:
        raise TypeError("fastlin always passes out=")
    for x in (a, b, out):
        if not isinstance(x, np.ndarray) or x.ndim != 2:
            raise TypeError(f"fake cupy.matmul: 2-D views only, got {type(x).__name__} {getattr(x, 'shape', None)}")
    if not (a.dtype == b.dtype == out.dtype):
        raise TypeError(f"fake cupy.matmul: dtypes {a.dtype}, {b.dtype} -> {out.dtype}")
    if a.shape[1] != b.shape[0] or out.shape != (a.shape[0], b.shape[1]):
        raise ValueError(f"fake cupy.matmul: {a.shape} @ {b.shape} -> {out.shape}")
    stream = _state.stack[-1].ptr if _state.stack else None
    _state.calls.append((a.shape, b.shape, a.dtype, stream))
    np.matmul(a, b, out=out)
    return out


cuda = types.SimpleNamespace(Stream=types.SimpleNamespace(null=_NULL), ExternalStream=_Stream)
