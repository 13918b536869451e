"""moto's IAM enforcement, completed for the AWS calls imgpipe makes, and principals holding
exactly one policy.

What moto 5.2 enforces by itself, once enabled (``moto.core.enable_iam_authentication`` or
``set_initial_no_auth_action_count(0)``; read in moto/core/responses.py,
moto/core/authorization.py, moto/iam/access_control.py):

* every request is authenticated (SigV4 signature, access key of an IAM user or assumed role)
  and its **action** is checked against the principal's identity policies, for every service;
* **resources** only for S3 (``arn:aws:s3:::bucket/key``), IAM roles (only roles that exist: a
  request on a role not created yet, e.g. ``GetRole`` before ``CreateRole``, is checked against
  ``"*"``), SQS queues and STS. Every
  other service's request is checked against resource ``"*"``: a statement scoped to an ARN
  never matches it, so on its own moto would deny every least-privilege SageMaker statement;
* identity-policy **conditions** are ignored (``iam:PassedToService`` always passes); only
  ``StringEquals`` in role trust policies is evaluated;
* ``iam:PassRole`` is never checked (AWS checks it whenever a call passes a role);
* a request with an empty body (a REST ``GET``) is signed over moto's parsed parameters instead of
  the empty payload: every Scheduler ``GetSchedule`` fails with ``SignatureDoesNotMatch``;
* S3's ``HeadBucket`` is checked as ``s3:HeadBucket``, which is no IAM action (AWS checks
  ``s3:ListBucket``); S3 denials say ``Access Denied`` without action or resource.

:func:`enforce` fills the gaps for the calls imgpipe makes: the resource ARN of each SageMaker,
SageMaker runtime, EventBridge, Scheduler and CloudFormation request (SageMaker ARNs with the
name lower-cased, as SageMaker writes them), ``iam:PassRole`` on every role a request passes,
``s3:ListBucket`` for ``HeadBucket``, the signature of empty bodies,
and AWS's wording of a denial (``... is not authorized to perform: A on resource: R``).
"""
from __future__ import annotations

import contextlib
import json
from typing import Iterator, Optional

ACCOUNT = "123456789012"
ADMIN_POLICY = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}

# SageMaker action -> (resource type, request parameter holding the name or ARN)
SAGEMAKER = {
    **{a: ("pipeline", "PipelineName") for a in (
        "CreatePipeline", "UpdatePipeline", "DescribePipeline", "DeletePipeline",
        "StartPipelineExecution", "ListPipelineExecutions")},
    **{a: ("execution", "PipelineExecutionArn") for a in (
        "DescribePipelineExecution", "ListPipelineExecutionSteps", "StopPipelineExecution")},
    **{a: ("arn", "ResourceArn") for a in ("AddTags", "ListTags", "DeleteTags")},
    **{a: ("model", "ModelName") for a in ("CreateModel", "DescribeModel", "DeleteModel")},
    **{a: ("endpoint-config", "EndpointConfigName") for a in (
        "CreateEndpointConfig", "DescribeEndpointConfig", "DeleteEndpointConfig")},
    **{a: ("endpoint", "EndpointName") for a in (
        "CreateEndpoint", "UpdateEndpoint", "DescribeEndpoint", "DeleteEndpoint", "InvokeEndpoint")},
    **{a: ("model-package", "ModelPackageName") for a in ("DescribeModelPackage", "UpdateModelPackage")},
    **{a: ("model-package-group", "ModelPackageGroupName") for a in (
        "CreateModelPackageGroup", "DescribeModelPackageGroup")},
}
JSON_SERVICES = ("sagemaker", "events", "scheduler")
# moto's name of an action -> the IAM action AWS checks
IAM_ACTION = {"s3:HeadBucket": "s3:ListBucket"}
# Requests that pass a role: action -> (parameter path, service the role is passed to)
PASSES_ROLE = {
    ("sagemaker", "CreatePipeline"): (("RoleArn",), "sagemaker.amazonaws.com"),
    ("sagemaker", "UpdatePipeline"): (("RoleArn",), "sagemaker.amazonaws.com"),
    ("sagemaker", "CreateModel"): (("ExecutionRoleArn",), "sagemaker.amazonaws.com"),
    ("events", "PutTargets"): (("Targets", "*", "RoleArn"), "events.amazonaws.com"),
    ("scheduler", "CreateSchedule"): (("Target", "RoleArn"), "scheduler.amazonaws.com"),
    ("scheduler", "UpdateSchedule"): (("Target", "RoleArn"), "scheduler.amazonaws.com"),
}


def _sagemaker_arn(response, kind: str, value: Optional[str]) -> str:
    if not value:
        return "*"
    if value.startswith("arn:"):
        return _lower_name(value)
    if kind == "model-package":  # a group name: ListModelPackages-style requests
        return f"arn:aws:sagemaker:{response.region}:{response.current_account}:model-package-group/{value.lower()}"
    return f"arn:aws:sagemaker:{response.region}:{response.current_account}:{kind}/{value.lower()}"


def _lower_name(arn: str) -> str:
    """A SageMaker ARN as SageMaker writes it (moto keeps the name's case)."""
    head, _, name = arn.partition("/")
    return f"{head}/{name.lower()}" if name else arn


def resource_of(response) -> str:
    """The ARN a request acts on, for the services moto checks against ``"*"``."""
    service, action = response.service_name, response._get_action()
    region, account = response.region, response.current_account
    if service in ("sagemaker", "sagemaker-runtime"):
        kind, param = SAGEMAKER.get(action, (None, None))
        if kind is None:
            return "*"
        if action == "InvokeEndpoint":
            value = response.path.split("/endpoints/")[1].split("/")[0]
        else:
            value = response._get_param(param)
        if kind in ("arn", "execution"):
            return _lower_name(value) if value else "*"
        return _sagemaker_arn(response, kind, value)
    if service == "events":
        name = response._get_param("Name") or response._get_param("Rule")
        return f"arn:aws:events:{region}:{account}:rule/{name}" if name else "*"
    if service == "scheduler" and "/schedules/" in response.path:
        name = response.path.split("/schedules/")[1].split("?")[0].strip("/")
        return f"arn:aws:scheduler:{region}:{account}:schedule/default/{name}"
    if service == "iam" and response._get_param("RoleName"):  # moto: "*" when the role does not exist yet
        return f"arn:aws:iam::{account}:role/{response._get_param('RoleName')}"
    if service == "cloudformation":
        name = response._get_param("StackName")
        return f"arn:aws:cloudformation:{region}:{account}:stack/{name}/*" if name else "*"
    return "*"


def _walk(value, keys: tuple) -> list:
    if not keys:
        return [value]
    if keys[0] == "*":
        return [found for item in (value or []) for found in _walk(item, keys[1:])]
    return _walk(value.get(keys[0]), keys[1:]) if isinstance(value, dict) else []


def _passed_roles(response) -> list[str]:
    """The role ARNs a request passes to a service."""
    paths = PASSES_ROLE.get((response.service_name, response._get_action()))
    if not paths:
        return []
    try:
        body = json.loads(response.body or "{}")
    except ValueError:
        return []
    return [v for v in _walk(body, paths[0]) if isinstance(v, str)]


@contextlib.contextmanager
def enforce(monkeypatch, audit: Optional[list] = None) -> Iterator[None]:
    """moto's IAM enforcement plus resources, ``iam:PassRole`` and AWS's denial wording;
    each check is appended to ``audit`` as (principal ARN, action, resource, allowed)."""
    from moto.core import enable_iam_authentication
    from moto.core.authorization import ActionAuthenticatorMixin
    from moto.core.exceptions import AccessDeniedError, JsonRESTError
    from moto.iam import access_control
    from moto import settings

    class Denied(AccessDeniedError):
        def __init__(self, user_arn: str, action: str, resource: str):
            super().__init__(user_arn, action)
            message = f"User: {user_arn} is not authorized to perform: {action} on resource: {resource}"
            self.description = self.description.replace(
                f"User: {user_arn} is not authorized to perform: {action}", message)

    original_check = access_control.IAMRequestBase.check_action_permitted

    def check(self, resource: str) -> None:
        self._imgpipe_resource = resource
        self._action = IAM_ACTION.get(self._action, self._action)
        try:
            original_check(self, resource)
        except Exception:
            if audit is not None:
                audit.append((self._access_key.arn, self._action, resource, False))
            raise
        if audit is not None:
            audit.append((self._access_key.arn, self._action, resource, True))

    def deny(self) -> None:
        resource = getattr(self, "_imgpipe_resource", "*")
        if self._service in JSON_SERVICES:  # these answer in JSON, as AWS does
            raise JsonRESTError("AccessDeniedException", f"User: {self._access_key.arn} is not authorized "
                                f"to perform: {self._action} on resource: {resource}")
        raise Denied(self._access_key.arn, self._action, resource)

    original_request = access_control.IAMRequestBase._create_aws_request

    def signed_request(self):
        request = original_request(self)
        if not self._body and self._method in ("GET", "HEAD", "DELETE"):  # moto signs a GET's empty body as its parsed parameters (Scheduler)
            request.data = b""
        return request

    original_authorize = ActionAuthenticatorMixin._authenticate_and_authorize_normal_action

    def authorize(self, resource: str = "*") -> None:
        original_authorize(self, resource if resource != "*" else resource_of(self))
        if ActionAuthenticatorMixin.request_count < settings.INITIAL_NO_AUTH_ACTION_COUNT:
            return
        for role in _passed_roles(self):
            request = access_control.IAMRequest(
                account_id=self.current_account, method=self.method, path=self.raw_path, data=self.data,
                body=self.raw_body, headers=self.headers, action="PassRole")
            request._action = "iam:PassRole"
            request.check_action_permitted(role)

    monkeypatch.setattr(access_control.IAMRequestBase, "check_action_permitted", check)
    monkeypatch.setattr(access_control.IAMRequestBase, "_create_aws_request", signed_request)
    monkeypatch.setattr(access_control.IAMRequest, "_raise_access_denied", deny)
    monkeypatch.setattr(ActionAuthenticatorMixin, "_authenticate_and_authorize_normal_action", authorize)
    with enable_iam_authentication():
        yield


def principal(iam, name: str, policy: dict) -> dict:
    """An IAM user holding only ``policy`` (inline); its access keys as boto3 keyword arguments."""
    iam.create_user(UserName=name)
    iam.put_user_policy(UserName=name, PolicyName="only", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return {"aws_access_key_id": key["AccessKeyId"], "aws_secret_access_key": key["SecretAccessKey"]}


def fill(policy: dict, values: dict[str, str]) -> dict:
    """``policy`` with every ``<PLACEHOLDER>`` replaced."""
    text = json.dumps(policy)
    for name, value in values.items():
        text = text.replace(f"<{name}>", value)
    assert "<" not in text, f"unfilled placeholder in {text[text.index('<'):][:60]}"
    return json.loads(text)


def allowed(policy: dict, action: str, resource: str) -> bool:
    """Whether ``policy`` alone allows ``action`` on ``resource`` (moto's evaluation)."""
    from moto.iam.access_control import IAMPolicy, PermissionResult

    return IAMPolicy(json.dumps(policy)).is_action_permitted(action, resource) == PermissionResult.PERMITTED


def without_each_statement(policy: dict) -> Iterator[tuple[str, dict]]:
    """(statement id, policy without that statement), for every statement."""
    for index, statement in enumerate(policy["Statement"]):
        rest = [s for i, s in enumerate(policy["Statement"]) if i != index]
        yield statement.get("Sid", str(index)), {**policy, "Statement": rest}


def policy_blocks(markdown: str, after: str) -> list:
    """The fenced ``json`` blocks of a doc that follow the heading line starting with ``after``,
    up to the next heading of the same or a higher level."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(after))
    level = len(after) - len(after.lstrip("#"))
    blocks, inside, current = [], False, []
    for line in lines[start + 1:]:
        if not inside and line.startswith("#") and len(line) - len(line.lstrip("#")) <= level:
            break
        if line.strip() == "```json":
            inside, current = True, []
        elif inside and line.strip() == "```":
            inside = False
            blocks.append(json.loads("\n".join(current)))
        elif inside:
            current.append(line)
    return blocks


