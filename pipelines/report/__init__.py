"""``imgpipe report EXECUTION``: one self-contained HTML report of a pipeline execution.

Sections (each a ``<section id=...>``): ``summary`` (run and steps), ``tuning`` (trials and
objective by trial), ``training`` (train/valid loss and accuracy by epoch), ``debugger`` (rule
verdicts with the tensors behind them: loss curve, gradient norms), ``system`` (Profiler
utilisation timelines and findings), ``evaluation`` (test confusion matrix, per-class
accuracy), ``model`` (registered package and approval status). CSS is inline and every plot
is a ``data:`` URI (matplotlib, Agg): the file fetches nothing.

Backends gather the same :class:`ReportData`:

- ``local``: the local engine's records and object store;
- ``aws``: ``list_pipeline_execution_steps``, ``describe_training_job`` (rule statuses),
  the tuning job's trials, the Debugger and Profiler output downloaded from S3 (read with
  smdebug's ``create_trial``), ``evaluation.json`` and the model package.

Modules: :mod:`~pipelines.report.data` (what a report shows), ``collect_local`` /
``collect_aws`` (gathering it), ``plots`` and ``render`` (the HTML); this module is the CLI.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import webbrowser
from pathlib import Path
from typing import Any

from pipelines.report.collect_aws import collect_aws
from pipelines.report.collect_local import collect_local
from pipelines.report.data import SECTIONS, ReportData
from pipelines.report.render import render_html, write_report

__all__ = ["SECTIONS", "ReportData", "collect_aws", "collect_local", "render_html", "write_report", "register"]


def cmd_report(args: argparse.Namespace) -> int:
    """``imgpipe report``."""
    import os

    os.environ.setdefault("MPLBACKEND", "Agg")
    try:
        if args.backend == "aws":
            import boto3

            with tempfile.TemporaryDirectory(prefix="imgpipe-report-") as work:
                data = collect_aws(args.execution, boto3.client("sagemaker"), boto3.client("s3"), Path(work))
        else:
            from pipelines.settings import Settings

            settings = Settings(home=Path(args.home)) if args.home else Settings()
            data = collect_local(args.execution, settings)
    except LookupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out or f"imgpipe-report-{data.execution['id']}.html")
    write_report(data, out)
    print(f"report: {out}")
    for note in data.notes:
        print(f"  not shown: {note}", file=sys.stderr)
    if args.open:
        webbrowser.open(out.resolve().as_uri())
    return 0


def register(subparsers: Any) -> None:
    """Add ``report`` to the ``imgpipe`` parser."""
    parser = subparsers.add_parser("report", help="write a self-contained HTML report of an execution",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("execution", help="local execution id (or prefix), or a SageMaker execution ARN with --backend aws")
    parser.add_argument("--out", metavar="FILE", help="HTML file to write (default: imgpipe-report-<id>.html)")
    parser.add_argument("--open", action="store_true", help="open the report in a browser")
    parser.add_argument("--backend", choices=("local", "aws"), default="local", help="where the execution ran")
    parser.add_argument("--home", help="state directory (default: $IMGPIPE_HOME or ./.imgpipe)")
    parser.set_defaults(func=cmd_report)
