"""Progress bar for long fits: tqdm when installed, a plain stderr line otherwise."""

from __future__ import annotations

import sys
import time
from typing import Any, Protocol, TextIO

REFRESH_SECONDS = 0.1  # redraw at most ~10 times a second


class Progress(Protocol):
    def update(self, done: int, loss: float) -> None: ...

    def close(self) -> None: ...


class _NoProgress:
    def update(self, done: int, loss: float) -> None:
        pass

    def close(self) -> None:
        pass


class _TqdmProgress:
    def __init__(self, tqdm: Any, total: int) -> None:
        self._bar = tqdm(total=total, unit="step", mininterval=REFRESH_SECONDS, dynamic_ncols=True, leave=True)
        self._done = 0

    def update(self, done: int, loss: float) -> None:
        self._bar.set_postfix(loss=f"{loss:.6g}", refresh=False)
        self._bar.update(done - self._done)
        self._done = done

    def close(self) -> None:
        self._bar.close()


class _LineProgress:
    """Fallback without tqdm: one self-overwriting line on stderr."""

    def __init__(self, total: int, stream: TextIO | None = None) -> None:
        self._total = total
        self._stream = stream or sys.stderr
        self._last = 0.0
        self._done = 0
        self._loss = float("nan")

    def update(self, done: int, loss: float) -> None:
        self._done, self._loss = done, loss
        now = time.perf_counter()
        if now - self._last >= REFRESH_SECONDS:
            self._last = now
            self._draw()

    def _draw(self) -> None:
        self._stream.write(f"\rstep {self._done}/{self._total}  loss {self._loss:.6g}")
        self._stream.flush()

    def close(self) -> None:
        self._draw()
        self._stream.write("\n")
        self._stream.flush()


def progress(total: int, enabled: bool) -> Progress:
    """A progress reporter with ``update(steps_done, loss)`` and ``close()``."""
    if not enabled:
        return _NoProgress()
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _LineProgress(total)
    return _TqdmProgress(tqdm, total)
