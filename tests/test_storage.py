"""rebalancer.storage against the local filesystem and a real S3 server (moto, over HTTP).

S3 tests run on both backends: Arrow's native S3 client and s3fs. Production code finds the
server through the standard AWS environment (see the ``s3_bucket`` fixture), never through a
test-only code path.
"""
from __future__ import annotations

import datetime as dt
import os
import pickle
import time

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pytest

from rebalancer.errors import RebalancerError, StorageError, StorageUnavailableError
from rebalancer.storage import Location, RetryPolicy, S3Options, is_transient, open_uri, retry_count

try:
    from s3server import MotoS3Server
except ImportError:  # tests/ made a package
    from tests.s3server import MotoS3Server

BACKENDS = ["arrow", "s3fs"]


# ---------------------------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------------------------
@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


@pytest.fixture
def s3_loc(s3_bucket, backend, monkeypatch) -> Location:
    """A prefix in a fresh bucket, resolved the way production does it: ``open_uri(uri)`` with
    the backend chosen by ``REBALANCER_S3_BACKEND`` and everything else from the AWS env."""
    monkeypatch.setenv("REBALANCER_S3_BACKEND", backend)
    return open_uri(s3_bucket.uri("books/b1"))


@pytest.fixture(params=["local", "s3-arrow", "s3-s3fs"])
def any_loc(request, tmp_path, monkeypatch) -> Location:
    """The same Location API on a local directory and on S3 through each backend."""
    if request.param == "local":
        return open_uri(str(tmp_path / "books" / "b1"))
    bucket = request.getfixturevalue("s3_bucket")
    monkeypatch.setenv("REBALANCER_S3_BACKEND", request.param.removeprefix("s3-"))
    return open_uri(bucket.uri("books/b1"))


@pytest.fixture
def offline_aws_env(monkeypatch):
    """Dummy AWS settings for tests that only build clients and never talk to a server."""
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3",
                "AWS_DEFAULT_REGION", "REBALANCER_S3_BACKEND"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")


def sample_table(n: int = 1000) -> pa.Table:
    rng = np.random.default_rng(7)
    return pa.table({
        "household_id": pa.array(np.arange(n, dtype=np.int64)),
        "value": pa.array(rng.random(n)),
        "name": pa.array([f"h{i}" if i % 7 else None for i in range(n)], pa.string()),
        "as_of": pa.array([dt.date(2024, 1, 1) + dt.timedelta(days=i % 30) for i in range(n)], pa.date32()),
        "flag": pa.array(rng.random(n) > 0.5),
    })


def s3_key(loc: Location, rel: str) -> tuple[str, str]:
    """(bucket, key) of a file under an S3 Location, for checking it with boto3."""
    bucket, _, key = loc.join(rel).partition("/")
    return bucket, key


# ---------------------------------------------------------------------------------------------
# URI resolution
# ---------------------------------------------------------------------------------------------
def test_open_uri_plain_path(tmp_path, monkeypatch):
    loc = open_uri(str(tmp_path / "book"))
    assert loc.is_local and isinstance(loc.fs, pafs.LocalFileSystem)
    assert loc.path == str(tmp_path / "book")
    assert loc.uri == str(tmp_path / "book")

    monkeypatch.chdir(tmp_path)
    rel = open_uri("out/run1")
    assert rel.is_local and rel.path == str(tmp_path / "out" / "run1")
    assert rel.uri == "out/run1"


def test_open_uri_file_uri(tmp_path):
    loc = open_uri(f"file://{tmp_path}/book")
    assert loc.is_local
    assert loc.path == f"{tmp_path}/book"


@pytest.mark.parametrize("uri, path", [
    ("s3://bkt/prefix", "bkt/prefix"),
    ("s3://bkt/prefix/", "bkt/prefix"),
    ("s3://bkt/a/b/c", "bkt/a/b/c"),
    ("s3://bkt", "bkt"),
    ("s3://bkt/", "bkt"),
    ("s3a://bkt/prefix", "bkt/prefix"),
])
def test_open_uri_s3(offline_aws_env, backend, uri, path):
    loc = open_uri(uri, S3Options(endpoint_url="http://127.0.0.1:9", backend=backend))
    assert not loc.is_local
    assert loc.path == path
    assert loc.uri == uri
    assert loc.child("x", "y").path == f"{path}/x/y"


@pytest.mark.parametrize("uri", ["", "gs://bkt/x", "http://host/x", "hdfs://nn/x", "s3:///prefix", "s3://",
                                 "s3://bkt/runs/../books", "s3://bkt/runs/./x", "s3://bkt/a//b", "s3://bkt/x?versionId=1",
                                 "s3://bkt/x#frag"])
def test_open_uri_rejects(offline_aws_env, uri):
    with pytest.raises(StorageError) as ei:
        open_uri(uri)
    assert isinstance(ei.value, RebalancerError)


@pytest.mark.parametrize("endpoint", ["localhost:9000", "127.0.0.1", "ftp://host", "http://", "s3://bkt", "",
                                      "https://s3.example.com:8443/base"])
def test_s3options_rejects_bad_endpoint(endpoint):
    with pytest.raises(ValueError, match="endpoint"):
        S3Options(endpoint_url=endpoint)


@pytest.mark.parametrize("bad", ["boto3", "", "S3FS", None])
def test_s3options_rejects_bad_backend(bad):
    with pytest.raises(ValueError, match="backend"):
        S3Options(backend=bad)


@pytest.mark.parametrize("endpoint", ["http://127.0.0.1:9000", "https://minio.example.com", "https://s3.example.com:8443"])
def test_s3options_accepts_http_endpoints(endpoint):
    assert S3Options(endpoint_url=endpoint).endpoint_url == endpoint


def test_s3options_from_env_precedence():
    env = {
        "AWS_ENDPOINT_URL": "http://generic:1",
        "AWS_ENDPOINT_URL_S3": "http://s3only:2",
        "AWS_REGION": "eu-west-1",
        "AWS_DEFAULT_REGION": "us-west-2",
    }
    o = S3Options.from_env(env)
    assert (o.endpoint_url, o.region, o.backend) == ("http://s3only:2", "eu-west-1", "arrow")

    # fall-backs: the generic endpoint, the default region; empty values count as unset
    o = S3Options.from_env({"AWS_ENDPOINT_URL": "http://generic:1", "AWS_ENDPOINT_URL_S3": "",
                            "AWS_REGION": "", "AWS_DEFAULT_REGION": "us-west-2"})
    assert (o.endpoint_url, o.region) == ("http://generic:1", "us-west-2")

    assert S3Options.from_env({}) == S3Options()
    assert S3Options.from_env({"REBALANCER_S3_BACKEND": "s3fs"}).backend == "s3fs"

    # explicit overrides win; None overrides leave the environment's value alone
    o = S3Options.from_env(env, endpoint_url="https://cli:3", region="ap-south-1", backend="s3fs")
    assert (o.endpoint_url, o.region, o.backend) == ("https://cli:3", "ap-south-1", "s3fs")
    o = S3Options.from_env(env, endpoint_url=None, region=None)
    assert (o.endpoint_url, o.region) == ("http://s3only:2", "eu-west-1")

    # values are validated whatever their source
    with pytest.raises(ValueError):
        S3Options.from_env({"AWS_ENDPOINT_URL_S3": "minio:9000"})
    with pytest.raises(ValueError):
        S3Options.from_env({"REBALANCER_S3_BACKEND": "boto"})


def test_s3options_from_env_reads_os_environ(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://generic:1")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://s3only:2")
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-west-2")
    monkeypatch.setenv("REBALANCER_S3_BACKEND", "s3fs")
    assert S3Options.from_env() == S3Options(endpoint_url="http://s3only:2", region="us-west-2", backend="s3fs")


def test_backend_selected_by_env(s3_loc, backend, s3_bucket):
    """open_uri(uri) with no options builds the backend REBALANCER_S3_BACKEND names, aimed at the
    endpoint from AWS_ENDPOINT_URL_S3."""
    fs = s3_loc.fs
    if backend == "arrow":
        assert isinstance(fs, pafs.S3FileSystem)
        assert fs.region == "us-east-1"
    else:
        import s3fs

        assert isinstance(fs, pafs.PyFileSystem)
        inner = fs.handler.fs
        assert isinstance(inner, s3fs.S3FileSystem)
        assert inner.client_kwargs["endpoint_url"] == s3_bucket.endpoint_url
    # ... and it really talks to the test server
    s3_loc.write_bytes("probe.txt", b"hi")
    bucket, key = s3_key(s3_loc, "probe.txt")
    assert s3_bucket.client.get_object(Bucket=bucket, Key=key)["Body"].read() == b"hi"


# ---------------------------------------------------------------------------------------------
# round trips, listing, deletion (local and S3 through both backends)
# ---------------------------------------------------------------------------------------------
def test_bytes_round_trip(any_loc):
    any_loc.write_bytes("a/b/c.bin", b"\x00\x01payload\xff")
    assert any_loc.read_bytes("a/b/c.bin") == b"\x00\x01payload\xff"
    any_loc.write_bytes("a/b/c.bin", b"replaced")  # overwrite
    assert any_loc.read_bytes("a/b/c.bin") == b"replaced"
    any_loc.write_bytes("empty.bin", b"")
    assert any_loc.read_bytes("empty.bin") == b""


def test_json_round_trip(any_loc):
    obj = {"z": 1, "a": [1, 2.5, None, True], "nested": {"k": "v", "unicode": "é€"}}
    any_loc.write_json("meta/book.json", obj)
    assert any_loc.read_json("meta/book.json") == obj
    text = any_loc.read_bytes("meta/book.json").decode()
    assert text.endswith("\n") and text.index('"a"') < text.index('"z"')  # sorted, stable text


def test_parquet_round_trip(any_loc):
    t = sample_table()
    any_loc.write_parquet("households/bucket-00000.parquet", t)
    assert any_loc.read_parquet("households/bucket-00000.parquet").equals(t)
    assert any_loc.read_parquet("households/bucket-00000.parquet", columns=["value", "name"]).equals(
        t.select(["value", "name"]))


def test_missing_file_raises_file_not_found(any_loc):
    with pytest.raises(FileNotFoundError):
        any_loc.read_bytes("nope.bin")
    with pytest.raises(FileNotFoundError):
        any_loc.read_parquet("nope/part-0.parquet")


def test_parquet_bytes_identical_everywhere(any_loc, tmp_path):
    """Fixed writer settings: the same table gives the same bytes on every filesystem."""
    ref = open_uri(str(tmp_path / "ref"))
    ref.write_parquet("t.parquet", sample_table())
    any_loc.write_parquet("t.parquet", sample_table())
    assert any_loc.read_bytes("t.parquet") == ref.read_bytes("t.parquet")


def test_listdir(any_loc):
    for rel in ("t/b.parquet", "t/a.parquet", "t/c.json", "t/sub/deep.parquet", "other/x.bin"):
        any_loc.write_bytes(rel, b"x")
    assert any_loc.listdir("t") == ["a.parquet", "b.parquet", "c.json"]  # files only, sorted
    assert any_loc.listdir("t/sub") == ["deep.parquet"]
    assert any_loc.listdir("missing") == []
    assert any_loc.listdir("") == []  # only subdirectories at the top


def test_exists(any_loc):
    assert not any_loc.exists("book.json")
    any_loc.write_bytes("t/x.parquet", b"x")
    assert any_loc.exists("t/x.parquet")
    assert any_loc.exists("t")  # a "directory" (a prefix, on S3)
    assert any_loc.exists()
    assert not any_loc.exists("t/y.parquet")
    assert not any_loc.exists("u")


def test_local_writes_leave_no_temporaries(tmp_path):
    loc = open_uri(str(tmp_path / "b"))
    loc.write_bytes("t/x.bin", b"1")
    loc.write_json("t/x.json", {"a": 1})
    loc.write_parquet("t/x.parquet", sample_table(10))
    assert sorted(os.listdir(tmp_path / "b" / "t")) == ["x.bin", "x.json", "x.parquet"]


def test_delete_dir_contents(any_loc, tmp_path):
    for rel in ("book.json", "t/a.parquet", "t/sub/b.parquet", "u/c.parquet"):
        any_loc.write_bytes(rel, b"x")
    # siblings whose names share the prefix must survive
    parent = open_uri(any_loc.uri.rsplit("/", 1)[0])
    parent.write_bytes("b1x.bin", b"keep")
    parent.write_bytes("b1-other/keep.bin", b"keep")

    any_loc.delete_dir_contents("t")
    assert not any_loc.exists("t/a.parquet") and not any_loc.exists("t/sub/b.parquet")
    assert any_loc.listdir("t") == [] and any_loc.exists("u/c.parquet")

    any_loc.delete_dir_contents()
    for rel in ("book.json", "u/c.parquet"):
        assert not any_loc.exists(rel)
    assert any_loc.listdir("") == [] and any_loc.listdir("u") == []
    assert parent.read_bytes("b1x.bin") == b"keep"
    assert parent.read_bytes("b1-other/keep.bin") == b"keep"

    any_loc.delete_dir_contents("never-written")  # missing: a no-op
    any_loc.write_bytes("t/again.bin", b"y")  # the location is still usable
    assert any_loc.read_bytes("t/again.bin") == b"y"


def test_delete_dir_contents_on_s3_removes_objects(s3_loc, s3_bucket):
    for rel in ("book.json", "t/a.parquet", "t/sub/b.parquet"):
        s3_loc.write_bytes(rel, b"x")
    s3_loc.delete_dir_contents()
    bucket, prefix = s3_key(s3_loc, "")
    keys = [o["Key"] for o in s3_bucket.client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])]
    # Arrow may leave an empty "directory marker" (``books/b1/``); no data objects remain
    assert [k for k in keys if not k.endswith("/")] == []


def test_s3_interoperates_with_other_clients(s3_loc, s3_bucket):
    """What we write is a plain S3 object others can read, and we read what others wrote."""
    s3_loc.write_json("book.json", {"n": 1})
    bucket, key = s3_key(s3_loc, "book.json")
    assert s3_bucket.client.get_object(Bucket=bucket, Key=key)["Body"].read() == b'{\n  "n": 1\n}\n'

    bucket, key = s3_key(s3_loc, "t/from-boto3.bin")
    s3_bucket.client.put_object(Bucket=bucket, Key=key, Body=b"external")
    assert s3_loc.exists("t/from-boto3.bin")
    assert s3_loc.listdir("t") == ["from-boto3.bin"]
    assert s3_loc.read_bytes("t/from-boto3.bin") == b"external"


def test_s3_sees_objects_written_after_a_listing(s3_loc, s3_bucket):
    """A long-lived process (a driver polling for ``book.json``, a reader of run outputs) must see
    objects other processes write after it listed the prefix (s3fs: listings cache off)."""
    s3_loc.write_bytes("t/a.bin", b"1")
    assert s3_loc.listdir("t") == ["a.bin"]
    bucket, key = s3_key(s3_loc, "t/b.bin")
    s3_bucket.client.put_object(Bucket=bucket, Key=key, Body=b"2")
    fresh = open_uri(s3_loc.uri)  # even a freshly opened Location
    assert fresh.exists("t/b.bin")
    assert fresh.listdir("t") == ["a.bin", "b.bin"]


# ---------------------------------------------------------------------------------------------
# multipart upload
# ---------------------------------------------------------------------------------------------
# Part sizes measured against this server (pyarrow 26, s3fs with storage.py's 8 MiB block size):
#   arrow: every write is a multipart upload (even a few bytes: ETag "...-1"), parts of 10 MiB;
#   s3fs: one PutObject below the 8 MiB block size; above it, parts of >= 8 MiB (a part is
#         flushed once the buffer passes the block size, so ~8-8.7 MiB), plus the remainder.
# ~34 MiB of incompressible float64 gives 4 parts (arrow) and 5 parts (s3fs).
MULTIPART_ROWS = 4_500_000  # float64 -> ~34 MiB of Parquet


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_large_parquet_goes_multipart(s3_bucket, backend_name):
    t = pa.table({"x": np.random.default_rng(11).random(MULTIPART_ROWS)})
    loc = open_uri(s3_bucket.uri("big"), S3Options.from_env(backend=backend_name))  # explicit options
    loc.write_parquet("part-0.parquet", t)

    bucket, key = s3_key(loc, "part-0.parquet")
    head = s3_bucket.client.head_object(Bucket=bucket, Key=key)
    assert head["ContentLength"] > 30 << 20
    etag = head["ETag"].strip('"')
    assert "-" in etag, f"{backend_name}: expected a multipart ETag (<md5>-<parts>), got {etag!r}"
    n_parts = int(etag.rsplit("-", 1)[1])
    assert n_parts >= 3
    part1 = s3_bucket.client.head_object(Bucket=bucket, Key=key, PartNumber=1)["ContentLength"]
    assert part1 >= 5 << 20  # S3's minimum for every part but the last

    assert loc.read_parquet("part-0.parquet").equals(t)
    assert s3_bucket.client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []  # none left open


# ---------------------------------------------------------------------------------------------
# credentials never leak
# ---------------------------------------------------------------------------------------------
SECRET = "Sup3rS3cretValue/DoNotLeak+k3y"
TOKEN = "SessionTok3nValueDoNotLeak"


def test_credentials_do_not_leak(s3_bucket, backend, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIATESTLEAKCHECK")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_SESSION_TOKEN", TOKEN)
    opts = S3Options.from_env(backend=backend)
    loc = open_uri(s3_bucket.uri("secret-check"), opts)
    loc.write_bytes("x.bin", b"1")  # the credentials were really used
    assert loc.read_bytes("x.bin") == b"1"

    for text in (repr(opts), str(opts), repr(loc), str(loc), repr(loc.child("sub"))):
        assert SECRET not in text and TOKEN not in text
    # a Location shipped to a worker (pickled, as Ray does) must not carry the keys either
    blob = pickle.dumps(loc)
    assert SECRET.encode() not in blob and TOKEN.encode() not in blob


# ---------------------------------------------------------------------------------------------
# the test server itself (fault tests rely on stop/start)
# ---------------------------------------------------------------------------------------------
def test_s3_bucket_fixture_points_aws_env_at_server(s3_bucket):
    assert os.environ["AWS_ENDPOINT_URL_S3"] == s3_bucket.endpoint_url
    assert os.environ["AWS_REGION"] == "us-east-1"
    assert os.environ["AWS_EC2_METADATA_DISABLED"] == "true"
    assert "AWS_PROFILE" not in os.environ and "AWS_SESSION_TOKEN" not in os.environ
    assert S3Options.from_env() == S3Options(endpoint_url=s3_bucket.endpoint_url, region="us-east-1")
    assert s3_bucket.uri("a/b/") == f"s3://{s3_bucket.name}/a/b" and s3_bucket.uri() == f"s3://{s3_bucket.name}"
    names = [b["Name"] for b in s3_bucket.client.list_buckets()["Buckets"]]
    assert s3_bucket.name in names


def test_moto_server_stops_and_restarts_on_same_port():
    import boto3
    import botocore.exceptions
    from botocore.config import Config

    with MotoS3Server() as server:
        url, port = server.endpoint_url, server.port
        client = boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id="testing",
                              aws_secret_access_key="testing",
                              config=Config(retries={"max_attempts": 1}, connect_timeout=2))
        client.create_bucket(Bucket="before-restart")
        for _ in range(2):
            server.stop()
            assert not server.running
            with pytest.raises(botocore.exceptions.EndpointConnectionError):
                client.list_buckets()
            server.start()
            assert server.running and server.port == port and server.endpoint_url == url
            assert client.list_buckets()["Buckets"] == []  # moto's state does not survive a restart
        assert "starting moto server" in server.log_tail()
    assert not server.running


@pytest.mark.parametrize("uri", ["file://host/x", "s3://AKIAEXAMPLE:secret@bkt/x"])
def test_uris_with_hosts_or_credentials_are_refused(uri):
    with pytest.raises(StorageError) as ei:
        open_uri(uri)
    assert "secret" not in str(ei.value)


def test_file_uri_is_percent_decoded(tmp_path):
    assert open_uri(f"file://{tmp_path}/a%20b").path == f"{tmp_path}/a b"


def test_unreachable_server_is_retried_then_reported_on_both_backends(s3_loc, s3_server, monkeypatch):
    """A server that stays away: each operation is retried for the retry budget, then
    StorageUnavailableError names the operation and the file (never botocore's exceptions,
    never a key). A missing file is permanent: raised at once, not retried."""
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # botocore: fail fast instead of ~10 s of retries
    monkeypatch.setenv("REBALANCER_STORAGE_RETRY_SECONDS", "3")
    s3_loc.write_bytes("x.bin", b"1")
    fresh = open_uri(s3_loc.uri)
    assert fresh.retry.seconds == 3.0
    before = retry_count()
    t0 = time.monotonic()
    with pytest.raises(FileNotFoundError):
        fresh.read_bytes("missing.bin")
    assert retry_count() == before and time.monotonic() - t0 < 5
    s3_server.stop()
    try:
        for op, call in (("exists", lambda: fresh.exists("x.bin")), ("write", lambda: fresh.write_bytes("y.bin", b"2"))):
            t0 = time.monotonic()
            with pytest.raises(StorageUnavailableError) as ei:
                call()
            took = time.monotonic() - t0
            msg = str(ei.value)
            assert msg.startswith(f"{op} {s3_loc.uri}/"), msg
            assert "storage unavailable after" in msg and os.environ["AWS_SECRET_ACCESS_KEY"] not in msg
            assert not type(ei.value).__module__.startswith("botocore")
            assert took < 3 + 30, took  # the budget, plus one attempt's own SDK retries
        if isinstance(fresh.fs, pafs.S3FileSystem):  # Arrow fails an attempt in ~1 s: several fit in 3 s
            assert retry_count() > before       # (s3fs's own retries can take the whole budget)
    finally:
        s3_server.start()


def test_endpoint_with_credentials_is_refused_without_echoing_them():
    with pytest.raises(ValueError) as ei:
        S3Options(endpoint_url="http://AKIAEXAMPLE:s3cr3tValue@127.0.0.1:9000")
    assert "s3cr3tValue" not in str(ei.value) and "AKIAEXAMPLE" not in str(ei.value)


@pytest.mark.parametrize("bad", [-1, 86_401, "60", float("nan")])
def test_retry_seconds_must_be_a_sane_number(bad):
    with pytest.raises(ValueError, match="retry_seconds"):
        S3Options(retry_seconds=bad)


def test_retry_seconds_from_env_and_flag():
    assert S3Options.from_env({}).retry_seconds == 120.0
    assert S3Options.from_env({"REBALANCER_STORAGE_RETRY_SECONDS": "7.5"}).retry_seconds == 7.5
    assert S3Options.from_env({"REBALANCER_STORAGE_RETRY_SECONDS": "7.5"}, retry_seconds=3.0).retry_seconds == 3.0
    with pytest.raises(ValueError, match="REBALANCER_STORAGE_RETRY_SECONDS"):
        S3Options.from_env({"REBALANCER_STORAGE_RETRY_SECONDS": "soon"})


def test_local_locations_do_not_retry(tmp_path):
    assert open_uri(str(tmp_path)).retry.seconds == 0.0


_ARROW = "When getting information for key 'p/x' in bucket 'b': AWS Error {code} during HeadObject operation: {rest}"


@pytest.mark.parametrize("exc, transient", [
    (OSError(_ARROW.format(code="NETWORK_CONNECTION", rest="curlCode: 7, Could not connect to server")), True),
    (OSError(_ARROW.format(code="SLOW_DOWN", rest="Please reduce your request rate")), True),
    (OSError(_ARROW.format(code="SERVICE_UNAVAILABLE", rest="")), True),
    (OSError(_ARROW.format(code="INTERNAL_FAILURE", rest="")), True),
    (OSError(_ARROW.format(code="UNKNOWN", rest="(HTTP status 503) Service Unavailable")), True),
    (OSError(_ARROW.format(code="ACCESS_DENIED", rest="(HTTP status 403) Access Denied")), False),
    (OSError(_ARROW.format(code="INVALID_ACCESS_KEY_ID", rest="")), False),
    (OSError(_ARROW.format(code="UNKNOWN", rest="(HTTP status 400) Bad Request")), False),
    (FileNotFoundError(2, "Path does not exist 'b/p/x'"), False),
    (PermissionError(13, "Permission denied"), False),
    (OSError(28, "No space left on device"), False),
    (ConnectionResetError(104, "Connection reset by peer"), True),
    (TimeoutError("timed out"), True),
    (pa.ArrowInvalid("Parquet magic bytes not found"), False),
    (ValueError("bad"), False),
    (StorageError("s3 uri has no bucket"), False),
])
def test_transient_errors_are_told_from_permanent_ones(exc, transient):
    assert is_transient(exc) is transient


def test_botocore_errors_are_classified():
    from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError

    def client_error(code, status):
        return ClientError({"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject")

    assert is_transient(EndpointConnectionError(endpoint_url="http://127.0.0.1:1/b"))
    assert is_transient(ReadTimeoutError(endpoint_url="http://127.0.0.1:1/b"))
    wrapped = OSError("S3 error: could not connect")
    wrapped.__cause__ = EndpointConnectionError(endpoint_url="http://127.0.0.1:1/b")
    assert is_transient(wrapped)
    assert is_transient(client_error("SlowDown", 503)) and is_transient(client_error("InternalError", 500))
    assert is_transient(client_error("Whatever", 502))
    assert not is_transient(client_error("AccessDenied", 403)) and not is_transient(client_error("NoSuchBucket", 404))


class _Flaky:
    """A filesystem call that fails ``n`` times with ``exc``, then works."""

    def __init__(self, n, exc):
        self.n, self.exc, self.calls = n, exc, 0

    def __call__(self, *a, **kw):
        self.calls += 1
        if self.calls <= self.n:
            raise self.exc
        return self.real(*a, **kw)


def _flaky_location(tmp_path, n, exc, seconds):
    """A real local location whose filesystem's open_input_stream fails ``n`` times first."""
    loc = open_uri(str(tmp_path))
    loc.write_bytes("f.bin", b"payload")
    fs = pafs.PyFileSystem(pafs.FSSpecHandler(__import__("fsspec").filesystem("file")))
    flaky = _Flaky(n, exc)
    flaky.real = fs.open_input_stream

    class FS:  # pyarrow filesystems cannot be patched; delegate instead
        def __getattr__(self, name):
            return flaky if name == "open_input_stream" else getattr(fs, name)

    return Location(loc.uri, FS(), loc.path, RetryPolicy(seconds=seconds, base=0.01, cap=0.05)), flaky


def test_transient_failures_are_retried_until_they_pass(tmp_path):
    loc, flaky = _flaky_location(tmp_path, 3, ConnectionResetError(104, "Connection reset by peer"), seconds=5)
    before = retry_count()
    assert loc.read_bytes("f.bin") == b"payload"
    assert flaky.calls == 4 and retry_count() - before == 3


def test_permanent_failures_are_not_retried(tmp_path):
    loc, flaky = _flaky_location(tmp_path, 3, PermissionError(13, "Permission denied"), seconds=5)
    with pytest.raises(PermissionError):
        loc.read_bytes("f.bin")
    assert flaky.calls == 1


def test_retries_stop_at_the_budget_and_name_the_file(tmp_path):
    loc, flaky = _flaky_location(tmp_path, 10**6, ConnectionResetError(104, "Connection reset by peer"), seconds=0.3)
    t0 = time.monotonic()
    with pytest.raises(StorageUnavailableError) as ei:
        loc.read_bytes("f.bin")
    assert time.monotonic() - t0 < 1.0 and flaky.calls >= 3
    assert str(ei.value).startswith(f"read {loc.uri}/f.bin: storage unavailable after {flaky.calls} attempt(s)")
    assert "ConnectionResetError" in str(ei.value)


def test_backoff_grows_and_is_capped():
    import random

    p = RetryPolicy(seconds=100, base=0.5, cap=4.0)
    rng = random.Random(0)
    for k in range(8):
        bound = min(4.0, 0.5 * 2 ** k)
        draws = [p.delay(k, rng) for _ in range(200)]
        assert 0 <= min(draws) and max(draws) <= bound
        assert max(draws) > 0.8 * bound  # full jitter reaches the bound
