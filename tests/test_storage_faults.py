"""Object storage going away during a run, on a real local Ray (2 CPUs) against a real
S3-compatible server that stops listening and comes back with its data (DurableS3Server).

- an outage shorter than the retry budget is ridden out: the run completes with outputs
  byte-identical to an undisturbed run, and its summary counts the retried operations;
- an outage longer than the budget fails exactly the shards that needed storage while it was
  down: each is listed with the file and the error, none of them left a record or an output,
  every other shard is complete and identical to the undisturbed run; once storage is back,
  re-running the same run id finishes the run with identical outputs.
"""
from __future__ import annotations

import hashlib
import os
import threading
import time

import boto3
import pytest
from botocore.config import Config
from conftest import S3_ACCESS_KEY, S3_REGION, S3_SECRET_KEY, local_ray
from s3server import DurableS3Server

from cluster.driver import RunOutcome, RunRequest, run_book
from cluster.layout import OUTPUT_TABLES
from rebalancer.generate import GeneratorSettings, generate_book
from rebalancer.storage import S3Options, open_uri

pytestmark = pytest.mark.slow

BOOK = GeneratorSettings(accounts=240, seed=5, accounts_per_bucket=60)  # 4 buckets
SHARD_WORK = 3_000  # many small shards: an outage lands mid-run
BUCKET = "faults"


@pytest.fixture(scope="module")
def durable_s3():
    server = DurableS3Server()
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def env(durable_s3):
    """The AWS environment of the driver and of Ray's workers, pointed at the durable server."""
    with local_ray(aws_env=True, aws_endpoint_url=durable_s3.endpoint_url):
        yield


@pytest.fixture(scope="module")
def client(env, durable_s3):
    c = boto3.client("s3", endpoint_url=durable_s3.endpoint_url, aws_access_key_id=S3_ACCESS_KEY,
                     aws_secret_access_key=S3_SECRET_KEY, region_name=S3_REGION,
                     config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}))
    c.create_bucket(Bucket=BUCKET)
    return c


@pytest.fixture(scope="module")
def book(client):
    uri = f"s3://{BUCKET}/book"
    generate_book(BOOK, uri, overwrite=True)
    return uri


@pytest.fixture(scope="module")
def baseline(book, tmp_path_factory):
    """An undisturbed run: SHA-256 of every output file, by path relative to the run."""
    out = str(tmp_path_factory.mktemp("base"))
    outcome = run_book(RunRequest(book=book, out=out, run_id="base", shard_work=SHARD_WORK), stream=None)
    assert outcome.complete
    return outcome, _hashes(outcome.uri)


def _hashes(run_uri: str) -> dict[str, str]:
    loc = open_uri(run_uri)
    return {rel: hashlib.sha256(loc.read_bytes(rel)).hexdigest()
            for rel in loc.files() if rel.split("/")[0] in OUTPUT_TABLES}


def _in_thread(req: RunRequest) -> tuple[threading.Thread, list]:
    box: list = []

    def target():
        try:
            box.append(run_book(req, stream=None))
        except BaseException as e:  # noqa: BLE001 - handed to the test
            box.append(e)
    th = threading.Thread(target=target, daemon=True)
    th.start()
    return th, box


def _wait_for(count, at_least: int, timeout: float = 180.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        n = count()
        if n >= at_least:
            return n
        time.sleep(0.2)
    raise AssertionError(f"no progress within {timeout:.0f}s")


def _result(th: threading.Thread, box: list, timeout: float = 300.0) -> RunOutcome:
    th.join(timeout)
    assert not th.is_alive(), "the run did not finish"
    if isinstance(box[0], BaseException):
        raise box[0]
    return box[0]


def test_an_outage_shorter_than_the_retry_budget_is_ridden_out(durable_s3, client, book, baseline):
    base, base_hashes = baseline
    planned = base.summary["shards"]["planned"]
    durable_s3.start()

    def records() -> int:
        resp = client.list_objects_v2(Bucket=BUCKET, Prefix="runs/outage/_shards/")
        return resp.get("KeyCount", 0)

    th, box = _in_thread(RunRequest(book=book, out=f"s3://{BUCKET}/runs", run_id="outage", shard_work=SHARD_WORK,
                                    s3=S3Options.from_env(retry_seconds=90)))
    seen = _wait_for(records, 1)
    durable_s3.stop()  # connection refused from here on
    try:
        assert seen < planned, "the run finished before the outage: make the shards smaller"
        time.sleep(8)
    finally:
        durable_s3.start()
    outcome = _result(th, box)

    assert outcome.complete, outcome.text
    s = outcome.summary
    assert s["shards"]["failed"] == [] and s["shards"]["complete"] == planned
    assert s["faults"]["storage_retries"] > 0, s["faults"]  # the outage was met, and retried
    assert s["counts"]["accounts_in"] == s["counts"]["accounts_out"] == BOOK.accounts
    assert _hashes(outcome.uri) == base_hashes
    assert open_uri(outcome.uri).exists("manifest.json")


def test_an_outage_longer_than_the_budget_fails_exactly_the_shards_it_hit(durable_s3, client, book, baseline,
                                                                         tmp_path):
    base, base_hashes = baseline
    planned = base.summary["shards"]["planned"]
    durable_s3.start()
    out = str(tmp_path / "runs")  # the book is on S3; the outputs are local, so the driver can report
    run_dir = os.path.join(out, "long")

    def records() -> int:
        return len(os.listdir(os.path.join(run_dir, "_shards"))) if os.path.isdir(os.path.join(run_dir, "_shards")) else 0

    th, box = _in_thread(RunRequest(book=book, out=out, run_id="long", shard_work=SHARD_WORK,
                                    s3=S3Options.from_env(retry_seconds=1)))
    seen = _wait_for(records, 1)
    durable_s3.stop()
    try:
        assert seen < planned, "the run finished before the outage: make the shards smaller"
        outcome = _result(th, box)
    finally:
        durable_s3.start()

    s = outcome.summary
    assert not outcome.complete and not open_uri(outcome.uri).exists("manifest.json")
    failed = {f["shard_id"]: f["error"] for f in s["shards"]["failed"]}
    assert failed, "no shard met the outage"
    assert s["shards"]["complete"] + len(failed) == planned and s["shards"]["not_run"] == []
    for shard_id, error in failed.items():
        assert error.startswith("StorageUnavailableError: "), error
        assert f"{book}/" in error and "storage unavailable after" in error, error  # which file, and why
        name = f"shard-{shard_id:05d}"
        assert not os.path.exists(os.path.join(run_dir, "_shards", f"{name}.json"))
        for t in OUTPUT_TABLES:
            assert not os.path.exists(os.path.join(run_dir, t, f"{name}.parquet"))
    # What completed is exactly what an undisturbed run writes; nothing half-written is left.
    got = _hashes(outcome.uri)
    assert got and all(base_hashes[rel] == h for rel, h in got.items())
    assert len(got) == len(OUTPUT_TABLES) * s["shards"]["complete"]
    assert not [f for f in open_uri(outcome.uri).files() if ".tmp-" in f]
    assert "FAILED shard" in outcome.text and "same --run-id" in outcome.text

    # Storage is back: the same run id finishes the run, rerunning only the failed shards.
    again = run_book(RunRequest(book=book, out=out, run_id="long", shard_work=SHARD_WORK), stream=None)
    assert again.complete, again.text
    assert again.summary["shards"]["complete_before"] == s["shards"]["complete"]
    assert again.summary["shards"]["ran_now"] == len(failed)
    assert _hashes(again.uri) == base_hashes
    assert again.summary["counts"]["accounts_in"] == again.summary["counts"]["accounts_out"] == BOOK.accounts
