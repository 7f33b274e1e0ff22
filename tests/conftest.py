"""Shared fixtures.

S3: ``s3_server`` is one real S3-compatible server (moto's, in a subprocess) for the whole
session; ``s3_bucket`` gives each test a fresh bucket on it and points the standard AWS
environment variables at it, so production code finds it through ``S3Options.from_env()``
exactly as it would find MinIO or AWS (no test-only code paths).
"""
from __future__ import annotations

import contextlib
import logging
import os

# One BLAS thread per process, as the job runs (see jobs/cli.py).
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
import uuid
from dataclasses import dataclass
from typing import Any

import pytest

try:  # tests/ is on sys.path under pytest's default "prepend" import mode
    from s3server import MotoS3Server
except ImportError:  # tests/ made a package
    from tests.s3server import MotoS3Server

S3_ACCESS_KEY = "testing"
S3_SECRET_KEY = "testing"
S3_REGION = "us-east-1"


@pytest.fixture(scope="session")
def s3_server():
    """A running moto S3 server: ``.endpoint_url``, ``.stop()``, ``.start()`` (same port)."""
    server = MotoS3Server()
    try:
        server.start()
        yield server
    finally:
        server.close()


@dataclass
class S3Bucket:
    name: str
    endpoint_url: str
    client: Any  # boto3 S3 client bound to the test server

    def uri(self, prefix: str = "") -> str:
        prefix = prefix.strip("/")
        return f"s3://{self.name}/{prefix}" if prefix else f"s3://{self.name}"


def _boto3_client(endpoint_url: str):
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        aws_access_key_id=S3_ACCESS_KEY,
        aws_secret_access_key=S3_SECRET_KEY,
        region_name=S3_REGION,
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2, "mode": "standard"}),
    )


def set_test_aws_env(mp: pytest.MonkeyPatch, endpoint_url: str | None = None) -> None:
    """Point the standard AWS environment at the test server (the endpoint, when given): its
    keys and region, no profile, token, role or metadata service, and none of a developer's
    ~/.aws files (profiles, endpoints, s3 settings), which must not leak into tests."""
    for var in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
                "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE",
                "REBALANCER_S3_BACKEND", "REBALANCER_STORAGE_RETRY_SECONDS"):
        mp.delenv(var, raising=False)
    for k, v in {"AWS_ACCESS_KEY_ID": S3_ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET_KEY,
                 "AWS_REGION": S3_REGION, "AWS_EC2_METADATA_DISABLED": "true",
                 "AWS_CONFIG_FILE": "/nonexistent/aws-config",
                 "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials"}.items():
        mp.setenv(k, v)
    if endpoint_url is not None:
        mp.setenv("AWS_ENDPOINT_URL_S3", endpoint_url)


@contextlib.contextmanager
def local_ray(aws_env: bool = False, aws_endpoint_url: str | None = None):
    """A real local Ray of 2 CPUs for a module's tests, shut down after. With ``aws_env`` it
    starts with the test server's AWS environment (:func:`set_test_aws_env`), as an instance
    profile gives a real cluster's workers theirs (endpoints travel with the job); the
    environment is restored after."""
    import ray  # here: most test modules never start Ray

    with pytest.MonkeyPatch.context() as mp:
        if aws_env:
            set_test_aws_env(mp, aws_endpoint_url)
        ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR)
        try:
            yield
        finally:
            ray.shutdown()


@pytest.fixture
def s3_bucket(s3_server, monkeypatch):
    """A fresh, uniquely named bucket, with the AWS environment pointed at the test server."""
    s3_server.start()  # no-op if running; brings it back if an earlier test stopped it
    endpoint = s3_server.endpoint_url

    set_test_aws_env(monkeypatch, endpoint)
    for var in ("NO_PROXY", "no_proxy"):  # never send test traffic through a proxy
        monkeypatch.setenv(var, ",".join(filter(None, ["127.0.0.1", "localhost", os.environ.get(var, "")])))

    client = _boto3_client(endpoint)
    name = f"test-{uuid.uuid4().hex[:16]}"
    client.create_bucket(Bucket=name)
    yield S3Bucket(name=name, endpoint_url=endpoint, client=client)

    # Best effort: free the server's memory (it may have been stopped, and lost the bucket).
    if s3_server.running:
        try:
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
                keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
                if keys:
                    client.delete_objects(Bucket=name, Delete={"Objects": keys})
            for up in client.list_multipart_uploads(Bucket=name).get("Uploads", []):
                client.abort_multipart_upload(Bucket=name, Key=up["Key"], UploadId=up["UploadId"])
            client.delete_bucket(Bucket=name)
        except Exception:
            pass
