"""The one place that decides how fastlin's CPU kernels are compiled.

Every ``@njit`` kernel in fastlin goes through :func:`kernel`, so caching, the
floating-point flags and the error model are set here and nowhere else.

Fast math
    Full fast math (``fastmath`` set to ``True``) lets LLVM assume that no
    value is NaN or Inf, which silently breaks the finiteness checks the
    fused step relies on (numba issue #2919).  We enable only the flags that keep NaN/Inf semantics:
    ``reassoc`` (lets LLVM vectorise float reductions), ``contract`` (FMA),
    ``nsz`` and ``arcp``.  Reassociation changes rounding, but it is decided at
    compile time, so results still do not depend on the thread count.

Caching
    ``cache=True`` writes compiled machine code next to the sources, or in
    numba's user-wide cache directory when the package is read-only.  When
    neither is writable numba raises at import time, so we probe first and
    fall back to no caching.  ``FASTLIN_CACHE=0`` switches caching off; tests
    and CI may point ``NUMBA_CACHE_DIR`` at a scratch directory.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numba

from ._notices import install_compile_notice

FASTMATH_FLAGS = frozenset({"reassoc", "contract", "nsz", "arcp"})


def _writable(directory: Path) -> bool:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory):
            pass
    except OSError:
        return False
    return True


def _cache_enabled() -> bool:
    if os.environ.get("FASTLIN_CACHE", "1").strip().lower() in {"0", "false", "no", "off"}:
        return False
    if numba.config.DISABLE_JIT:
        return False
    explicit = os.environ.get("NUMBA_CACHE_DIR")
    if explicit:
        return _writable(Path(explicit))
    package_cache = Path(__file__).resolve().parent / "backends" / "__pycache__"
    if _writable(package_cache):
        return True
    # numba's own fallback for read-only installs (site-packages owned by root).
    from numba.misc.appdirs import AppDirs

    user_cache = Path(AppDirs(appname="numba", appauthor=False).user_cache_dir)
    return _writable(user_cache)


CACHE = _cache_enabled()

# The first compilation of a process takes seconds: say so, once, while it
# happens (nothing is said when the kernels load from the cache).
install_compile_notice()


# Only explicit ``prange`` loops run in parallel.  numba's other automatic
# parallelisations would turn small array expressions (``gW[:] = 0``) into
# thread-pool launches.
_PRANGE_ONLY = dict(
    comprehension=False,
    reduction=False,
    inplace_binop=False,
    setitem=False,
    numpy=False,
    stencil=False,
    fusion=False,
    prange=True,
)


def kernel(fn=None, *, parallel: bool = False, inline: bool = False):
    """Compile ``fn`` with fastlin's settings (usable bare or with arguments).

    ``inline=True`` inlines the function into its jitted callers at numba IR
    level; a helper holding a ``prange`` loop must be inlined so that the loop
    runs in parallel inside a caller compiled with ``parallel=True``.
    """

    def wrap(f):
        return numba.njit(
            f,
            cache=CACHE,
            parallel=dict(_PRANGE_ONLY) if parallel else False,
            fastmath=set(FASTMATH_FLAGS),
            error_model="numpy",
            nogil=True,
            inline="always" if inline else "never",
        )

    return wrap if fn is None else wrap(fn)


def kernel_pair(fn):
    """Compile ``fn`` twice: serially, and with ``prange`` loops run in parallel.

    Small problems use the serial twin, which avoids the cost of waking the
    thread pool; large ones use the parallel twin.  (A serial kernel that
    merely *calls* a parallel one runs ~4x slower per call once cached, seen
    with numba 0.68; two whole twins avoid that.)  The choice depends on the
    problem's shape only, never on the thread count, so results stay
    bit-identical however many threads run.
    """
    return kernel(fn), kernel(fn, parallel=True)
