"""Backends: where fastlin's arithmetic happens.

Each device has an *ops* module that the layer, the training loop and the
optimisers call (``cpu_ops.py``, ``cuda_ops.py``), and kernel modules that
only its ops module calls (``cpu.py``; ``cuda_rows.py``, ``cuda_tiled.py``,
...).  What an ops module provides, with one order of arguments at every
level, is written as code in :mod:`.protocol` (``tests/test_contract.py``
checks both); what the kernels read besides arrays (the optimiser's
``HYPER`` record, the ``CNT_*`` counters, the status codes) in :mod:`.abi`.
The update of one parameter and the learning-rate schedules are written
once, in :mod:`.rules`, and compiled for each target, as are
:mod:`.counters` and :mod:`.permute`.

The layer never imports a kernel module, and no backend imports the layer.
"""
