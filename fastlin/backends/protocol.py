"""The backend contract as code: what the layer may call on a backend.

Each device has a kernel module (``cpu.py``; the ``cuda_*.py`` modules) and
one *ops* module (``cpu_ops.py``, ``cuda_ops.py``) that allocates outputs
and scratch, picks a kernel and launches it.  The layer, the training loop
and the optimisers talk to the ops module only, through :class:`Ops`;
``tests/test_contract.py`` checks that both ops modules provide every member
with these exact parameter names.

One order of arguments at every level, ops and kernels alike:

    data (X, T or gradients), parameters (W, b, has_bias),
    optimiser (its state, then ``hyper``), settings, scratch.

Conventions:

- Inputs arrive validated: the model's dtype, C-contiguous, the right shapes.
- ``b`` is always a vector; a layer without bias passes zeros and
  ``has_bias=False``.
- ``state`` is an :class:`OptimizerState`; ``hyper`` a one-element array of
  :data:`fastlin.backends.abi.HYPER`; status codes are ``abi``'s.
- ``reduce_sum`` picks the loss reduction (True: sum, False: mean over all
  N·out elements).  The backend supplies the dtype's limit itself.
- ``ws`` is a dict the caller owns (one per thread), where the backend keeps
  scratch between calls.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class OptimizerState(Protocol):
    """An optimiser's state for one model, on that model's device."""

    slots_w: Any  # (k, out, in) buffers of the update rule, the model's dtype
    slots_b: Any  # (k, out)
    counters: Any  # int64 host vector indexed by abi.CNT_*


class Ops(Protocol):
    """The members of a backend's ops module (a module, typed as a protocol)."""

    name: str

    # arrays
    def as_input(self, a: Any, name: str, dtype: Any) -> Any: ...
    def from_host(self, a: Any) -> Any: ...
    def to_host(self, a: Any) -> Any: ...
    def empty(self, shape: tuple[int, ...], dtype: Any) -> Any: ...
    def zeros(self, shape: tuple[int, ...], dtype: Any) -> Any: ...
    def copy_into(self, dst: Any, src: Any) -> None: ...
    def all_finite(self, a: Any) -> bool: ...

    # inference and gradients (nothing is written to W or b)
    def forward(self, X: Any, W: Any, b: Any, has_bias: bool) -> Any: ...
    def sse(self, P: Any, T: Any) -> float: ...
    def model_sse(self, X: Any, T: Any, W: Any, b: Any, has_bias: bool, ws: dict) -> float: ...
    def mse_grad(
        self, X: Any, T: Any, W: Any, b: Any, has_bias: bool, scale: float, ws: dict, dtype: Any = None
    ) -> tuple[float, Any, Any]: ...
    def backward(self, X: Any, dY: Any, W: Any, ws: dict) -> tuple[Any, Any, Any]: ...

    # training (check, then write: on a non-OK status nothing changed)
    def fused_step(
        self, X: Any, T: Any, W: Any, b: Any, has_bias: bool, state: Any, hyper: Any, reduce_sum: bool, ws: dict
    ) -> tuple[float, int]: ...
    def apply_update(
        self, gW: Any, gb: Any, scale: float, W: Any, b: Any, has_bias: bool, state: Any, hyper: Any
    ) -> int: ...
    def fit_plan(
        self, n_rows: int, n_out: int, n_in: int, batch_size: int, shuffle: bool, seed: int | None, dtype: Any
    ) -> Any: ...
    def fit_steps(
        self,
        X: Any,
        T: Any,
        W: Any,
        b: Any,
        has_bias: bool,
        state: Any,
        hyper: Any,
        reduce_sum: bool,
        plan: Any,
        losses: Any,
    ) -> tuple[int, int]: ...

    # the exact solve
    def gram_sums(self, X: Any, T: Any, sample_weight: Any = None, x_ref: Any = None, t_ref: Any = None) -> Any: ...


def missing_members(module: Any) -> list[str]:
    """What ``module`` lacks or spells differently from :class:`Ops` (empty when it conforms)."""
    import inspect

    problems = []
    for member in Ops.__annotations__:
        if not hasattr(module, member):
            problems.append(f"{member}: missing")
    for member, spec in vars(Ops).items():
        if member.startswith("_") or not callable(spec):
            continue
        got = getattr(module, member, None)
        if got is None:
            problems.append(f"{member}(): missing")
            continue
        want = [p for p in inspect.signature(spec).parameters if p != "self"]
        have = list(inspect.signature(got).parameters)
        if have != want:
            problems.append(f"{member}({', '.join(have)}): the contract says ({', '.join(want)})")
    return problems
