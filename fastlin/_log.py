"""Visible log lines for ``fit(..., log_every=k)``.

A user who asks for a log every k steps should see it, in a plain script,
without configuring :mod:`logging` first (scikit-learn's and Keras'
``verbose`` print to stdout).  A user who *has* configured logging keeps
control: the lines then go through the ``"fastlin"`` logger at INFO, to the
handlers, levels and formats they chose.

"Configured" means that the ``"fastlin"`` logger or one of its ancestors
(the root logger) has a handler (``logging.basicConfig``, a
``dictConfig``, pytest's log capture).  Without one, Python would drop INFO
records (the root's default level is WARNING), so the line is written to
stdout instead, in the demo's Julia-like style: ``[ Info: step 10/100: loss 0.25``.
Setting the ``"fastlin"`` logger's level above INFO silences it either way.
"""

from __future__ import annotations

import logging
import sys

PREFIX = "[ Info: "


def info(logger: logging.Logger, msg: str, *args: object) -> None:
    """Log ``msg % args`` at INFO through ``logger`` when logging is
    configured, else print it to stdout (see the module's docstring)."""
    if logger.hasHandlers():
        logger.info(msg, *args)
        return
    if logger.level > logging.INFO or logging.root.manager.disable >= logging.INFO:
        return  # silenced on purpose
    stream = sys.stdout  # looked up at each call: it may have been replaced
    if stream is None:  # pythonw, or a closed stdout
        return
    stream.write(PREFIX + (msg % args if args else msg) + "\n")
    stream.flush()
