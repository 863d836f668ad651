"""What the tests share, as an importable package (``from tests.support import naive``).

- :mod:`tests.support.naive`: the plain float64 numpy references that every
  kernel and every device is tested against.
- :mod:`tests.support.helpers`: random test data and the tolerances that
  compare float32/float64 results with those references.
- :mod:`tests.support.cuda_ref`: the same references for device arrays
  (brought to the host first) and the CUDA tests' tolerances.

``tests`` and ``tests/cuda`` are packages (each has an ``__init__.py``), so
pytest puts the repository root on ``sys.path`` and imports test modules as
``tests.test_x`` and ``tests.cuda.test_y``: these imports work from any
directory pytest is started in, and no module edits ``sys.path``.  Nothing
here imports numba-cuda, so the CPU suite runs without it.
"""
