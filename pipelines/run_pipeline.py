"""``run-pipeline``: create or update a pipeline in SageMaker, optionally start it and wait.

Same arguments as AWS's SageMaker project seed code (``-n/--module-name``, ``-kwargs/--kwargs``,
``-role-arn/--role-arn``, ``-description/--description``, ``-tags/--tags``) so existing CodeBuild
projects keep working; the seed always started the pipeline and waited, here ``--start`` (the
default) / ``--no-start`` and ``--wait`` choose. The definition is compiled once (the SDK uploads
the step code to S3 as it compiles) and that very definition is upserted, started and, with
``--definition-file``, written out.

Exit status: 0 done; 1 AWS refused or the execution failed (message, no traceback);
2 bad arguments (role ARN, JSON in ``--kwargs``/``--tags``/``--parameters``, region).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

from pipelines.get_pipeline_definition import quiet_sdk
from pipelines.common import DEFAULT_PIPELINE_MODULE, UsageError
from pipelines.pipeline_args import (
    call_get_pipeline,
    convert_struct,
    fill_defaults,
    import_pipeline_module,
    parse_kwargs,
    parse_tags,
)

# botocore's pattern for CreatePipeline.RoleArn.
ROLE_ARN_PATTERN = re.compile(r"arn:aws[a-z\-]*:iam::\d{12}:role/?[a-zA-Z_0-9+=,.@\-_/]+")
TERMINAL_STATUSES = ("Succeeded", "Failed", "Stopped")


def validate_role_arn(role_arn: Optional[str]) -> str:
    if not role_arn:
        raise UsageError("--role-arn is required (the IAM role SageMaker Pipelines assumes)")
    if not ROLE_ARN_PATTERN.fullmatch(role_arn) or len(role_arn) > 2048:
        raise UsageError(
            f"--role-arn {role_arn!r} is not an IAM role ARN "
            "(expected arn:aws:iam::<12-digit account id>:role/<name>)"
        )
    return role_arn


def parse_parameters(text: Optional[str]) -> dict:
    value = convert_struct(text, "--parameters")
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise UsageError(f"--parameters must be a JSON object of pipeline parameters, got {text!r}")
    return value


def aws_defaults(role_arn: str, kwargs: dict) -> dict:
    """Defaults of ``role`` (the pipeline's role) and, unless ``kwargs`` names one, ``region``
    (the AWS configuration's); no region anywhere is a usage error."""
    defaults = {"role": role_arn}
    if not kwargs.get("region"):
        import boto3

        region = boto3.Session().region_name
        if not region:
            raise UsageError('no AWS region: set AWS_REGION or pass "region" in --kwargs')
        defaults["region"] = region
    return defaults


def _custom_tags(module, tags: list, kwargs: dict) -> list:
    """The seed code's optional hook: ``get_pipeline_custom_tags(tags, region, project)``."""
    hook = getattr(module, "get_pipeline_custom_tags", None)
    if not callable(hook):
        return tags
    try:
        return hook(tags, kwargs.get("region"), kwargs.get("sagemaker_project_name"))
    except Exception as exc:  # noqa: BLE001 - optional enrichment, as in the seed code
        print(f"warning: could not get the project's tags: {_error_message(exc)[0]}", file=sys.stderr)
        return tags


# AWS's wording of a denial: "User: <arn> is not authorized to perform: <action> on resource: <arn>
# [because ...]" (S3 quotes the resource, some services drop the colons).
_DENIED = re.compile(r'(?:User: (?P<who>\S+) )?is not authorized to perform:? (?P<action>[\w*:-]+)'
                     r'(?: on resource:? "?(?P<resource>[^\s"]+)"?)?')
# boto3's S3Transfer failure: "Failed to upload <file> to <bucket>/<key>: An error occurred (<code>) when
# calling the <operation> operation: <message>"
_UPLOAD = re.compile(r"Failed to upload (?P<file>.+?) to (?P<bucket>[^/\s]+)/(?P<key>\S+?): "
                     r"An error occurred \((?P<code>\w+)\) when calling the (?P<op>\w+) operation: (?P<message>.*)")
_DENIED_CODES = ("AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "Forbidden")


def refusal(operation: str, code: str, message: str) -> str:
    """One line for an AWS error: ``AWS refused <action> on <resource> (...)`` when AWS named them."""
    found = _DENIED.search(message or "")
    if found:
        where = f" on {found['resource']}" if found["resource"] else ""
        who = f" for {found['who']}" if found["who"] else ""
        return f"AWS refused {found['action']}{where} ({operation}: {code}{who})"
    return f"AWS refused {operation}: {code}: {' '.join(str(message).split())}"


def _upload_refusal(exc: BaseException) -> Optional[str]:
    """S3UploadFailedError (the SDK's code uploads): the IAM action is s3:PutObject on the object."""
    found = _UPLOAD.match(" ".join(str(exc).split()))
    if not found:
        return None
    resource = f"arn:aws:s3:::{found['bucket']}/{found['key']}"
    if found["code"] in _DENIED_CODES:
        return f"AWS refused s3:PutObject on {resource} ({found['op']}: {found['code']}, uploading {found['file']})"
    return f"uploading {found['file']} to s3://{found['bucket']}/{found['key']} failed: {found['code']}: {found['message']}"


def _error_message(exc: BaseException) -> tuple[str, int]:
    """A one-line message and exit status for an exception from boto3/the SDK."""
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import (
        ClientError,
        EndpointConnectionError,
        NoCredentialsError,
        NoRegionError,
        PartialCredentialsError,
    )

    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        return (
            "no AWS credentials found: configure them (aws configure / AWS_PROFILE / "
            "AWS_ACCESS_KEY_ID+AWS_SECRET_ACCESS_KEY, or the CodeBuild/notebook role). "
            "To build the definition without AWS use get-pipeline-definition; "
            "to run it locally use imgpipe run.",
            1,
        )
    if isinstance(exc, NoRegionError):
        return "no AWS region: set AWS_REGION or pass \"region\" in --kwargs", 2
    if isinstance(exc, EndpointConnectionError):
        return f"cannot reach AWS: {exc}", 1
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        operation = getattr(exc, "operation_name", "an AWS call")
        return refusal(operation, str(error.get("Code")), str(error.get("Message"))), 1
    if isinstance(exc, S3UploadFailedError):
        return _upload_refusal(exc) or " ".join(f"{type(exc).__name__}: {exc}".split()), 1
    cause = exc.__cause__ or exc.__context__
    if cause is not None and cause is not exc and isinstance(cause, (ClientError, S3UploadFailedError)):
        return _error_message(cause)  # e.g. the SDK re-raising an AWS error as its own
    return " ".join(f"{type(exc).__name__}: {exc}".split()), 1


def _has_credentials(region: str) -> bool:
    import boto3

    return boto3.Session(region_name=region).get_credentials() is not None


def wait_for_execution(
    client,
    execution_arn: str,
    poll_seconds: float = 30.0,
    timeout_seconds: float = 6 * 3600.0,
    out=None,
    sleep: Callable[[float], None] = time.sleep,
) -> str:
    """Poll the execution, printing each step's status when it changes; return the final status."""
    out = out or sys.stdout
    started = time.monotonic()
    seen: dict[str, str] = {}
    steps_available = True
    status: Optional[str] = None
    while True:
        if steps_available:
            try:
                steps = []
                kwargs = {"PipelineExecutionArn": execution_arn, "SortOrder": "Ascending"}
                while True:
                    page = client.list_pipeline_execution_steps(**kwargs)
                    steps.extend(page.get("PipelineExecutionSteps", []))
                    if not page.get("NextToken"):
                        break
                    kwargs["NextToken"] = page["NextToken"]
                for step in steps:
                    name, step_status = step.get("StepName"), step.get("StepStatus")
                    if seen.get(name) != step_status:
                        seen[name] = step_status
                        reason = f" ({step['FailureReason']})" if step.get("FailureReason") else ""
                        cached = " (cache hit)" if step.get("CacheHitResult") else ""
                        print(f"  {name}: {step_status}{cached}{reason}", file=out, flush=True)
            except Exception as exc:  # noqa: BLE001 - e.g. moto lacks this API
                steps_available = False
                print(f"  (step statuses unavailable: {_error_message(exc)[0]})", file=out)
        description = client.describe_pipeline_execution(PipelineExecutionArn=execution_arn)
        new_status = description.get("PipelineExecutionStatus", "Unknown")
        if new_status != status:
            status = new_status
            print(f"execution: {status}", file=out, flush=True)
        if status in TERMINAL_STATUSES:
            if description.get("FailureReason"):
                print(f"failure reason: {description['FailureReason']}", file=out)
            return status
        if time.monotonic() - started > timeout_seconds:
            print(f"execution still {status} after {timeout_seconds:.0f} s; not waiting longer",
                  file=out)
            return status
        sleep(poll_seconds)


def run(args: argparse.Namespace) -> int:
    quiet_sdk(args.verbose)
    role_arn = validate_role_arn(args.role_arn)
    kwargs = parse_kwargs(args.kwargs)
    tags = parse_tags(args.tags)
    parameters = parse_parameters(args.parameters)

    module = import_pipeline_module(args.module_name)
    if isinstance(kwargs.get("role"), str) and not ROLE_ARN_PATTERN.fullmatch(kwargs["role"]):
        raise UsageError(f'--kwargs "role" {kwargs["role"]!r} is not an IAM role ARN')
    defaults = aws_defaults(role_arn, kwargs)
    if "region" in defaults:
        kwargs.pop("region", None)  # an empty one
    kwargs = fill_defaults(module, kwargs, defaults)
    region = kwargs.get("region")
    if region and not _has_credentials(region):
        from botocore.exceptions import NoCredentialsError

        raise NoCredentialsError()

    from pipelines.sdk_workarounds import freeze_definition

    pipeline = call_get_pipeline(module, kwargs)
    print(f"building the definition of {pipeline.name} (uploads the step code to S3) ...",
          flush=True)
    definition = freeze_definition(pipeline)  # upsert exactly this (no second code upload)
    parsed = json.loads(definition)
    declared = {p["Name"] for p in parsed.get("Parameters", [])}
    unknown = sorted(set(parameters) - declared)
    if unknown:
        raise UsageError(f"--parameters: {', '.join(unknown)} not among the pipeline's "
                         f"parameters ({', '.join(sorted(declared))})")
    print(f"steps: {', '.join(step['Name'] for step in parsed.get('Steps', []))}")
    if args.definition_file:
        Path(args.definition_file).write_text(definition)
        print(f"wrote {args.definition_file}")

    client = pipeline.sagemaker_session.sagemaker_client
    existed = True
    try:
        client.describe_pipeline(PipelineName=pipeline.name)
    except Exception:  # noqa: BLE001 - ResourceNotFound: upsert creates it
        existed = False
    all_tags = _custom_tags(module, list(tags), kwargs)
    response = pipeline.upsert(role_arn=role_arn, description=args.description, tags=all_tags or None)
    print(f"{'updated' if existed else 'created'} pipeline {response.get('PipelineArn', pipeline.name)}")

    if not args.start:
        return 0
    execution = pipeline.start(parameters=parameters or None)
    print(f"started execution {execution.arn}", flush=True)
    if not args.wait:
        return 0
    status = wait_for_execution(
        client, execution.arn, poll_seconds=args.poll_seconds, timeout_seconds=args.wait_timeout
    )
    return 0 if status == "Succeeded" else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="run-pipeline",
        description="Creates or updates a SageMaker pipeline, and starts it.",
    )
    parser.add_argument("-n", "--module-name", dest="module_name", default=DEFAULT_PIPELINE_MODULE,
                        help=f"module with get_pipeline(**kwargs) (default: {DEFAULT_PIPELINE_MODULE})")
    parser.add_argument("-kwargs", "--kwargs", dest="kwargs", default=None,
                        help="JSON object of keyword arguments for get_pipeline")
    parser.add_argument("-role-arn", "--role-arn", dest="role_arn", default=None,
                        help="IAM role the pipeline runs as (also the jobs' role unless "
                        "--kwargs gives \"role\")")
    parser.add_argument("-description", "--description", dest="description", default=None,
                        help="pipeline description")
    parser.add_argument("-tags", "--tags", dest="tags", default=None,
                        help='JSON list of {"Key": "...", "Value": "..."} for the pipeline')
    parser.add_argument("--start", dest="start", action="store_true", default=True,
                        help="start an execution after the upsert (default)")
    parser.add_argument("--no-start", dest="start", action="store_false",
                        help="only create/update the pipeline")
    parser.add_argument("--wait", action="store_true",
                        help="wait for the execution, printing step statuses as they change")
    parser.add_argument("--parameters", default=None,
                        help='JSON object of execution parameters, e.g. \'{"MaxTuningJobs": 8}\'')
    parser.add_argument("--definition-file", default=None,
                        help="also write the upserted definition JSON here")
    parser.add_argument("--poll-seconds", type=float, default=30.0, help=argparse.SUPPRESS)
    parser.add_argument("--wait-timeout", type=float, default=6 * 3600.0,
                        help="seconds --wait waits at most (default 6 h)")
    parser.add_argument("-v", "--verbose", action="store_true", help="SDK logs and tracebacks")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - a CLI: one line, not a traceback
        if args.verbose:
            raise
        message, status = _error_message(exc)
        print(f"error: {message}", file=sys.stderr)
        return status


if __name__ == "__main__":
    sys.exit(main())
