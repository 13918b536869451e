"""AWS errors as one line naming the refused action and resource (pipelines.run_pipeline), for
the errors boto3 really raises: a ClientError in AWS's denial wording (moto under IAM enforcement)
and S3Transfer's S3UploadFailedError, whose message is boto3's own."""
from __future__ import annotations

import pytest
from awsfakes import fake_aws
from iamcheck import enforce, principal

from pipelines.run_pipeline import _error_message

READ_ONLY = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"}]}


@pytest.fixture
def reader(monkeypatch, tmp_path):
    """An S3 client of a principal that may only read, IAM enforced."""
    with fake_aws(monkeypatch) as session:
        session.client("s3").create_bucket(Bucket="imgpipe-bucket")
        keys = principal(session.client("iam"), "reader", READ_ONLY)
        with enforce(monkeypatch):
            yield session.client("s3", **keys)


def test_a_refused_upload_names_s3_putobject_and_the_object(reader, tmp_path):
    from boto3.exceptions import S3UploadFailedError

    code = tmp_path / "sourcedir.tar.gz"
    code.write_bytes(b"x" * 100)
    with pytest.raises(S3UploadFailedError) as raised:
        reader.upload_file(str(code), "imgpipe-bucket", "p/code/sourcedir.tar.gz")
    message, status = _error_message(raised.value)
    assert status == 1 and "\n" not in message
    assert message.startswith("AWS refused s3:PutObject on arn:aws:s3:::imgpipe-bucket/p/code/sourcedir.tar.gz (PutObject: AccessDenied")


def test_a_refused_call_names_the_action_and_resource(reader):
    from botocore.exceptions import ClientError

    with pytest.raises(ClientError) as raised:
        reader.put_object(Bucket="imgpipe-bucket", Key="k", Body=b"x")
    message, _ = _error_message(raised.value)
    assert message.startswith("AWS refused PutObject: AccessDenied"), message  # moto's S3 names neither
    aws = ClientError({"Error": {"Code": "AccessDeniedException", "Message": (
        "User: arn:aws:sts::1:assumed-role/cb/x is not authorized to perform: sagemaker:CreatePipeline on "
        "resource: arn:aws:sagemaker:us-east-1:1:pipeline/p because no identity-based policy allows the "
        "sagemaker:CreatePipeline action")}}, "CreatePipeline")
    assert _error_message(aws)[0] == ("AWS refused sagemaker:CreatePipeline on arn:aws:sagemaker:us-east-1:1:pipeline/p "
                                      "(CreatePipeline: AccessDeniedException for arn:aws:sts::1:assumed-role/cb/x)")
    s3 = ClientError({"Error": {"Code": "AccessDenied", "Message": (
        'User: arn:aws:sts::1:assumed-role/cb/x is not authorized to perform: s3:PutObject on resource: '
        '"arn:aws:s3:::b/k" because no identity-based policy allows the s3:PutObject action')}}, "PutObject")
    assert _error_message(s3)[0].startswith("AWS refused s3:PutObject on arn:aws:s3:::b/k (PutObject")
