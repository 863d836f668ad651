"""One-time messages to the user: the first compilation of a process, and
data that has to be cast to the model's dtype on every call.

Both go through the ``"fastlin"`` logger or stderr, never through
:mod:`warnings`: the cast notice is about speed, not correctness, and it is
logged at WARNING once per model, so that it shows in a plain script (Python
prints WARNING records to stderr when logging is not configured) and follows
the user's logging set-up when it is.
"""

from __future__ import annotations

import logging
import sys
import threading
import weakref
from typing import Any

logger = logging.getLogger("fastlin")

# ----------------------------------------------------------------------
# data cast on every call
# ----------------------------------------------------------------------
_cast_told: weakref.WeakSet[Any] = weakref.WeakSet()


def note_cast(model: Any, a: object, name: str) -> None:
    """Tell the user, once per model, that ``a`` (floating, but not the
    model's dtype) is copied and cast on every call, and how to avoid it."""
    dtype = getattr(a, "dtype", None)
    if dtype is None or dtype == model.dtype:
        return
    kind = getattr(dtype, "kind", None)  # numpy dtypes (torch's have no .kind)
    if kind != "f" or model in _cast_told:
        return
    try:
        _cast_told.add(model)
    except TypeError:  # not weak-referenceable: tell every time rather than never
        pass
    have, want = dtype.name, model.dtype.name
    logger.warning(
        "%s is %s but the fastlin model is %s, so it is copied and cast on every call "
        "(slower, and more memory). Pass %s data (e.g. %s = %s.astype(np.%s), once), or build "
        "the model with dtype=np.%s. (Said once per model.)",
        name,
        have,
        want,
        want,
        name,
        name,
        want,
        have,
    )


# ----------------------------------------------------------------------
# the first compilation of a process
# ----------------------------------------------------------------------
COMPILE_NOTICE_AFTER = 1.0  # seconds: a kernel loaded from the cache never takes this long

_lock = threading.Lock()
_depth = 0
_timer: threading.Timer | None = None
_announced = False
_cache_on = True  # whether compiled kernels are cached on disk: set by install_compile_notice


def compile_message() -> str:
    if _cache_on:
        return "fastlin: compiling kernels for first use (up to a minute; cached afterwards)"
    return "fastlin: compiling kernels for first use (up to a minute; the cache is off, so each new process compiles again)"


def _announce() -> None:
    global _announced
    with _lock:
        if _announced or _depth == 0:
            return
        _announced = True
    stream = sys.stderr
    if stream is not None:
        stream.write(compile_message() + "\n")
        stream.flush()


def _is_fastlin(event: Any) -> bool:
    data = getattr(event, "data", None) or {}
    dispatcher = data.get("dispatcher") if isinstance(data, dict) else None
    module = getattr(getattr(dispatcher, "py_func", None), "__module__", "") or ""
    return module == "fastlin" or module.startswith("fastlin.")


def _on_start(event: Any) -> None:
    global _depth, _timer
    if _announced or not _is_fastlin(event):
        return
    with _lock:
        _depth += 1
        if _depth == 1 and _timer is None:
            _timer = threading.Timer(COMPILE_NOTICE_AFTER, _announce)
            _timer.daemon = True
            _timer.start()


def _on_end(event: Any) -> None:
    global _depth, _timer
    if not _is_fastlin(event):
        return
    with _lock:
        if _depth == 0:
            return
        _depth -= 1
        if _depth == 0 and _timer is not None:
            _timer.cancel()
            _timer = None


def install_compile_notice(cache_on: bool = True) -> None:
    """Listen to numba's "numba:compile" events (sent only when a function
    is really compiled, never when it is loaded from the cache): when a
    fastlin CPU kernel has compiled for ``COMPILE_NOTICE_AFTER`` seconds, say
    so on stderr, once per process.  ``cache_on`` (from :mod:`fastlin._jit`)
    picks the wording: cached afterwards, or compiled again by each process.

    CUDA kernels are not announced: numba-cuda (0.30) sends no such event
    when it compiles a kernel.
    """
    global _cache_on
    _cache_on = bool(cache_on)
    try:
        from numba.core import event
    except ImportError:  # pragma: no cover - numba without the event API
        return

    class _Listener(event.Listener):
        def on_start(self, ev: Any) -> None:
            _on_start(ev)

        def on_end(self, ev: Any) -> None:
            _on_end(ev)

    event.register("numba:compile", _Listener())
