"""The local Profiler: the system-metrics sampler, its SageMaker file layout, and findings."""
from __future__ import annotations

import re
import time

import numpy as np
import psutil
import pytest

from debugger_jobs import DebugJobs, rule_configs
from pipelines.local.profiler import (
    SystemSampler,
    profiler_findings,
    read_step_times,
    read_system_events,
    series,
)


def _timestamps(events, dimension="Memory"):
    return np.array([t for points in series(events, dimension).values() for t, _ in points])


def test_sampler_records_at_the_configured_interval(tmp_path):
    with SystemSampler(tmp_path, 0.15) as sampler:
        started = time.time()
        time.sleep(1.6)
    events = read_system_events(tmp_path)
    stamps = _timestamps(events)
    assert 9 <= len(stamps) <= 11, stamps  # 1.6 s / 0.15 s
    gaps = np.diff(stamps)
    assert abs(np.median(gaps) - 0.15) < 0.03, gaps
    assert stamps[0] - started == pytest.approx(0.15, abs=0.05)
    assert sampler.samples == len(stamps)
    cores = series(events, "CPUUtilization")
    assert sorted(cores) == [f"cpu{i}" for i in range(psutil.cpu_count())]
    for dimension in ("I/OWaitPercentage", "DiskIO", "Network"):
        assert series(events, dimension), dimension
    assert all(0 <= v <= 100 for points in cores.values() for _, v in points)


def test_files_are_laid_out_as_sagemaker_writes_them_and_smdebug_reads_them(tmp_path):
    with SystemSampler(tmp_path, 0.1):
        time.sleep(0.5)
    files = list((tmp_path / "system" / "incremental").glob("*/*.json"))
    assert files and all(re.fullmatch(r"\d{10}", f.parent.name) for f in files)
    assert all(re.fullmatch(r"\d+\.algo-1\.json", f.name) for f in files)
    from smdebug.profiler.system_metrics_reader import LocalSystemMetricsReader

    reader = LocalSystemMetricsReader(str(tmp_path))
    events = reader.get_events(0, int(time.time() * 1e6) + 10**6)
    assert {e.dimension for e in events} >= {"CPUUtilization", "Memory"}
    assert all(e.node_id == "algo-1" for e in events)


def test_findings_from_metrics():
    t0 = 1_700_000_000.0
    gpu = [{"Type": "gpu", "Name": "gpu0", "Dimension": "GPUUtilization", "Value": 35.0, "Timestamp": t0 + i}
            for i in range(50)]
    cpu = [{"Type": "cpu", "Name": "cpu0", "Dimension": "CPUUtilization", "Value": 95.0, "Timestamp": t0 + i}
           for i in range(50)]
    iowait = [{"Type": "cpu", "Name": "cpu", "Dimension": "I/OWaitPercentage", "Value": 80.0 if i < 30 else 1.0,
               "Timestamp": t0 + i} for i in range(50)]
    steps = [{"step": i, "start": t0 + 30 + i, "duration": 1.0 if i % 3 else 9.0} for i in range(60)]
    steps += [{"step": 60 + i, "start": t0 + 90 + i, "duration": 1.0} for i in range(200)]
    found = {f.rule: f for f in profiler_findings(gpu + cpu + iowait, steps, job_start=t0)}
    assert found["LowGPUUtilization"].triggered is True  # p95 35% < 70%
    assert found["CPUBottleneck"].triggered is False  # the GPU is not below 10%
    assert found["IOBottleneck"].triggered is False  # I/O waits, but the GPU stays busy (35% > 10%)
    # 20 slow steps, but step 0 (warm-up) is never judged
    assert found["StepOutlier"].triggered is True and len(found["StepOutlier"].values["outliers"]) == 19
    assert found["MaxInitializationTime"].values["seconds"] == pytest.approx(30.0)
    cpu_only = {f.rule: f for f in profiler_findings(cpu + iowait, [], job_start=t0)}
    assert cpu_only["IOBottleneck"].triggered is True  # no GPU: 60% of the samples wait on I/O
    assert cpu_only["LowGPUUtilization"].triggered is None and "without a GPU" in cpu_only["LowGPUUtilization"].details
    assert cpu_only["StepOutlier"].triggered is None  # no step timings: not applicable, not a pass


@pytest.fixture(scope="module")
def profiled(tmp_path_factory):
    jobs = DebugJobs(tmp_path_factory.mktemp("profiled"), per_class=5)
    describe = jobs.run("profiled", jobs.request({"learning-rate": "0.01", "epochs": "2"}, profiler_ms=250,
                                                 rules=rule_configs(["Overtraining"])))
    return jobs, describe


def test_training_job_profiles_at_the_definitions_interval(profiled):
    jobs, describe = profiled
    assert describe["TrainingJobStatus"] == "Completed", describe.get("FailureReason")
    output = jobs.store.path(f"s3://imgpipe-debug/profiler/{describe['TrainingJobName']}/profiler-output")
    events = read_system_events(output)
    gaps = np.diff(_timestamps(events))
    assert len(gaps) >= 8 and abs(np.median(gaps) - 0.25) < 0.05, gaps
    steps = read_step_times(output)  # smdebug's own step timeline, from the profiler config we wrote
    assert [s["step"] for s in steps] == list(range(10))  # 5 batches x 2 epochs
    [status] = describe["ProfilerRuleEvaluationStatuses"]
    assert status["RuleConfigurationName"] == "ProfilerReport"
    assert status["RuleEvaluationStatus"] in ("NoIssuesFound", "IssuesFound")
    rules = {f["Rule"]: f for f in describe["ProfilerFindings"]}
    assert set(rules) == {"LowGPUUtilization", "CPUBottleneck", "IOBottleneck", "StepOutlier", "MaxInitializationTime"}
    assert rules["StepOutlier"]["Triggered"] is not None and "median step" in rules["StepOutlier"]["Details"]
    assert 0 < rules["MaxInitializationTime"]["Values"]["seconds"] < 120
    assert describe["ProfilingStatus"] == "Enabled"
