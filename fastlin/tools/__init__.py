"""Tooling for ``python -m fastlin compare`` and the ``bench/`` suite, never
imported by ``import fastlin`` or by training.

compare
    the ``compare`` subcommand: its options, the measuring run and the report.
peers
    the same training step in fastlin, numpy, torch and JAX, for timing.
roofline
    the hardware limits (read bandwidth, SGEMM rate) measured in the same run.

Imports go one way: these modules use the core (the public API, ``_jit``'s
compile flags, ``_plot``, ``_dispatch``'s CUDA check), and nothing in the
core imports them; tests/test_layout.py checks that a fit stays clear of
them.
"""
