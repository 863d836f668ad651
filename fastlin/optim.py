"""Stochastic gradient descent with ``torch.optim.SGD``'s semantics."""

from __future__ import annotations

import weakref

import numpy as np

from . import _validate
from .backends import abi


class _ModelState:
    """Momentum buffers of one model, on that model's device.

    ``flags`` is the int64 vector the kernels read and write: whether the
    momentum buffers hold a value yet, and a fit's epoch and position.
    """

    __slots__ = ("device", "weight", "bias", "flags")

    def has_buffers(self):
        return self.weight.size > 0

    def __init__(self, ops, weight_shape, n_out, dtype, momentum):
        self.device = ops.name
        if momentum:
            self.weight = ops.zeros(weight_shape, dtype)
            self.bias = ops.zeros((n_out,), dtype)
        else:  # never read by the kernels; keeps the argument types fixed
            self.weight = ops.zeros((0, 0), dtype)
            self.bias = ops.zeros((0,), dtype)
        self.flags = np.zeros(abi.ST_SIZE, dtype=np.int64)  # host memory on every device


class SGD:
    """Stochastic gradient descent, as ``torch.optim.SGD`` defines it.

    For each parameter ``p`` with gradient ``g``::

        g   = g + weight_decay · p
        buf = g                                   on the first step
        buf = momentum · buf + (1 − dampening) · g  afterwards
        g   = g + momentum · buf   if nesterov  else  buf     (when momentum > 0)
        p   = p − lr · g

    Parameters
    ----------
    lr : float
        Learning rate, finite and > 0.
    momentum : float, default 0
        Momentum factor, >= 0.
    dampening : float, default 0
        Dampening for momentum; must be 0 with ``nesterov``.
    weight_decay : float, default 0
        L2 penalty, >= 0 (applied to the weight and the bias, as torch does).
    nesterov : bool, default False
        Nesterov momentum; needs ``momentum > 0`` and ``dampening == 0``.

    Notes
    -----
    One optimiser can step several models; it keeps separate momentum
    buffers for each (held weakly, so they go when the model goes).
    """

    _HYPER = ("lr", "momentum", "dampening", "weight_decay", "nesterov")

    def __init__(self, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
        values = _check_hyper(lr, momentum, dampening, weight_decay, nesterov)
        for key, value in zip(self._HYPER, values):
            object.__setattr__(self, key, value)
        self._states = weakref.WeakKeyDictionary()
        self._hyper = {}

    def __repr__(self):
        return (
            f"SGD(lr={self.lr}, momentum={self.momentum}, dampening={self.dampening}, "
            f"weight_decay={self.weight_decay}, nesterov={self.nesterov})"
        )

    def __setattr__(self, name, value):
        # A hyper-parameter changed later (a learning-rate schedule, say) is
        # validated like one given to __init__, and the cached vector dropped.
        if name in self._HYPER:
            values = {key: getattr(self, key) for key in self._HYPER}
            values[name] = value
            checked = _check_hyper(**values)
            value = checked[self._HYPER.index(name)]
            self._hyper.clear()
        object.__setattr__(self, name, value)

    def reset(self, model=None):
        """Forget the momentum buffers (of ``model``, or of every model)."""
        if model is None:
            self._states.clear()
        else:
            self._states.pop(model, None)

    def apply(self, model, weight_grad, bias_grad=None):
        """Update ``model`` in place from gradients computed elsewhere.

        For layers trained through :meth:`fastlin.Linear.backward` (a layer
        inside a larger model) or gradients summed across machines.

        Parameters
        ----------
        model : Linear
        weight_grad : array-like, shape (out_features, in_features)
            dL/dW, already reduced (any real dtype; used in float64).
        bias_grad : array-like, shape (out_features,)
            dL/db; required for a layer with a bias, refused without one.

        Raises
        ------
        ValueError
            A gradient has the wrong shape or holds NaN/Inf.
        DivergenceError
            The update would make a weight NaN/Inf.

        In both cases nothing changes.
        """
        from .layer import _apply_gradients

        _apply_gradients(model, self, weight_grad, bias_grad)

    def hyper(self, reduction_sum, dtype):
        """The float64 hyper-parameter vector the kernels read (cached).

        Internal: used by fastlin's layers and backends (layout in
        :mod:`fastlin.backends.abi`).
        """
        key = (reduction_sum, dtype)
        hp = self._hyper.get(key)
        if hp is None:
            hp = np.empty(abi.HP_SIZE, dtype=np.float64)
            hp[abi.HP_LR] = self.lr
            hp[abi.HP_MOMENTUM] = self.momentum
            hp[abi.HP_DAMPENING] = self.dampening
            hp[abi.HP_WEIGHT_DECAY] = self.weight_decay
            hp[abi.HP_NESTEROV] = float(self.nesterov)
            hp[abi.HP_SUM] = float(reduction_sum)
            hp[abi.HP_MAX] = float(np.finfo(dtype).max)
            self._hyper[key] = hp
        return hp

    def state_for(self, model, ops):
        """The momentum state of ``model``, created or moved to its device.

        Internal: used by fastlin's layers and backends.
        """
        st = self._states.get(model)
        if st is None or (self.momentum and not st.has_buffers()):
            st = _ModelState(ops, model._W.shape, model.out_features, model.dtype, self.momentum)
            self._states[model] = st
        elif st.device != ops.name:
            st.weight = ops.from_host(_host(st.weight))
            st.bias = ops.from_host(_host(st.bias))
            st.device = ops.name
        return st


def _check_hyper(lr, momentum, dampening, weight_decay, nesterov):
    """Validate SGD's hyper-parameters as torch does (and refuse NaN/Inf)."""
    lr = _validate.check_real(lr, "lr", minimum=0.0, strict=True)
    momentum = _validate.check_real(momentum, "momentum", minimum=0.0)
    dampening = _validate.check_real(dampening, "dampening")
    weight_decay = _validate.check_real(weight_decay, "weight_decay", minimum=0.0)
    nesterov = _validate.check_bool(nesterov, "nesterov")
    if nesterov and (momentum <= 0.0 or dampening != 0.0):
        raise ValueError(
            f"nesterov momentum requires momentum > 0 and dampening == 0, got momentum={momentum}, dampening={dampening}"
        )
    return lr, momentum, dampening, weight_decay, nesterov


def _host(a):
    return a.copy_to_host() if hasattr(a, "copy_to_host") else np.asarray(a)
