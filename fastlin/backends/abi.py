"""The contract between the layer, the optimiser and every backend's kernels.

Status codes returned by ``fused_step`` and ``fit_steps``:

OK
    The step was applied.
NONFINITE_LOSS
    The loss or a gradient is NaN/Inf: the data holds NaN/Inf, or the model
    has diverged.  Nothing was written.
NONFINITE_UPDATE
    The update would have made a weight (or momentum buffer) NaN/Inf.
    Nothing was written.

``flags`` is a small int64 vector of training state that a fit carries
between compiled calls; ``ST_*`` index it.
"""

OK = 0
NONFINITE_LOSS = 1
NONFINITE_UPDATE = 2

ST_HAS_BUF = 0  # momentum buffers hold a value (torch's "buf is not None")
ST_EPOCH = 1  # epoch of the next step
ST_POS = 2  # first row of the next batch within its epoch
ST_SIZE = 3

# ``hp``: the float64 vector of SGD hyper-parameters every step kernel reads.
HP_LR = 0
HP_MOMENTUM = 1
HP_DAMPENING = 2
HP_WEIGHT_DECAY = 3
HP_NESTEROV = 4  # 1.0 or 0.0
HP_SUM = 5  # 1.0 for reduction="sum", 0.0 for "mean"
HP_MAX = 6  # largest finite value of the parameters' dtype
HP_SIZE = 7
