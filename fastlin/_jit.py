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

Stale kernels
    numba keys a cached kernel by its own source file only, but a kernel's
    machine code also holds the helpers it inlines from other modules
    (``rules.py``, ``counters.py``, ``permute.py``, ``abi.py``'s constants,
    this file's flags).  So at import :func:`drop_stale_kernels` hashes
    every source file under ``fastlin/backends/`` and this file, keeps the
    digest beside the kernels in their cache directory (the one numba picks
    for them), and deletes fastlin's cached kernels there when the digest
    has changed.  That costs well under a millisecond.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import types
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


# The file beside the cached kernels that names the sources they were built from.
DIGEST_FILE = "fastlin-sources.digest"
_BACKENDS = Path(__file__).resolve().parent / "backends"


def sources_digest(backends: Path = _BACKENDS) -> str:
    """A digest of every source a backend kernel's machine code can depend on:
    each ``*.py`` under ``backends`` (name and content), this file, and numba's version."""
    h = hashlib.blake2b(numba.__version__.encode(), digest_size=16)
    for path in [*sorted(backends.glob("*.py")), backends.parent / "_jit.py"]:
        h.update(path.name.encode() + b"\0")
        h.update(path.read_bytes())
        h.update(b"\0")
    return h.hexdigest()


def kernel_cache_dir(backends: Path = _BACKENDS) -> Path:
    """The directory numba caches the kernels of ``backends/*.py`` in.

    Found by numba's own rules (``NUMBA_CACHE_DIR``, else the in-tree
    ``__pycache__``, else the user-wide cache), asked for a stand-in function
    of ``backends/cpu.py``; all of the directory's modules share it.
    """
    from numba.core.caching import CompileResultCacheImpl

    stand_in = types.FunctionType(_stand_in.__code__.replace(co_filename=str(backends / "cpu.py")), {})
    return Path(CompileResultCacheImpl(stand_in)._locator.get_cache_path())


def _stand_in():  # its code, relabelled as backends/cpu.py's, for numba's cache locators
    pass


def drop_stale_kernels(cache_dir: Path, digest: str, backends: Path = _BACKENDS) -> bool:
    """Delete the cached kernels of ``backends``' modules from ``cache_dir``
    unless they were built from sources with ``digest``; then record it.

    Returns True when something was stale (or nothing was recorded yet).
    Only numba's index and data files (``<module>.<function>-<line>.*.nbi``,
    ``.nbc``) of those modules go; anything else in the directory stays.
    """
    stamp = cache_dir / DIGEST_FILE
    try:
        if stamp.read_text().strip() == digest:
            return False
    except OSError:
        pass
    modules = {path.stem for path in backends.glob("*.py")}
    for entry in cache_dir.iterdir():
        if entry.suffix in (".nbi", ".nbc") and entry.name.split(".", 1)[0] in modules:
            try:
                entry.unlink()
            except FileNotFoundError:  # another process got there first
                pass
    part = cache_dir / f"{DIGEST_FILE}.{os.getpid()}"
    part.write_text(digest + "\n")
    os.replace(part, stamp)  # atomic: a reader sees the old digest or the new one
    return True


def _fresh_cache() -> bool:
    """True when cached kernels may be used: the stale ones are gone.  When
    the cache directory cannot be found or cleaned, caching is switched off
    rather than risk running machine code built from older sources."""
    try:
        drop_stale_kernels(kernel_cache_dir(), sources_digest())
    except Exception:  # numba's internals moved, or the directory is not ours to write
        return False
    return True


CACHE = _cache_enabled() and _fresh_cache()

# The first compilation of a process takes seconds: say so, once, while it
# happens (nothing is said when the kernels load from the cache).
install_compile_notice(CACHE)


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

    The parallel twin is compiled from a copy of ``fn`` named
    ``<name>_parallel``: numba names a kernel's cache files after the
    function's qualified name and line, and its cache key holds the argument
    types and the machine but not ``parallel``, so two twins of one function
    shared one cache entry, and whichever compiled first was loaded for both
    (a parallel forward pass that ran on one thread, or a serial one that
    woke the pool).  tests/test_jit_cache.py checks the two entries.
    """
    twin = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__ + "_parallel", fn.__defaults__, fn.__closure__)
    twin.__qualname__ = fn.__qualname__ + "_parallel"
    twin.__doc__, twin.__module__ = fn.__doc__, fn.__module__
    return kernel(fn), kernel(twin, parallel=True)


# --------------------------------------------------------------------------
# calling a kernel without the dispatcher
# --------------------------------------------------------------------------
# numba's dispatcher types every argument of every call to find the compiled
# code: about 0.1 µs an array and 0.55 µs the record of hyper-parameters, so
# 1.1-1.4 µs of a 15-argument step that computes for 1 µs (bench/RESULTS.md).
# The hot calls (the fused step and the fit loop) look the compiled entry
# point up in a table instead, under a key that their caller builds from the
# few argument types that can vary (see cpu_ops).  Tests set
# CHECK_ENTRY_TYPES (tests/conftest.py does, for the whole suite): every
# call then types its arguments as numba would and fails if the key would
# have picked code compiled for other types (FASTLIN_CHECK_ENTRY_TYPES=1
# sets it at import, for subprocesses too).
CHECK_ENTRY_TYPES = os.environ.get("FASTLIN_CHECK_ENTRY_TYPES", "").strip() == "1"


def find_entry(table, key, dispatcher, args, read_only=2):
    """``table[key]``, the entry point that runs ``dispatcher(*args)``:
    found on the key's first use, compiled (or loaded from the cache, or
    found among those compiled) for exactly the types the dispatcher gives
    ``args``, except that the first ``read_only`` arguments -- the user's
    data, X and T -- are typed as read-only arrays.

    A kernel never writes its data, and a read-only type costs nothing in the
    machine code; so writeable and read-only data (a memmap, an
    ``np.broadcast_to`` view, scikit-learn's read-only checks) share one
    compiled copy instead of compiling every kernel again.

    Callers look ``table[key]`` up themselves and come here on a miss (or
    always, under CHECK_ENTRY_TYPES); they guarantee that ``key``
    determines the numba types of ``args``, and CHECK_ENTRY_TYPES tests it.
    """
    sig = [dispatcher.typeof_pyval(a) for a in args]
    for i in range(read_only):
        sig[i] = sig[i].copy(readonly=True)
    sig = tuple(sig)
    entry = table.get(key)
    if entry is not None:  # (CHECK_ENTRY_TYPES) the key's code must be compiled for these types
        known = [s for s, cres in dispatcher.overloads.items() if cres.entry_point is entry]
        if known != [sig]:
            raise AssertionError(f"key {key!r} of {dispatcher.py_func.__name__} was used for two signatures")
        return entry
    entry = table[key] = dispatcher.compile(sig)
    return entry
