"""Profiler findings from what ``train.py`` records: waiting for data, step-time outliers,
start-up time and GPU utilisation (parameters: ``DEFAULT_PARAMETERS["Profiler"]``)."""
from __future__ import annotations

import numpy as np

from imgclf.insights import ISSUES, NO_ISSUES, Recording, Verdict


def data_loader_bottleneck(rec: Recording, p: dict) -> Verdict:
    steps, waits = dict(rec.series("time/step_seconds")), dict(rec.series("time/data_seconds"))
    if not steps:
        return Verdict(NO_ISSUES, "no step timings recorded: nothing to judge")
    total, waiting = sum(steps.values()), sum(waits.get(s, 0.0) for s in steps)
    share = waiting / total if total > 0 else 0.0
    cpu = [v for _, v in rec.series("system/cpu_percent")]
    values = {"data_share": share, "data_seconds": waiting, "step_seconds": total, "steps": len(steps),
              "mean_cpu_percent": float(np.mean(cpu)) if cpu else None}
    status = ISSUES if share > p["bottleneck_share"] else NO_ISSUES
    return Verdict(status, f"{share:.0%} of step time spent waiting for batches ({waiting:.1f} s of {total:.1f} s over "
                   f"{len(steps)} steps; limit {p['bottleneck_share']:.0%})", None, values)


def step_outliers(rec: Recording, p: dict) -> Verdict:
    points = rec.series("time/step_seconds")
    if len(points) < 10:
        return Verdict(NO_ISSUES, f"too few step timings ({len(points)}) to look for outliers")
    times = np.array([v for _, v in points])
    median = float(np.median(times))
    slow = [(s, v) for s, v in points if v > p["outlier_factor"] * median]
    limit = max(p["min_outliers"], p["outlier_share"] * len(points))
    worst = max(points, key=lambda sv: sv[1])
    values = {"outliers": len(slow), "steps": len(points), "median_seconds": median, "slowest_seconds": worst[1],
              "slowest_step": worst[0]}
    status = ISSUES if len(slow) > limit else NO_ISSUES
    return Verdict(status, f"{len(slow)} of {len(points)} steps slower than {p['outlier_factor']:g}x the median "
                   f"{median * 1000:.0f} ms (limit {limit:.0f}); slowest {worst[1] * 1000:.0f} ms at step {worst[0]}",
                   worst[0], values)


def initialization_time(rec: Recording, p: dict) -> Verdict:
    points = rec.series("time/startup_seconds")
    if not points:
        return Verdict(NO_ISSUES, "no start-up time recorded: nothing to judge")
    step, seconds = points[-1]
    status = ISSUES if seconds > p["max_init_seconds"] else NO_ISSUES
    return Verdict(status, f"{seconds:.1f} s from start to the first training step (limit {p['max_init_seconds']:g} s)",
                   step, {"startup_seconds": seconds})


def low_gpu_utilization(rec: Recording, p: dict) -> Verdict:
    if not rec.meta("gpu"):
        return Verdict(NO_ISSUES, "the job trained on the CPU: no GPU to under-use")
    util = [v for _, v in rec.series("system/gpu_utilization")]
    if not util:
        return Verdict(NO_ISSUES, "GPU utilisation was not recorded (no NVML in the container): nothing to judge")
    p95 = float(np.percentile(util, 95))
    status = ISSUES if p95 < p["gpu_p95"] else NO_ISSUES
    return Verdict(status, f"GPU utilisation p95 {p95:.0f}% over {len(util)} readings (limit {p['gpu_p95']:g}%)", None,
                   {"p95": p95, "mean": float(np.mean(util)), "readings": len(util)})


FINDINGS = {"DataLoaderBottleneck": data_loader_bottleneck, "StepOutlier": step_outliers,
            "MaxInitializationTime": initialization_time, "LowGPUUtilization": low_gpu_utilization}
