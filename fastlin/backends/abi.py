"""The contract between the layer, the optimisers and every backend's kernels.

Everything a kernel reads besides the arrays is named here, once:

``HYPER``
    The optimiser's hyper-parameters, as a numpy record dtype.  An optimiser
    hands the kernels a one-element array of it (``hyper``); kernels read
    ``hyper[0].lr`` and so on by field name, on the CPU (``@njit``) and on
    CUDA alike.  ``rule`` says which update a kernel applies, ``schedule``
    which learning-rate schedule; fields that the rule or schedule does not
    use are zero.  Nothing about losses or dtypes lives here: the loss
    reduction (``reduce_sum``) and the dtype's largest value (``limit``) are
    separate kernel arguments that the backend supplies.
Optimiser state
    Per model: ``slots_w`` (k, out, in) and ``slots_b`` (k, out) in the
    model's dtype, the k per-parameter buffers of the rule (SGD's momentum:
    k = 1, or 0 without momentum; Adam's two moments, three with amsgrad),
    and ``counters``, an int64 vector indexed by ``CNT_*``.
Status codes, returned by every step kernel:
    ``OK``: the step was applied.  ``NONFINITE_LOSS``: the loss or a
    gradient is NaN/Inf (bad data, or a model that diverged).
    ``NONFINITE_UPDATE``: the update would have made a weight or a buffer
    NaN/Inf (or beyond the dtype's range).  On any status but ``OK`` nothing
    was written.
"""

import numpy as np

OK = 0
NONFINITE_LOSS = 1
NONFINITE_UPDATE = 2

# ``rule``: the update applied to each parameter (fastlin/backends/rules.py).
RULE_SGD = 0
RULE_ADAM = 1  # Adam, and AdamW when ``decoupled`` is set

# ``schedule``: how the learning rate moves with the optimiser's step count
# (fastlin/schedules.py builds them; rules.scheduled_lr evaluates them).
SCHEDULE_CONSTANT = 0
SCHEDULE_STEP = 1
SCHEDULE_EXPONENTIAL = 2
SCHEDULE_COSINE = 3
SCHEDULE_LINEAR = 4
SCHEDULE_INVERSE_SCALING = 5

HYPER = np.dtype(
    [
        ("rule", np.int64),
        ("lr", np.float64),  # the base learning rate, before the schedule
        ("weight_decay", np.float64),
        # SGD
        ("momentum", np.float64),
        ("dampening", np.float64),
        ("nesterov", np.bool_),
        # Adam / AdamW
        ("beta1", np.float64),
        ("beta2", np.float64),
        ("eps", np.float64),
        ("amsgrad", np.bool_),
        ("decoupled", np.bool_),  # AdamW: decay the weights, not the gradient
        # the learning-rate schedule
        ("schedule", np.int64),
        ("step_size", np.int64),  # step: decay every step_size steps
        ("gamma", np.float64),  # step, exponential: the factor
        ("t_max", np.int64),  # cosine: half period, in steps
        ("eta_min", np.float64),  # cosine: the lowest learning rate
        ("start_factor", np.float64),  # linear
        ("end_factor", np.float64),  # linear
        ("total_iters", np.int64),  # linear: steps to go from start to end
        ("power_t", np.float64),  # inverse scaling: lr / (k + 1) ** power_t
        # a linear warm-up before any schedule (torch's SequentialLR of a LinearLR and the schedule)
        ("warmup_steps", np.int64),  # 0: none; else steps 0..warmup_steps-1 warm up
        ("warmup_start_factor", np.float64),  # the first warm-up step's fraction of lr
    ],
    align=True,
)


def new_hyper():
    """A one-element ``HYPER`` array, all zeros (plain SGD, constant lr 0)."""
    return np.zeros(1, dtype=HYPER)


# ``counters``: the int64 vector of training state a model's optimiser state
# carries between compiled calls (host memory on every device).
CNT_HAS_BUF = 0  # the momentum buffers hold a value (torch's "buf is not None")
CNT_EPOCH = 1  # epoch of the next step of a fit
CNT_POS = 2  # first row of the next batch within its epoch
CNT_STEP = 3  # optimiser steps taken so far: the schedule's position, Adam's t - 1
CNT_SIZE = 4
# The CUDA backend keeps a device copy that a queue of kernels updates; it
# extends the same vector with the slots below (never on the host).
CNT_STATUS = 4  # the first non-OK status of a queued fit; later steps do nothing
CNT_DONE = 5  # steps completed by the queued kernels
CNT_BAD = 6  # the two-kernel update found a value it must not write
CNT_BAD_GRAD = 7  # ... and that value was a gradient (a NaN/Inf loss)
CNT_DEVICE_SIZE = 8
