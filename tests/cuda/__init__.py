"""Tests of the CUDA backend (a GPU, or numba's simulator); see conftest.py."""
