"""``imgpipe run`` and ``imgpipe executions list|describe|retry`` (``imgpipe models``: :mod:`pipelines.models_cli`).

``imgpipe run`` builds the pipeline's definition offline (the very JSON CodeBuild would
upsert), uploads the data directory into the local object store under a content hash (so the
step cache works across runs), checks the parameters against the definition and runs it with
the local engine, showing progress and a summary. Exit codes: 0 succeeded, 1 failed,
2 rejected before anything ran, 130 stopped.
"""
from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from pipelines.common import DEFAULT_PIPELINE_MODULE, UsageError, quiet_loggers
from pipelines.local.engine import (
    DefinitionError,
    Engine,
    ExecutionResult,
    ParameterError,
    check_definition,
)
from pipelines.local.object_store import ObjectStore
from pipelines.local.progress import (
    Progress, format_duration, format_table, insight_lines, rule_rows, steps_table, summary,
)
from pipelines.local.records import Records
from pipelines.local.scratch import collect_garbage
from pipelines.settings import Settings

DATA_PARAMETER = "InputDataUrl"
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_STOPPED = 0, 1, 2, 130


def _settings(args: argparse.Namespace) -> Settings:
    home = getattr(args, "home", None)
    return Settings(home=Path(home)) if home else Settings()


def _error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return EXIT_USAGE


# -- imgpipe run -------------------------------------------------------------------
def parse_parameters(items: Optional[Sequence[str]]) -> dict[str, str]:
    """``["Name=Value", ...]`` → ``{"Name": "Value"}`` (values stay text; the definition types them)."""
    values: dict[str, str] = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise UsageError(f"parameter {item!r} is not Name=Value")
        values[name.strip()] = value
    return values


def _data_files(data_dir: Path) -> list[Path]:
    """Files under ``data_dir`` (dotfiles and dot-directories left out), sorted."""
    return sorted(p for p in data_dir.rglob("*")
                  if p.is_file() and not any(part.startswith(".") for part in p.relative_to(data_dir).parts))


def content_hash(data_dir: Path) -> str:
    """SHA-256 over the relative paths and contents of the files of ``data_dir``."""
    digest = hashlib.sha256()
    for path in _data_files(data_dir):
        digest.update(path.relative_to(data_dir).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def upload_data(store: ObjectStore, bucket: str, data_dir: Path) -> str:
    """Copy ``data_dir`` to ``s3://<bucket>/imgpipe/input/<content hash>`` once; returns the URI."""
    uri = f"s3://{bucket}/imgpipe/input/{content_hash(data_dir)[:20]}"
    marker = store.path(uri + ".complete")
    if not marker.is_file():
        dest = store.path(uri)
        shutil.rmtree(dest, ignore_errors=True)
        for path in _data_files(data_dir):
            target = dest / path.relative_to(data_dir)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(str(data_dir.resolve()))
    return uri


def _pipeline_name(module_name: str, kwargs: dict) -> str:
    if kwargs.get("pipeline_name"):
        return str(kwargs["pipeline_name"])
    from pipelines.pipeline_args import import_pipeline_module

    default = inspect.signature(import_pipeline_module(module_name).get_pipeline).parameters.get("pipeline_name")
    return str(default.default) if default is not None and default.default is not inspect.Parameter.empty else "ImgpipeBuild"


def _load_definition(args: argparse.Namespace, settings: Settings, store: ObjectStore,
                     kwargs: dict) -> tuple[dict, str]:
    """The definition to run and the pipeline's name: built offline from the pipeline module
    (its code uploads land in ``store``), or read from ``--definition``."""
    if args.definition:
        path = Path(args.definition)
        if not path.is_file():
            raise UsageError(f"definition file {path} does not exist")
        try:
            definition = json.loads(path.read_text())
        except ValueError as exc:
            raise UsageError(f"definition file {path} is not JSON: {exc}") from exc
        return definition, str(kwargs.get("pipeline_name") or path.stem)
    from pipelines.offline import build_definition

    full = {"region": settings.region, "role": settings.role_arn,
            "default_bucket": settings.default_bucket, **kwargs}
    with quiet_loggers("sagemaker", "botocore", "boto3"):
        definition = build_definition(module_name=args.pipeline_module, kwargs=full, store=store, settings=settings)
    return definition, _pipeline_name(args.pipeline_module, kwargs)


def _check_definition(definition: dict, values: dict) -> None:
    """The engine's check of the steps and parameters, before the data is uploaded (the data
    URL, filled in after the upload, is checked with a stand-in)."""
    declared = {p["Name"] for p in definition.get("Parameters", [])}
    probe = dict(values)
    if DATA_PARAMETER in declared and DATA_PARAMETER not in probe:
        probe[DATA_PARAMETER] = "s3://placeholder/data"
    check_definition(definition, probe)


def _resolve_data(args: argparse.Namespace, settings: Settings, values: dict, declared: set[str]) -> Optional[Path]:
    """The data directory to upload (None when ``-p InputDataUrl=...`` names the data)."""
    if DATA_PARAMETER in values:
        if args.data:
            raise UsageError(f"give either --data or -p {DATA_PARAMETER}=..., not both")
        return None
    if DATA_PARAMETER not in declared:
        return None
    if args.data:
        return Path(args.data)
    from pipelines.datasets import default_dataset

    path, name = default_dataset(settings.home / "datasets", log=lambda m: print(m, file=sys.stderr))
    print(f"data: default dataset {name} at {path}", file=sys.stderr)
    return path


def _check_data_dir(path: Optional[Path]) -> None:
    if path is None:
        return
    if not path.is_dir():
        raise UsageError(f"data directory {path} does not exist (or is not a directory)")
    if not _data_files(path):
        raise UsageError(f"data directory {path} holds no files")


def cmd_run(args: argparse.Namespace) -> int:
    """``imgpipe run``."""
    settings = _settings(args)
    try:
        values = parse_parameters(args.parameter)
        if args.data:
            _check_data_dir(Path(args.data))
        kwargs = json.loads(args.pipeline_kwargs) if args.pipeline_kwargs else {}
        if not isinstance(kwargs, dict):
            raise UsageError("--pipeline-kwargs must be a JSON object")
        store = ObjectStore(settings.s3_root)
        definition, pipeline_name = _load_definition(args, settings, store, kwargs)
        _check_definition(definition, values)
        declared = {p["Name"] for p in definition.get("Parameters", [])}
        data_dir = _resolve_data(args, settings, values, declared)
        _check_data_dir(data_dir)
    except json.JSONDecodeError as exc:
        return _error(f"--pipeline-kwargs is not JSON: {exc}")
    except (UsageError, ParameterError, DefinitionError) as exc:
        return _error(str(exc))
    if data_dir is not None:
        values[DATA_PARAMETER] = upload_data(store, settings.default_bucket, data_dir)
        print(f"data: {data_dir} -> {values[DATA_PARAMETER]}", file=sys.stderr)
    logging.getLogger("optuna").setLevel(logging.WARNING)  # one line per trial is ours to print
    engine = Engine(settings, on_event=Progress())
    result = engine.run(definition, values, pipeline_name=pipeline_name)
    return _report(result, settings)


def _report(result: ExecutionResult, settings: Settings) -> int:
    print()
    print(summary(result, settings), end="")
    if result.status == "Succeeded":
        return EXIT_OK
    return EXIT_STOPPED if result.status == "Stopped" else EXIT_FAILED


# -- imgpipe executions -------------------------------------------------------------
def _when(ts: Optional[float]) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _short(text: Optional[str], width: int = 70) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= width else text[: width - 3] + "..."


def cmd_executions_list(args: argparse.Namespace) -> int:
    records = Records(_settings(args).db_path)
    records.fail_stale_executions()
    rows = [[e.id, e.pipeline_name, e.status, _when(e.start_time), format_duration(e.duration),
             e.attempt, _short(e.failure_reason, 60) or "-"] for e in records.list_executions(args.limit)]
    if not rows:
        print("no executions yet (run one with `imgpipe run`)")
        return EXIT_OK
    print(format_table(["EXECUTION", "PIPELINE", "STATUS", "STARTED", "DURATION", "ATTEMPT", "FAILURE"], rows))
    return EXIT_OK


def cmd_executions_describe(args: argparse.Namespace) -> int:
    records = Records(_settings(args).db_path)
    records.fail_stale_executions()
    record = records.get_execution(args.execution)
    if record is None:
        return _error(f"no execution {args.execution!r} (see `imgpipe executions list`)")
    print(f"Execution:  {record.id}")
    print(f"ARN:        {record.arn}")
    print(f"Pipeline:   {record.pipeline_name}")
    print(f"Status:     {record.status}" + (f" (attempt {record.attempt})" if record.attempt > 1 else ""))
    print(f"Started:    {_when(record.start_time)}")
    print(f"Ended:      {_when(record.end_time)}  ({format_duration(record.duration)})")
    if record.failure_reason:
        print(f"Failure:    {record.failure_reason}")
    print("\nParameters:")
    print(format_table(["NAME", "VALUE"], sorted(record.parameters.items())))
    print("\nSteps:")
    print(steps_table(record.steps, detail=True))
    rules = rule_rows(record.steps)
    if rules:
        print("\nDebugger / Profiler rules:")
        print(format_table(["STEP", "RULE", "STATUS", "DETAILS"], rules))
    insights = insight_lines(ExecutionResult.from_record(record), _settings(args))
    if insights:
        print("\n" + "\n".join(insights))
    notes = [(s.name, s.failure_reason) for s in record.steps if s.failure_reason and s.status != "NotRun"]
    notes += [(s.name, f"cached: reused {s.cached_from}") for s in record.steps if s.cached_from]
    if notes:
        print()
        for name, text in notes:
            print(f"{name}: {text}")
    return EXIT_OK


def cmd_executions_retry(args: argparse.Namespace) -> int:
    settings = _settings(args)
    try:
        result = Engine(settings, on_event=Progress()).retry(args.execution)
    except ValueError as exc:
        return _error(str(exc))
    return _report(result, settings)


# -- imgpipe gc ----------------------------------------------------------------------
def cmd_gc(args: argparse.Namespace) -> int:
    """``imgpipe gc``: trim the job directories of executions that are not running."""
    settings = _settings(args)
    records = Records(settings.db_path)
    records.fail_stale_executions()
    report = collect_garbage(settings.jobs_root, running=records.running_execution_ids(), dry_run=args.dry_run)
    verb = "would trim" if args.dry_run else "trimmed"
    print(f"{verb} {len(report.trimmed)} job director{'y' if len(report.trimmed) == 1 else 'ies'}, "
          f"{report.freed_bytes / 2**20:.1f} MiB"
          + (f"; killed leftover processes of {len(report.killed)} job(s)" if report.killed else "")
          + (f"; {len(report.skipped)} job(s) of running executions left alone" if report.skipped else ""))
    return EXIT_OK


# -- wiring ----------------------------------------------------------------------------
def _home_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--home", help="state directory (default: $IMGPIPE_HOME or ./.imgpipe)")


def register(subparsers) -> None:
    """Add ``run`` and ``executions`` to the ``imgpipe`` parser."""
    run = subparsers.add_parser("run", help="run the pipeline's definition locally, end to end",
                                description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("--data", help="directory of class folders of images (default: a Fashion-MNIST subset)")
    run.add_argument("-p", "--parameter", action="append", metavar="NAME=VALUE",
                     help="pipeline parameter (repeatable), e.g. -p AccuracyThreshold=0.9")
    _home_option(run)
    run.add_argument("--pipeline-kwargs", metavar="JSON", help="keyword arguments for get_pipeline, as JSON")
    run.add_argument("--pipeline-module", default=DEFAULT_PIPELINE_MODULE, help="module with get_pipeline()")
    run.add_argument("--definition", metavar="FILE",
                     help="run this definition JSON instead of building one (its code must be in the store)")
    run.set_defaults(func=cmd_run)

    executions = subparsers.add_parser("executions", help="list, describe and retry local executions")
    sub = executions.add_subparsers(dest="executions_command", metavar="SUBCOMMAND")
    sub.required = True
    listing = sub.add_parser("list", help="recent executions")
    listing.add_argument("--limit", type=int, default=20)
    _home_option(listing)
    listing.set_defaults(func=cmd_executions_list)
    for name, func, text in (("describe", cmd_executions_describe, "steps, parameters and failures"),
                             ("retry", cmd_executions_retry, "re-run failed and unrun steps")):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("execution", help="execution id (or a unique prefix, or its ARN)")
        _home_option(cmd)
        cmd.set_defaults(func=func)

    gc = subparsers.add_parser("gc", help="free the scratch space of jobs that are not running (logs kept)")
    gc.add_argument("--dry-run", action="store_true", help="only say what would be trimmed")
    _home_option(gc)
    gc.set_defaults(func=cmd_gc)
