"""Model hosting on SageMaker real-time endpoints (boto3): :class:`SageMakerHosting`.

It implements :class:`pipelines.backends.Hosting`, as ``pipelines.local.hosting.LocalHosting``
does on this machine. The deploy pipeline's steps (``steps/deploy.py``,
``steps/check_endpoint.py``) and the CLI pick one through :func:`pipelines.backends.get_hosting`.

This module is shipped into the deploy pipeline's processing jobs next to the step scripts, as
``aws/hosting.py`` (see :mod:`pipelines.aws`): it imports only the standard library,
boto3/botocore and the backends module.

SageMaker deployment, in :meth:`SageMakerHosting.deploy`:

* a new model (``Containers: [{"ModelPackageName": <package ARN>}]``: the package's image,
  artifact and environment) and a new endpoint config (variant ``AllTraffic``, data capture
  of requests and responses at the given sampling percentage) per deployment, names
  ``<endpoint>-v<version>-<UTC timestamp>``;
* no endpoint yet: ``CreateEndpoint``; an endpoint serving another package (or other
  settings): ``UpdateEndpoint`` with a blue/green ``DeploymentConfig`` (the old fleet keeps
  serving until the new one is healthy; with CloudWatch alarms, SageMaker rolls back when one
  fires during the baking period); the same package and settings: nothing (``Unchanged``);
* waits until the endpoint is ``InService`` and checks it serves the new config: an update
  SageMaker rolled back is an error that names the failure reason.

Multi-model endpoints, in :meth:`SageMakerHosting.deploy_multi_model` (see
:mod:`pipelines.aws.multi_model`): the packages' artifacts are synchronised under
``<multi_model_url>/<endpoint>/`` (``v<version>/model.tar.gz`` each); an endpoint already
serving a multi-model model of that image and prefix with these settings needs nothing more
(the served set changed, no restart: ``Updated``; the same set: ``Unchanged``); otherwise a model
with ``PrimaryContainer.Mode = MultiModel`` and a config are created and the endpoint created or
updated as above.
"""
from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from typing import Any, Callable, Optional, Sequence

if __package__ == "aws":  # the deploy steps' container: backends.py shipped next to this package
    from backends import HostingError

    from aws import multi_model
else:
    from pipelines.aws import multi_model
    from pipelines.backends import HostingError

VARIANT_NAME = "AllTraffic"  # blue/green updates need the same variant name in both configs
TRANSITIONAL_STATUSES = ("Creating", "Updating", "SystemUpdating", "RollingBack", "Deleting")
NAME_LIMIT = 63  # model, endpoint config and endpoint names: [a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}


def resource_name(endpoint_name: str, version: Any, now: Optional[datetime] = None) -> str:
    """``<endpoint>-v<version>-<YYYYmmdd-HHMMSS>``, the endpoint part cut to fit 63 characters."""
    stamp = (now or datetime.now(timezone.utc)).strftime("%Y%m%d-%H%M%S")
    suffix = f"-v{version}-{stamp}"
    return endpoint_name[: NAME_LIMIT - len(suffix)].rstrip("-") + suffix


def _error_code(exc: Exception) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


class SageMakerHosting:
    """:class:`pipelines.backends.Hosting` on SageMaker real-time endpoints (boto3).

    Args:
        region: AWS region (ignored when ``sagemaker_client``/``runtime_client`` are given).
        model_role_arn: execution role of the models (reads the artifact, pulls the image);
            needed by :meth:`deploy` only.
        data_capture_url: S3 prefix for captured requests/responses; needed by :meth:`deploy`.
        rollback_alarms: CloudWatch alarm names that roll an update back while it bakes.
        bake_seconds: how long the new fleet is watched (alarms) before the old one goes.
        multi_model_url: S3 prefix under which each multi-model endpoint keeps its artifacts
            (``<multi_model_url>/<endpoint>/``); needed by :meth:`deploy_multi_model`.
        poll_seconds, timeout_seconds: waiting for the endpoint; ``sleep`` for tests.
    """

    def __init__(
        self,
        region: Optional[str] = None,
        *,
        model_role_arn: Optional[str] = None,
        data_capture_url: Optional[str] = None,
        rollback_alarms: Sequence[str] = (),
        bake_seconds: int = 300,
        multi_model_url: Optional[str] = None,
        poll_seconds: float = 30.0,
        timeout_seconds: float = 3600.0,
        sagemaker_client: Any = None,
        runtime_client: Any = None,
        s3_client: Any = None,
        sleep: Callable[[float], None] = time.sleep,
    ):
        if sagemaker_client is None or runtime_client is None:
            import boto3

            session = boto3.Session(region_name=region)
            sagemaker_client = sagemaker_client or session.client("sagemaker")
            runtime_client = runtime_client or session.client("sagemaker-runtime")
        self.region = region
        self.sm = sagemaker_client
        self.runtime = runtime_client
        self._s3 = s3_client
        self.multi_model_url = multi_model_url
        self.model_role_arn = model_role_arn
        self.data_capture_url = data_capture_url
        self.rollback_alarms = list(rollback_alarms)
        self.bake_seconds = bake_seconds
        self.poll_seconds = poll_seconds
        self.timeout_seconds = timeout_seconds
        self.sleep = sleep

    @property
    def s3(self) -> Any:
        """The S3 client (multi-model artifacts), made on first use."""
        if self._s3 is None:
            import boto3

            self._s3 = boto3.Session(region_name=self.region).client("s3")
        return self._s3

    # ------------------------------------------------------------------ reads
    def describe_endpoint(self, endpoint_name: str) -> Optional[dict]:
        """Endpoint status, config, ``Mode`` and what it serves (``ModelPackageArn``, or a
        multi-model endpoint's ``TargetModels``); ``None`` if there is none."""
        try:
            endpoint = self.sm.describe_endpoint(EndpointName=endpoint_name)
        except Exception as exc:  # noqa: BLE001 - botocore ClientError
            if _error_code(exc) == "ValidationException" and "not find" in str(exc).lower():
                return None
            raise
        described = {
            "EndpointName": endpoint["EndpointName"],
            "EndpointArn": endpoint.get("EndpointArn"),
            "EndpointStatus": endpoint["EndpointStatus"],
            "EndpointConfigName": endpoint.get("EndpointConfigName"),
            "CreationTime": endpoint.get("CreationTime"),
            "LastModifiedTime": endpoint.get("LastModifiedTime"),
            "FailureReason": endpoint.get("FailureReason"),
        }
        if endpoint.get("EndpointConfigName"):
            described.update(self._config_details(endpoint["EndpointConfigName"]))
        return {k: v for k, v in described.items() if v is not None}

    def _config_details(self, config_name: str) -> dict:
        """Model, package, instances and capture percentage of an endpoint config."""
        config = self.sm.describe_endpoint_config(EndpointConfigName=config_name)
        variant = (config.get("ProductionVariants") or [{}])[0]
        capture = config.get("DataCaptureConfig") or {}
        details = {
            "ModelName": variant.get("ModelName"),
            "InstanceType": variant.get("InstanceType"),
            "InstanceCount": variant.get("InitialInstanceCount"),
            "DataCaptureSamplingPercentage": (capture.get("InitialSamplingPercentage", 0)
                                              if capture.get("EnableCapture") else 0),
        }
        if variant.get("ModelName"):
            model = self.sm.describe_model(ModelName=variant["ModelName"])
            container = (model.get("Containers") or [model.get("PrimaryContainer") or {}])[0]
            details["Mode"] = container.get("Mode") or "SingleModel"
            if details["Mode"] == "MultiModel":
                details.update(Image=container.get("Image"), ModelDataUrl=container.get("ModelDataUrl"),
                               TargetModels=multi_model.list_target_models(self.s3, container["ModelDataUrl"]))
            else:
                details["ModelPackageArn"] = container.get("ModelPackageName")
        return details

    def list_endpoints(self) -> list[dict]:
        """Every endpoint of the account and region, described, newest first."""
        names = []
        for page in self.sm.get_paginator("list_endpoints").paginate(SortBy="CreationTime",
                                                                     SortOrder="Descending"):
            names += [e["EndpointName"] for e in page.get("Endpoints", [])]
        return [d for d in (self.describe_endpoint(n) for n in names) if d is not None]

    def invoke(self, endpoint_name: str, body: bytes, content_type: str, *,
               target_model: Optional[str] = None, accept: Optional[str] = None) -> Any:
        """The endpoint's decoded JSON answer (``target_model``: the model of a multi-model
        endpoint); :class:`HostingError` (with the status) otherwise."""
        request = {"EndpointName": endpoint_name, "Body": body, "ContentType": content_type,
                   "Accept": accept or "application/json"}
        if target_model:
            request["TargetModel"] = target_model
        try:
            response = self.runtime.invoke_endpoint(**request)
        except Exception as exc:  # noqa: BLE001 - botocore ClientError (ModelError, ...)
            response = getattr(exc, "response", None)
            if response is None:
                raise
            error = response.get("Error", {})
            status = response.get("OriginalStatusCode") or response.get(
                "ResponseMetadata", {}).get("HTTPStatusCode")
            message = response.get("OriginalMessage") or error.get("Message") or str(exc)
            raise HostingError(f"{endpoint_name}: HTTP {status}: {message}", status) from None
        payload = response["Body"].read()
        try:
            return json.loads(payload)
        except ValueError:
            raise HostingError(f"{endpoint_name}: the answer is not JSON: {payload[:200]!r}") from None

    # ------------------------------------------------------------------ writes
    def deploy(self, endpoint_name: str, model_package: dict, *, instance_type: str,
               instance_count: int, data_capture_percent: int) -> dict:
        """Create or update ``endpoint_name`` to serve ``model_package``; wait until healthy."""
        package_arn = model_package["ModelPackageArn"]
        current = self._settled(endpoint_name)
        wanted = {"ModelPackageArn": package_arn, "InstanceType": instance_type,
                  "InstanceCount": int(instance_count),
                  "DataCaptureSamplingPercentage": int(data_capture_percent)}
        result = {"EndpointName": endpoint_name, "ModelPackageArn": package_arn}
        if current and current["EndpointStatus"] == "InService" and all(
                current.get(k) == v for k, v in wanted.items()):
            return {**result, "Action": "Unchanged", "EndpointConfigName": current["EndpointConfigName"]}
        if current and current["EndpointStatus"] == "Failed":
            raise HostingError(
                f"endpoint {endpoint_name} is Failed ({current.get('FailureReason', 'no reason given')}) "
                "and cannot be updated: delete it, then deploy again")
        name = resource_name(endpoint_name, model_package.get("ModelPackageVersion", "0"))
        self._create_model(name, {"ModelPackageName": package_arn})
        action = self._switch(endpoint_name, current, name, instance_type, int(instance_count),
                              int(data_capture_percent), package_arn)
        return {**result, "Action": action, "EndpointConfigName": name}

    def deploy_multi_model(self, endpoint_name: str, model_packages: list[dict], *, instance_type: str,
                           instance_count: int, data_capture_percent: int) -> dict:
        """Serve every package of ``model_packages`` behind ``endpoint_name`` (multi-model).

        Their artifacts are synchronised under the endpoint's S3 prefix; an endpoint already in
        multi-model mode on that prefix and image, with these settings, keeps running (the
        served set changes without a restart); otherwise a new model and config are deployed.
        """
        if not model_packages:
            raise HostingError(f"no model packages to serve behind {endpoint_name}")
        packages = sorted(model_packages, key=lambda p: int(p.get("ModelPackageVersion", 0)), reverse=True)
        prefix = multi_model.endpoint_prefix(self.multi_model_url or "", endpoint_name)
        container = multi_model.model_container(packages, prefix)
        current = self._settled(endpoint_name)
        if current and current["EndpointStatus"] == "Failed":
            raise HostingError(
                f"endpoint {endpoint_name} is Failed ({current.get('FailureReason', 'no reason given')}) "
                "and cannot be updated: delete it, then deploy again")
        synced = multi_model.sync_artifacts(self.s3, prefix, packages)
        result = {"EndpointName": endpoint_name, "Mode": "MultiModel", "TargetModels": synced["TargetModels"],
                  "ModelPackageArns": [p["ModelPackageArn"] for p in packages]}
        settings = {"Mode": "MultiModel", "Image": container["Image"], "ModelDataUrl": prefix,
                    "InstanceType": instance_type, "InstanceCount": int(instance_count),
                    "DataCaptureSamplingPercentage": int(data_capture_percent)}
        if current and current["EndpointStatus"] == "InService" and all(
                current.get(k) == v for k, v in settings.items()):
            action = "Updated" if synced["Added"] or synced["Removed"] else "Unchanged"
            return {**result, "Action": action, "EndpointConfigName": current["EndpointConfigName"]}
        name = resource_name(endpoint_name, packages[0].get("ModelPackageVersion", "0"))
        self._create_model(name, container)
        action = self._switch(endpoint_name, current, name, instance_type, int(instance_count),
                              int(data_capture_percent), f"multi-model {prefix}")
        return {**result, "Action": action, "EndpointConfigName": name}

    def _switch(self, endpoint_name: str, current: Optional[dict], name: str, instance_type: str,
                instance_count: int, percent: int, what: str) -> str:
        """Config ``name`` for model ``name``, then create or update the endpoint and wait; the action."""
        self._create_config(name, name, instance_type, instance_count, percent)
        if current is None:
            self.sm.create_endpoint(EndpointName=endpoint_name, EndpointConfigName=name)
            action = "Created"
        else:
            self.sm.update_endpoint(EndpointName=endpoint_name, EndpointConfigName=name,
                                    DeploymentConfig=self.deployment_config())
            action = "Updated"
        final = self._settled(endpoint_name, must_exist=True)
        if final["EndpointStatus"] != "InService" or final.get("EndpointConfigName") != name:
            served = final.get("ModelPackageArn", "its previous model")
            raise HostingError(
                f"deploying {what} to {endpoint_name} failed "
                f"({final.get('FailureReason', final['EndpointStatus'])}); "
                f"the endpoint is {final['EndpointStatus']} with {served}")
        return action

    def deployment_config(self) -> dict:
        """Blue/green, all traffic at once after the new fleet is healthy, alarms optional."""
        config: dict = {
            "BlueGreenUpdatePolicy": {
                "TrafficRoutingConfiguration": {"Type": "ALL_AT_ONCE",
                                                "WaitIntervalInSeconds": self.bake_seconds},
                "TerminationWaitInSeconds": self.bake_seconds,
            }
        }
        if self.rollback_alarms:
            config["AutoRollbackConfiguration"] = {
                "Alarms": [{"AlarmName": name} for name in self.rollback_alarms]}
        return config

    def _create_model(self, name: str, container: dict) -> None:
        """A model of one container: ``{"ModelPackageName": arn}`` or a multi-model container."""
        if not self.model_role_arn:
            raise HostingError("SageMakerHosting needs model_role_arn to create models")
        if container.get("Mode") == "MultiModel":
            self.sm.create_model(ModelName=name, ExecutionRoleArn=self.model_role_arn, PrimaryContainer=container)
        else:
            self.sm.create_model(ModelName=name, ExecutionRoleArn=self.model_role_arn, Containers=[container])

    def _create_config(self, name: str, model_name: str, instance_type: str,
                       instance_count: int, percent: int) -> None:
        if not self.data_capture_url:
            raise HostingError("SageMakerHosting needs data_capture_url to create endpoint configs")
        self.sm.create_endpoint_config(
            EndpointConfigName=name,
            ProductionVariants=[{"VariantName": VARIANT_NAME, "ModelName": model_name,
                                 "InstanceType": instance_type, "InitialInstanceCount": instance_count}],
            DataCaptureConfig={
                "EnableCapture": percent > 0,
                "InitialSamplingPercentage": percent,
                "DestinationS3Uri": self.data_capture_url,
                "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
                "CaptureContentTypeHeader": {"JsonContentTypes": ["application/json"]},
            },
        )

    def _settled(self, endpoint_name: str, must_exist: bool = False) -> Optional[dict]:
        """The endpoint once it is in no transitional status (``None`` if absent)."""
        deadline = time.monotonic() + self.timeout_seconds
        while True:
            described = self.describe_endpoint(endpoint_name)
            if described is None:
                if must_exist:
                    raise HostingError(f"endpoint {endpoint_name} disappeared while deploying")
                return None
            if described["EndpointStatus"] not in TRANSITIONAL_STATUSES:
                return described
            if time.monotonic() > deadline:
                raise HostingError(f"endpoint {endpoint_name} still {described['EndpointStatus']} "
                                   f"after {self.timeout_seconds:.0f} s")
            self.sleep(self.poll_seconds)

    def delete_endpoint(self, endpoint_name: str) -> None:
        """Delete the endpoint, then its endpoint config and model (nothing if absent)."""
        described = self.describe_endpoint(endpoint_name)
        if described is None:
            return
        self.sm.delete_endpoint(EndpointName=endpoint_name)
        if described.get("EndpointConfigName"):
            self.sm.delete_endpoint_config(EndpointConfigName=described["EndpointConfigName"])
        if described.get("ModelName"):
            self.sm.delete_model(ModelName=described["ModelName"])
