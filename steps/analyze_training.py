"""Training insight without SageMaker Debugger: the processing entry point of AnalyzeTraining.

Reads the TensorBoard event files ``train.py`` recorded (``--tensorboard-dir``: the training
job's ``TensorBoardOutputConfig`` output), evaluates the five rules (LossNotDecreasing,
VanishingGradient, Overfit, Overtraining, PoorWeightInitialization) and the profiler
findings (``imgclf.insights``, ``imgclf.profile_findings``) and writes
``training_insights.json`` to ``--output-dir``::

    {"rules": {"LossNotDecreasing": {"status": "NoIssuesFound", "step": 119,
                                     "values": {...}, "reason": "the training loss fell ..."}, ...},
     "profiler": {"DataLoaderBottleneck": {...}, ...},
     "issues_found": 0, "rules_with_issues": [], "issue_summary": "none", "parameters": {...},
     "steps": 120, "epochs": 5}

Rule parameters are ``--param Rule.name=value`` arguments (defaults tuned for fine-tuning:
``imgclf.insights.DEFAULT_PARAMETERS``). Needs only the standard library, numpy and its
shared ``imgclf`` code: no tensorboard, no smdebug.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

from imgclf.container import write_failure
from imgclf.insights import RULE_FUNCTIONS, Recording, parse_parameters, verdict_lines
from imgclf.profile_findings import FINDINGS
from imgclf.tfevents import event_files

OUTPUT_FILE = "training_insights.json"


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Evaluate training-insight rules on a job's recorded event files.")
    parser.add_argument("--tensorboard-dir", default="/opt/ml/processing/input/tensorboard",
                        help="the training job's TensorBoard output (event files, any depth)")
    parser.add_argument("--output-dir", default="/opt/ml/processing/insights", help=f"where {OUTPUT_FILE} is written")
    parser.add_argument("--param", action="append", default=[], metavar="RULE.NAME=VALUE",
                        help="a rule parameter, e.g. LossNotDecreasing.window_steps=20 (repeatable)")
    return parser


def analyze(recording: Recording, params: dict) -> dict:
    """The ``training_insights.json`` document for ``recording``."""
    rules = {name: check(recording, params[name]).as_dict() for name, check in RULE_FUNCTIONS.items()}
    profiler = {name: check(recording, params["Profiler"]).as_dict() for name, check in FINDINGS.items()}
    flagged = [name for name, verdict in rules.items() if verdict["status"] == "IssuesFound"]
    return {"rules": rules, "profiler": profiler, "issues_found": len(flagged), "rules_with_issues": flagged,
            # one string for a FailStep's message (a list would not read as text there)
            "issue_summary": "; ".join(f"{name} ({rules[name]['reason']})" for name in flagged) or "none",
            "profiler_issues_found": sum(v["status"] == "IssuesFound" for v in profiler.values()),
            "steps": len(recording.series("train/loss")), "epochs": len(recording.epochs()), "parameters": params}


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        params = parse_parameters(args.param)
        if not Path(args.tensorboard_dir).is_dir() or not event_files(args.tensorboard_dir):
            raise FileNotFoundError(f"no TensorBoard event files under {args.tensorboard_dir}: did the training job have a "
                                    "TensorBoardOutputConfig (train.py records only then, or with --tensorboard-dir)?")
        insights = analyze(Recording.read(args.tensorboard_dir), params)
    except (ValueError, FileNotFoundError) as exc:
        write_failure(f"{type(exc).__name__}: {exc}")
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / OUTPUT_FILE).write_text(json.dumps(insights, indent=2))
    for line in verdict_lines(insights):
        print(line, flush=True)
    print(f"wrote {out / OUTPUT_FILE}: {insights['issues_found']} rule(s) with issues", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
