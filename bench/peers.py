"""The libraries each benchmark is parametrised by, and how to set one up.

The step itself (forward, MSE, gradient, SGD update) is written once for every
library in :mod:`fastlin.tools.peers`, which ``python -m fastlin compare`` uses
too; this module turns it into pytest parameters that skip cleanly, with the
reason, when a library or a GPU is missing.
"""

from __future__ import annotations

import pytest

# As _peers: this module is bench's own `peers`, a thin layer over fastlin's.
from fastlin.tools import peers as _peers

# Display order: fastlin first, then the peers.
LIBRARIES = tuple(_peers.BACKENDS)
PEERS = _peers.PEERS
Problem = _peers.Problem


def is_peer(library):
    return library in PEERS


def label(library):
    return _peers.BACKENDS[library].label


def device(library):
    return _peers.BACKENDS[library].device


def make(library, problem):
    """Build ``library``'s backend for ``problem``, or skip the test saying why."""
    reason = _peers.unavailable(library)
    if reason:
        pytest.skip(f"{library}: {reason}")
    return _peers.build(library, problem)
