"""SageMaker Profiler, locally: a system-metrics sampler and ProfilerReport-style findings.

:class:`SystemSampler` samples the machine every ``ProfilingIntervalInMilliseconds`` while a
training job runs (psutil: CPU per core, I/O wait, memory, disk and network throughput;
``nvidia-smi``: GPU utilisation and memory when a GPU is present) and writes the samples as
SageMaker's profiler does, so smdebug's readers and the report read both alike::

    <profiler-output>/system/incremental/<YYYYMMDDHH>/<epoch seconds>.algo-1.json
    {"Type": "cpu", "Name": "cpu0", "Dimension": "CPUUtilization", "Value": 37.5,
     "NodeId": "algo-1", "Timestamp": 1700000000.5}          (one JSON object per line)

Step timings come from smdebug's own framework timeline (``framework/pevents``: the hook
records ``Step:ModeKeys.TRAIN`` events when the job has a profiler config, as on SageMaker).
:func:`profiler_findings` turns both into findings in the spirit of ProfilerReport's rules
(LowGPUUtilization, CPUBottleneck, IOBottleneck, StepOutlier, MaxInitializationTime).
"""
from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np

from pipelines.common import utc_now_iso

NODE_ID = "algo-1"
FILE_ROTATE_SECONDS = 60.0
# ProfilerReport's documented defaults, adapted to a local job.
LOW_GPU_P95 = 70.0  # LowGPUUtilization: p95 below this (and above 10%) means an under-used GPU
CPU_BOTTLENECK_CPU = 90.0  # CPUBottleneck: CPU above this ...
CPU_BOTTLENECK_GPU = 10.0  # ... while the GPU is below this
IO_BOTTLENECK_IOWAIT = 50.0  # IOBottleneck: I/O wait above this ...
BOTTLENECK_SHARE = 0.5  # ... in at least this share of the samples
STEP_OUTLIER_STDDEV = 3.0  # StepOutlier: steps longer than mean + 3 std ...
STEP_OUTLIER_COUNT = 10  # ... more than this many of them (ProfilerReport's n_outliers)
MAX_INIT_SECONDS = 20 * 60.0  # MaxInitializationTime: 20 minutes to the first step


# -- sampling ---------------------------------------------------------------------
def _gpu_readings() -> list[tuple[float, float]]:
    """``[(utilisation %, memory %)]`` per GPU from nvidia-smi; [] without one."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        out = subprocess.run([smi, "--query-gpu=utilization.gpu,memory.used,memory.total",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return []
    readings = []
    for line in out.stdout.strip().splitlines():
        try:
            util, used, total = (float(x) for x in line.split(","))
        except ValueError:
            continue
        readings.append((util, 100.0 * used / total if total else 0.0))
    return readings


def _event(kind: str, name: str, dimension: str, value: float, ts: float) -> dict:
    return {"Type": kind, "Name": name, "Dimension": dimension, "Value": round(float(value), 4),
            "NodeId": NODE_ID, "Timestamp": round(ts, 6)}


class SystemSampler:
    """Samples system metrics every ``interval`` seconds into ``out_dir/system/incremental``
    from a background thread, between :meth:`start` and :meth:`stop` (or as a context)."""

    def __init__(self, out_dir: str | Path, interval: float, gpus: bool = True):
        if interval <= 0:
            raise ValueError(f"sampling interval must be positive, got {interval}")
        self.out_dir = Path(out_dir) / "system" / "incremental"
        self.interval = float(interval)
        self.gpus = gpus
        self.samples = 0
        self.started_at: Optional[float] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._file: Optional[Any] = None
        self._file_opened = 0.0
        self._last_io: Optional[tuple[float, Any, Any]] = None

    def __enter__(self) -> "SystemSampler":
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def start(self) -> None:
        import psutil

        psutil.cpu_percent(percpu=True)  # the first call only primes the counters
        psutil.cpu_times_percent()
        self._last_io = (time.time(), psutil.disk_io_counters(), psutil.net_io_counters())
        self.started_at = time.time()
        self._thread = threading.Thread(target=self._run, name="imgpipe-profiler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._file is not None:
            self._file.close()
            self._file = None

    def _run(self) -> None:
        assert self.started_at is not None
        tick = 1
        while not self._stop.wait(max(0.0, self.started_at + tick * self.interval - time.time())):
            try:
                self._write(self.sample(time.time()))
            except Exception as exc:  # a sampling fault must not kill the job; note it once per file
                self._write([{"Type": "error", "Name": type(exc).__name__, "Dimension": "SamplerError",
                              "Value": 0, "NodeId": NODE_ID, "Timestamp": time.time(), "Message": str(exc)}])
            tick += 1
            now = time.time()
            if self.started_at + tick * self.interval < now:  # fell behind (a stalled machine): skip ahead
                tick = int((now - self.started_at) / self.interval) + 1

    def sample(self, ts: float) -> list[dict]:
        """One sample of every metric at time ``ts``."""
        import psutil

        events = [_event("cpu", f"cpu{i}", "CPUUtilization", v, ts)
                  for i, v in enumerate(psutil.cpu_percent(percpu=True))]
        times = psutil.cpu_times_percent()
        events.append(_event("cpu", "cpu", "I/OWaitPercentage", getattr(times, "iowait", 0.0), ts))
        events.append(_event("memory", "MemoryUsedPercent", "Memory", psutil.virtual_memory().percent, ts))
        disk, net = psutil.disk_io_counters(), psutil.net_io_counters()
        if self._last_io is not None:
            last_ts, last_disk, last_net = self._last_io
            span = max(1e-6, ts - last_ts)
            if disk is not None and last_disk is not None:
                events.append(_event("disk", "ReadBytesPerSecond", "DiskIO", (disk.read_bytes - last_disk.read_bytes) / span, ts))
                events.append(_event("disk", "WriteBytesPerSecond", "DiskIO", (disk.write_bytes - last_disk.write_bytes) / span, ts))
            if net is not None and last_net is not None:
                events.append(_event("network", "ReceivedBytesPerSecond", "Network", (net.bytes_recv - last_net.bytes_recv) / span, ts))
                events.append(_event("network", "SentBytesPerSecond", "Network", (net.bytes_sent - last_net.bytes_sent) / span, ts))
        self._last_io = (ts, disk, net)
        if self.gpus:
            for i, (util, memory) in enumerate(_gpu_readings()):
                events.append(_event("gpu", f"gpu{i}", "GPUUtilization", util, ts))
                events.append(_event("gpu", f"gpu{i}", "GPUMemoryUtilization", memory, ts))
        self.samples += 1
        return events

    def _write(self, events: list[dict]) -> None:
        now = time.time()
        if self._file is None or now - self._file_opened >= FILE_ROTATE_SECONDS:
            if self._file is not None:
                self._file.close()
            hour = datetime.fromtimestamp(now, timezone.utc).strftime("%Y%m%d%H")
            folder = self.out_dir / hour
            folder.mkdir(parents=True, exist_ok=True)
            self._file = open(folder / f"{int(now)}.{NODE_ID}.json", "a", encoding="utf-8")
            self._file_opened = now
        self._file.write("".join(json.dumps(e) + "\n" for e in events))
        self._file.flush()


# -- reading ------------------------------------------------------------------------
def read_system_events(profiler_dir: str | Path) -> list[dict]:
    """Every system-metric event under ``profiler_dir/system``, in time order (a torn last
    line, from a job killed mid-write, is skipped)."""
    events = []
    for path in sorted(Path(profiler_dir, "system").rglob("*.json")):
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict) and "Timestamp" in event and "Dimension" in event:
                events.append(event)
    return sorted(events, key=lambda e: e["Timestamp"])


def read_step_times(profiler_dir: str | Path, mode: str = "TRAIN") -> list[dict]:
    """``[{"step", "start", "duration"}]`` of smdebug's ``Step:ModeKeys.<mode>`` timeline
    events (seconds since the epoch), in step order."""
    steps = []
    for path in sorted(Path(profiler_dir, "framework").rglob("*.json")):
        text = path.read_text(encoding="utf-8", errors="replace").strip()
        try:
            records = json.loads(text)
        except ValueError:  # a timeline left open by a killed job
            try:
                records = json.loads(text.rstrip(",") + "]")
            except ValueError:
                continue
        base = 0.0
        for record in records if isinstance(records, list) else []:
            if not isinstance(record, dict):
                continue
            args = record.get("args") or {}
            if "start_time_since_epoch_in_micros" in args:
                base = float(args["start_time_since_epoch_in_micros"]) / 1e6
            if record.get("name") == f"Step:ModeKeys.{mode}" and record.get("ph") == "X":
                steps.append({"step": int(args.get("step_num", len(steps))), "start": base + record["ts"] / 1e6,
                              "duration": record.get("dur", 0) / 1e6})
    steps.sort(key=lambda s: s["start"])
    for this, following in zip(steps, steps[1:]):  # a step lasts until the next one starts
        this["duration"] = max(this["duration"], following["start"] - this["start"])
    return steps


def series(events: Iterable[dict], dimension: str, name: Optional[str] = None) -> dict[str, list[tuple[float, float]]]:
    """``{name: [(timestamp, value)]}`` of one dimension."""
    out: dict[str, list[tuple[float, float]]] = {}
    for event in events:
        if event.get("Dimension") == dimension and (name is None or event.get("Name") == name):
            out.setdefault(str(event.get("Name")), []).append((float(event["Timestamp"]), float(event["Value"])))
    return out


# -- findings -------------------------------------------------------------------------
@dataclass
class ProfilerFinding:
    """One ProfilerReport-style check: triggered True/False, or None when it does not apply."""

    rule: str
    triggered: Optional[bool]
    details: str
    values: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"Rule": self.rule, "Triggered": self.triggered, "Details": self.details, "Values": self.values}


def _per_sample_mean(points: dict[str, list[tuple[float, float]]]) -> np.ndarray:
    """Mean over cores/GPUs per timestamp."""
    by_ts: dict[float, list[float]] = {}
    for values in points.values():
        for ts, value in values:
            by_ts.setdefault(ts, []).append(value)
    return np.array([np.mean(by_ts[ts]) for ts in sorted(by_ts)])


def profiler_findings(events: list[dict], steps: list[dict], job_start: Optional[float] = None) -> list[ProfilerFinding]:
    """Findings over a job's system metrics and step timings."""
    cpu = _per_sample_mean(series(events, "CPUUtilization"))
    gpu = _per_sample_mean(series(events, "GPUUtilization"))
    iowait = _per_sample_mean(series(events, "I/OWaitPercentage"))
    findings = []
    if gpu.size:
        p95 = float(np.percentile(gpu, 95))
        findings.append(ProfilerFinding("LowGPUUtilization", 10.0 < p95 < LOW_GPU_P95,
                                        f"GPU utilisation p95 {p95:.0f}% (an under-used GPU: 10% < p95 < {LOW_GPU_P95:.0f}%)",
                                        {"p95": p95, "p50": float(np.percentile(gpu, 50))}))
        n = min(cpu.size, gpu.size)
        share = float(np.mean((cpu[:n] > CPU_BOTTLENECK_CPU) & (gpu[:n] < CPU_BOTTLENECK_GPU))) if n else 0.0
        findings.append(ProfilerFinding("CPUBottleneck", share >= BOTTLENECK_SHARE,
                                        f"CPU > {CPU_BOTTLENECK_CPU:.0f}% while GPU < {CPU_BOTTLENECK_GPU:.0f}% in {share:.0%} of samples",
                                        {"share": share}))
    else:
        findings.append(ProfilerFinding("LowGPUUtilization", None, "no GPU metrics: the job ran without a GPU"))
        mean_cpu = float(cpu.mean()) if cpu.size else 0.0
        findings.append(ProfilerFinding("CPUBottleneck", None,
                                        f"no GPU to starve (CPU-only job); mean CPU utilisation {mean_cpu:.0f}%",
                                        {"mean_cpu": mean_cpu}))
    if iowait.size:
        if gpu.size:
            n = min(iowait.size, gpu.size)
            bottleneck = (iowait[:n] > IO_BOTTLENECK_IOWAIT) & (gpu[:n] < CPU_BOTTLENECK_GPU)
        else:
            bottleneck = iowait > IO_BOTTLENECK_IOWAIT
        share = float(np.mean(bottleneck))
        findings.append(ProfilerFinding("IOBottleneck", share >= BOTTLENECK_SHARE,
                                        f"I/O wait > {IO_BOTTLENECK_IOWAIT:.0f}% in {share:.0%} of samples "
                                        f"(max {iowait.max():.0f}%)", {"share": share, "max_iowait": float(iowait.max())}))
    else:
        findings.append(ProfilerFinding("IOBottleneck", None, "no I/O wait samples"))
    findings.append(_step_outliers(steps))
    findings.append(_initialization(steps, job_start))
    return findings


def _step_outliers(steps: list[dict]) -> ProfilerFinding:
    durations = np.array([s["duration"] for s in steps[1:]])  # the first step includes warm-up
    if durations.size < 3:
        return ProfilerFinding("StepOutlier", None, f"too few step timings ({len(steps)}) to look for outliers")
    limit = float(durations.mean() + STEP_OUTLIER_STDDEV * durations.std())
    outliers = [s for s in steps[1:] if s["duration"] > limit]
    return ProfilerFinding(
        "StepOutlier", len(outliers) > STEP_OUTLIER_COUNT,
        f"{len(outliers)} of {durations.size} steps longer than mean + {STEP_OUTLIER_STDDEV:g} std "
        f"({limit * 1000:.0f} ms); median step {np.median(durations) * 1000:.0f} ms",
        {"outliers": [{"step": s["step"], "seconds": round(s["duration"], 4)} for s in outliers[:20]],
         "limit_seconds": limit, "median_seconds": float(np.median(durations))})


def _initialization(steps: list[dict], job_start: Optional[float]) -> ProfilerFinding:
    if not steps or job_start is None:
        return ProfilerFinding("MaxInitializationTime", None, "no step timings: start-up time unknown")
    idle = max(0.0, steps[0]["start"] - job_start)
    return ProfilerFinding("MaxInitializationTime", idle > MAX_INIT_SECONDS,
                           f"{idle:.1f}s from job start to the first training step (limit {MAX_INIT_SECONDS / 60:.0f} min)",
                           {"seconds": idle})


def profiler_report_status(profiler_dir: str | Path, job_start: Optional[float],
                           name: str = "ProfilerReport") -> tuple[dict, list[dict]]:
    """(a ``ProfilerRuleEvaluationStatuses`` entry, the findings) for a job's profiler output."""
    events = read_system_events(profiler_dir)
    now = utc_now_iso()
    if not events:
        return ({"RuleConfigurationName": name, "RuleEvaluationStatus": "Error", "LastModifiedTime": now,
                 "StatusDetails": f"no system metrics under {profiler_dir}: the profiler recorded nothing"}, [])
    findings = profiler_findings(events, read_step_times(profiler_dir), job_start)
    triggered = [f.rule for f in findings if f.triggered]
    status = "IssuesFound" if triggered else "NoIssuesFound"
    details = (f"IssuesFound: {', '.join(triggered)}" if triggered else
               f"NoIssuesFound: {sum(f.triggered is False for f in findings)} check(s) passed, "
               f"{sum(f.triggered is None for f in findings)} not applicable")
    return ({"RuleConfigurationName": name, "RuleEvaluationStatus": status, "StatusDetails": details,
             "LastModifiedTime": now}, [f.as_dict() for f in findings])


def smdebug_profiler_config(profiler: dict, local_path: Path) -> dict:
    """The profilerconfig.json the smdebug hook reads (``SMPROFILER_CONFIG_PATH``): profiling
    on, its output in the job's profiler directory, at the definition's interval."""
    params: dict[str, Any] = {"ProfilerEnabled": True, "LocalPath": str(local_path),
                              "ProfilingIntervalInMilliseconds": int(profiler.get("ProfilingIntervalInMilliseconds") or 500)}
    params.update({k: v for k, v in (profiler.get("ProfilingParameters") or {}).items()})
    return {"ProfilingParameters": params}
