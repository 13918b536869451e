"""SageMaker Runtime's ``InvokeEndpoint`` REST route, as the local endpoint answers it.

``POST /endpoints/{EndpointName}/invocations`` is what botocore's ``sagemaker-runtime`` client
(and so ``sagemaker.predictor.Predictor``) sends. Headers: ``Content-Type``, ``Accept``,
``X-Amzn-SageMaker-Target-Model``, ``X-Amzn-SageMaker-Custom-Attributes``. The answer on success
is the model's body with its ``Content-Type``, ``x-Amzn-Invoked-Production-Variant`` and the
request's custom attributes echoed back (imgpipe's model returns them unchanged, which is what a
SageMaker endpoint returns when the model does so). Failures are the error shapes of the service
model (``botocore/data/sagemaker-runtime/2017-05-13/service-2.json``), which botocore turns into
its exceptions:

- ``ValidationError`` (HTTP 400, ``{"message"}``): an endpoint name this server does not serve
  (``Endpoint X of account Y not found.``, as AWS words it), a header over its length limit or
  not ASCII, a bad, unknown or missing ``TargetModel``, a ``TargetModel`` on a single-model
  endpoint;
- ``ModelError`` (HTTP 424, ``{"Message", "OriginalStatusCode", "OriginalMessage",
  "LogStreamArn"}``): the model answered 4xx/5xx (e.g. 415 for a wrong content type) or its
  archive failed to load.

The error code travels in the ``x-amzn-ErrorType`` header, as AWS sends it. Only the standard
library is imported here.
"""
from __future__ import annotations

import json
import re
from typing import Optional

ACCOUNT_ID = "000000000000"  # the local "account" (also in the local endpoints' ARNs)
VARIANT_NAME = "AllTraffic"
ROUTE = re.compile(r"^/endpoints/(?P<name>[^/]*)/invocations$")
HEADER_MAX = 1024  # Header, CustomAttributesHeader and TargetModelHeader: max 1024 characters
ERROR_TYPE_SUFFIX = ":http://internal.amazon.com/coral/com.amazon.sagemaker/"

Response = tuple[str, list, bytes]


def endpoint_name(path: str) -> Optional[str]:
    """The ``EndpointName`` of a runtime route path, or ``None`` for any other path."""
    match = ROUTE.match(path)
    if match is None:
        return None
    from urllib.parse import unquote

    return unquote(match.group("name"))


def _error(status: int, code: str, document: dict) -> Response:
    from http import HTTPStatus

    body = json.dumps(document).encode()
    phrase = "Failed Dependency" if status == 424 else HTTPStatus(status).phrase
    headers = [("Content-Type", "application/json"), ("x-amzn-ErrorType", code + ERROR_TYPE_SUFFIX),
               ("Content-Length", str(len(body)))]
    return f"{status} {phrase}", headers, body


def validation_error(message: str) -> Response:
    """400 ``ValidationError`` with ``message``."""
    return _error(400, "ValidationError", {"message": message})


def endpoint_not_found(name: str) -> Response:
    """How SageMaker Runtime answers an endpoint name it does not know."""
    return validation_error(f"Endpoint {name} of account {ACCOUNT_ID} not found.")


def log_stream_arn(region: str, endpoint: str) -> str:
    return f"arn:aws:logs:{region}:{ACCOUNT_ID}:log-group:/aws/sagemaker/Endpoints/{endpoint}"


def model_error(status: int, original: str, *, endpoint: str, region: str, log_path: str = "") -> Response:
    """424 ``ModelError``: the model (container) answered ``status`` with body ``original``."""
    kind = "client" if status < 500 else "server"
    where = f"the endpoint's log ({log_path})" if log_path else "the endpoint's log"
    message = (f"Received {kind} error ({status}) from primary with message \"{original[:1500]}\". "
               f"See {where} for more information.")
    return _error(424, "ModelError", {
        "ErrorCode": f"{kind.upper()}_ERROR_FROM_MODEL",
        "Message": message[:2048],
        "OriginalStatusCode": int(status),
        "OriginalMessage": original[:2048],
        "LogStreamArn": log_stream_arn(region, endpoint),
    })


def header_problem(headers: dict[str, Optional[str]]) -> Optional[str]:
    """A ``ValidationError`` message for a header value over 1024 characters or not ASCII."""
    for name, value in headers.items():
        if value is None:
            continue
        if len(value) > HEADER_MAX:
            return (f"1 validation error detected: Value at '{name}' failed to satisfy constraint: "
                    f"Member must have length less than or equal to {HEADER_MAX}")
        if not value.isascii():
            return (f"1 validation error detected: Value at '{name}' failed to satisfy constraint: "
                    "Member must satisfy regular expression pattern: \\p{ASCII}*")
    return None
