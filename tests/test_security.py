"""Security of a run: credentials never printed, logged or written; a run cannot write outside
its prefix; outputs carry ids, never names.

The credential test runs the real CLI (its own local Ray, 2 CPUs) against the real S3-compatible
test server with a sentinel key pair in its environment, then searches everything the run left:
its stdout and stderr, every object under the output prefix (outputs, summary, manifest, report),
and every file Ray wrote for it (session logs of the driver, raylet, GCS and workers).
"""
from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile

import pyarrow as pa
import pytest

from cluster.layout import OUTPUT_TABLES, RunLayout
from rebalancer import outputs
from rebalancer.errors import RunError, StorageError
from rebalancer.generate import GeneratorSettings, generate_book
from rebalancer.schema import HOUSEHOLD_TABLES
from rebalancer.storage import open_uri

BIN = os.path.dirname(sys.executable)


def _cli_env(s3_bucket, key_id: str, secret: str, ray_tmp: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RAY_"))}
    env.update(AWS_ACCESS_KEY_ID=key_id, AWS_SECRET_ACCESS_KEY=secret, AWS_REGION="us-east-1",
               AWS_ENDPOINT_URL_S3=s3_bucket.endpoint_url, AWS_EC2_METADATA_DISABLED="true",
               AWS_CONFIG_FILE="/nonexistent/aws-config", AWS_SHARED_CREDENTIALS_FILE="/nonexistent/aws-credentials",
               RAY_TMPDIR=ray_tmp, OPENBLAS_NUM_THREADS="1")
    return env


def _everything_under(root: str) -> list[tuple[str, bytes]]:
    found = []
    for d, _, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            if os.path.isfile(p) and not os.path.islink(p):
                try:
                    with open(p, "rb") as fh:
                        found.append((p, fh.read()))
                except OSError:
                    pass  # sockets, vanished files
    return found


@pytest.mark.slow
def test_credentials_never_reach_output_logs_or_errors(s3_bucket, tmp_path):
    key_id = "AKIA" + secrets.token_hex(8).upper()
    secret = "sentinel" + secrets.token_hex(16)
    ray_tmp = tempfile.mkdtemp(prefix="/tmp/rs")  # short: Ray's socket paths must stay under ~100 chars
    try:
        env = _cli_env(s3_bucket, key_id, secret, ray_tmp)
        book, out = s3_bucket.uri("book"), s3_bucket.uri("runs")
        generate_book(GeneratorSettings(accounts=60, seed=3, accounts_per_bucket=30), book, overwrite=True)
        streams = []
        for argv, ok in (
                (["run", "--book", book, "--out", out, "--run-id", "sec", "--num-cpus", "2", "--json"], True),
                (["run", "--book", book, "--out", out, "--run-id", "sec", "--num-cpus", "2"], True),  # resumed
                (["report", "--run", f"{out}/sec"], True),
                # Failures print errors: a missing book, a bucket that does not exist.
                (["run", "--book", s3_bucket.uri("nobook"), "--out", out, "--num-cpus", "2"], False),
                (["run", "--book", "s3://no-such-bucket-for-this-test/book", "--out", out, "--num-cpus", "2"], False)):
            p = subprocess.run([os.path.join(BIN, "rebalance"), *argv], env=env, capture_output=True, timeout=600)
            streams.append((" ".join(argv), p.stdout + p.stderr))
            if ok:
                assert p.returncode == 0, p.stderr.decode()[-2000:]
            else:
                assert p.returncode == 2 and b"error:" in p.stderr, (p.returncode, p.stderr.decode()[-2000:])

        objects = []
        for page in s3_bucket.client.get_paginator("list_objects_v2").paginate(Bucket=s3_bucket.name, Prefix="runs/"):
            for o in page.get("Contents", []):
                objects.append((o["Key"], s3_bucket.client.get_object(Bucket=s3_bucket.name, Key=o["Key"])["Body"].read()))
        keys = {k for k, _ in objects}
        assert {"runs/sec/summary.json", "runs/sec/manifest.json", "runs/sec/report.html"} <= keys
        assert any(k.startswith("runs/sec/trades/") for k in keys)
        logs = _everything_under(ray_tmp)
        assert any(p.endswith(".log") or p.endswith(".out") or p.endswith(".err") for p, _ in logs), "no Ray logs found"

        for where, blob in streams + objects + logs:
            for token in (secret, key_id):
                assert token.encode() not in blob, f"credential found in {where}"
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.mark.parametrize("run_id", ["../escape", "a/b", "..", ".hidden", "x" * 129, "", "run id", "ok\n"])
def test_a_run_cannot_write_outside_its_prefix(tmp_path, run_id):
    with pytest.raises(RunError):
        RunLayout(open_uri(str(tmp_path)), run_id)


def test_every_file_of_a_run_is_under_its_prefix(tmp_path):
    layout = RunLayout(open_uri(str(tmp_path / "runs")), "2021-04-21-093112-7f3a")
    assert layout.loc.path == str(tmp_path / "runs" / "2021-04-21-093112-7f3a")
    from cluster.plan import Piece, Shard

    shard = Shard(7, (Piece(3, 0, 1),), households=1.0, accounts=1.0, work=1.0)
    files = layout.files(shard).values()
    assert sorted(f.split("/")[0] for f in files) == sorted(OUTPUT_TABLES)
    for rel in [*files, layout.record(shard)]:
        full = os.path.normpath(layout.loc.join(rel))
        assert full.startswith(layout.loc.path + os.sep)


@pytest.mark.parametrize("uri", ["s3://bkt/runs/../books", "s3://bkt/./runs", "s3://bkt/runs//x"])
def test_output_prefixes_with_dot_segments_are_refused(uri):
    with pytest.raises(StorageError):
        open_uri(uri)


# Columns that would hold personal data; none may be in an output or in a book's client tables.
_PERSONAL = ("name", "first", "last", "email", "phone", "address", "street", "zip", "postal", "ssn", "tin",
             "tax_id", "birth", "dob", "passport", "iban", "routing")
# String columns outputs may carry: enumerations, solver status, reasons and the data key of a rejection.
_OUTPUT_STRINGS = {"account_type", "status", "solver", "reason", "stage", "table", "key", "field", "side", "term",
                   "cash_note"}


def _columns(schema: pa.Schema) -> list[str]:
    return [f.name for f in schema]


@pytest.mark.parametrize("schema", [outputs.TRADES_SCHEMA, outputs.HOUSEHOLDS_SCHEMA, outputs.ACCOUNTS_SCHEMA,
                                    outputs.REJECTED_SCHEMA], ids=["trades", "households", "accounts", "rejected"])
def test_outputs_carry_ids_not_names(schema):
    cols = _columns(schema)
    assert any(c.endswith("_id") for c in cols)
    assert not [c for c in cols if any(tok in c.split("_") or c == tok for tok in _PERSONAL)]
    strings = {f.name for f in schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)}
    assert strings <= _OUTPUT_STRINGS, strings - _OUTPUT_STRINGS


def test_client_tables_of_a_book_hold_ids_not_names():
    for spec in HOUSEHOLD_TABLES:  # households, accounts, lots, recent trades
        cols = _columns(spec.schema)
        assert not [c for c in cols if any(tok in c.split("_") for tok in _PERSONAL)], (spec.name, cols)
