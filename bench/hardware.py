"""Hardware limits for the benchmarks, measured in the same run.

The read bandwidth of a case is measured over the very array its step reads
(its X), before the case's first benchmark and again after each of its
benchmarks; the SGEMM rate likewise.  A ceiling is the best the machine has
shown, so the fastest of these measurements counts: on a shared machine a
single early measurement can land in a busy moment and make every fraction
of it look too good.  See :mod:`fastlin.tools.roofline` for the definitions.
"""

from __future__ import annotations

from fastlin.tools import roofline

step_bytes = roofline.step_bytes
step_flops = roofline.step_flops
blas_info = roofline.blas_info
blas_summary = roofline.blas_summary
cpu_name = roofline.cpu_name


class HardwareLimits:
    """The best read bandwidth (per case) and SGEMM rate seen in this run."""

    def __init__(self):
        self._gemm = None  # (flops/s, method)
        self._read = {}  # case -> (bytes/s, method, bytes read)
        self._samples = {"gemm": []}

    def observe(self, case, X, *, repeats=5):
        """Measure both ceilings now (over ``X`` for the read) and keep the best."""
        bw, bw_method = roofline.read_bandwidth(X, repeats=repeats)
        self._samples.setdefault(case, []).append(bw)
        if case not in self._read or bw > self._read[case][0]:
            self._read[case] = (bw, bw_method, int(X.nbytes))
        rate, rate_method = roofline.gemm_rate(2048, repeats=3)
        self._samples["gemm"].append(rate)
        if self._gemm is None or rate > self._gemm[0]:
            self._gemm = (rate, rate_method)

    def for_case(self, case, X=None):
        """Limits for ``case`` (measured first if they never were)."""
        if case not in self._read:
            if X is None:
                return None
            self.observe(case, X, repeats=9)
        bw, bw_method, nbytes = self._read[case]
        rate, rate_method = self._gemm
        return roofline.Limits(bw, bw_method, nbytes, rate, rate_method, blas_summary(), cpu_name())

    def measured(self):
        """The best values and every sample, for the JSON's machine_info."""
        out = {}
        if self._gemm is not None:
            out["gemm_GFLOPs"] = round(self._gemm[0] / 1e9, 1)
            out["gemm_method"] = self._gemm[1]
            out["gemm_GFLOPs_samples"] = [round(v / 1e9, 1) for v in self._samples["gemm"]]
        for case, (bw, method, _) in self._read.items():
            out[f"read_GBps[{case}]"] = round(bw / 1e9, 2)
            out[f"read_method[{case}]"] = method
            out[f"read_GBps_samples[{case}]"] = [round(v / 1e9, 2) for v in self._samples.get(case, [])]
        return out
