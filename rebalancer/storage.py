"""Object storage through URIs: plain paths, ``file://`` and ``s3://``.

S3 is configured the way S3 users expect:

- credentials come from the SDK's default chain (``AWS_ACCESS_KEY_ID`` /
  ``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``, ``AWS_PROFILE``, web identity (IRSA),
  instance profile); this module never takes, prints or stores a key;
- the region from ``AWS_REGION`` or ``AWS_DEFAULT_REGION``;
- an S3-compatible server (MinIO, Ceph, a local test server) through an explicit endpoint:
  ``S3Options(endpoint_url=...)``, the CLI's ``--s3-endpoint-url``, or the standard
  ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` variables.

Two implementations sit behind one interface (a ``pyarrow.fs.FileSystem``): Arrow's native S3
client (default; fastest for Parquet) and s3fs (``backend="s3fs"`` or
``REBALANCER_S3_BACKEND=s3fs``), which follows botocore's configuration (SSO profiles,
``~/.aws/config`` endpoints) for sites where that is the standard.

Every operation of a :class:`Location` is retried when its error is *transient* (the server
cannot be reached, a connection drops, 5xx, throttling): exponential backoff with full jitter
until ``S3Options.retry_seconds`` have passed (120 s unless set; ``REBALANCER_STORAGE_RETRY_SECONDS``
or the CLI's ``--storage-retry-seconds``), then :class:`~rebalancer.errors.StorageUnavailableError`
names the operation, the file, the attempts and the last error. Permanent errors (a missing
file or bucket, access denied) are raised at once. Error messages carry URIs, never keys.
"""
from __future__ import annotations

import functools
import json
import os
import posixpath
import random
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from urllib.parse import urlparse
from urllib.request import url2pathname

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from . import jsonout
from .errors import StorageError, StorageUnavailableError

__all__ = ["S3Options", "RetryPolicy", "Location", "open_uri", "parquet_bytes", "is_transient",
           "retry_count", "PARQUET_WRITE_OPTIONS", "DEFAULT_RETRY_SECONDS"]

DEFAULT_RETRY_SECONDS = 120.0

# Fixed writer settings: together with deterministic row order they make "same inputs, same
# bytes" hold for every file we write (no timestamps go into Parquet metadata).
PARQUET_WRITE_OPTIONS = dict(
    compression="zstd",
    compression_level=3,
    row_group_size=1 << 20,
    write_statistics=True,
    data_page_size=1 << 20,
)


@dataclass(frozen=True)
class S3Options:
    """How to reach S3. Fields left ``None`` fall back to the standard AWS environment."""
    endpoint_url: str | None = None
    region: str | None = None
    backend: str = "arrow"  # "arrow" | "s3fs"
    retry_seconds: float = DEFAULT_RETRY_SECONDS  # how long transient errors are retried

    def __post_init__(self):
        if self.backend not in ("arrow", "s3fs"):
            raise ValueError(f"S3 backend must be 'arrow' or 's3fs', got {self.backend!r}")
        if not (isinstance(self.retry_seconds, (int, float)) and 0 <= self.retry_seconds <= 86_400):
            raise ValueError(f"retry_seconds must be a number of seconds in [0, 86400], got {self.retry_seconds!r}")
        if self.endpoint_url is not None:
            u = urlparse(self.endpoint_url)
            if u.scheme not in ("http", "https") or not u.hostname or u.path not in ("", "/") or u.query or u.fragment:
                raise ValueError(f"S3 endpoint must be an http(s) URL with no path, got {self.endpoint_url!r}")
            if u.username is not None or u.password is not None:
                # Never echo the URL back: it holds a secret.
                raise ValueError("S3 endpoint must not contain credentials; use the AWS environment or an instance role")

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides) -> "S3Options":
        env = os.environ if env is None else env
        opts = dict(
            endpoint_url=env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None,
            region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None,
            backend=env.get("REBALANCER_S3_BACKEND") or "arrow",
        )
        if env.get("REBALANCER_STORAGE_RETRY_SECONDS"):
            try:
                opts["retry_seconds"] = float(env["REBALANCER_STORAGE_RETRY_SECONDS"])
            except ValueError:
                raise ValueError("REBALANCER_STORAGE_RETRY_SECONDS must be a number of seconds, "
                                 f"got {env['REBALANCER_STORAGE_RETRY_SECONDS']!r}") from None
        opts.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**opts)


def _s3_filesystem(opts: S3Options) -> pafs.FileSystem:
    # Region only when given: otherwise each SDK resolves it from its own configuration.
    if opts.backend == "s3fs":
        import s3fs  # imported lazily: only sites that choose it pay for aiobotocore

        client_kwargs = {}
        if opts.region:
            client_kwargs["region_name"] = opts.region
        if opts.endpoint_url:
            client_kwargs["endpoint_url"] = opts.endpoint_url
        # No listings cache: a driver polls for files other processes write (book.json, shards).
        fs = s3fs.S3FileSystem(client_kwargs=client_kwargs, default_block_size=8 << 20,
                               use_listings_cache=False)
        return pafs.PyFileSystem(_BotoErrorsAsOSError(fs))
    kwargs: dict = {"region": opts.region} if opts.region else {}
    if opts.endpoint_url:
        u = urlparse(opts.endpoint_url)
        kwargs.update(endpoint_override=u.netloc, scheme=u.scheme)
    return pafs.S3FileSystem(**kwargs)


class _BotoErrorsAsOSError(pafs.FSSpecHandler):
    """s3fs raises botocore's exceptions for network failures; callers handle ``OSError``
    (what Arrow's native client raises), so translate them at this boundary."""

    def __getattribute__(self, name):
        attr = super().__getattribute__(name)
        if name.startswith("_") or not callable(attr):
            return attr

        def call(*a, **kw):
            from botocore.exceptions import BotoCoreError, ClientError

            try:
                return attr(*a, **kw)
            except (BotoCoreError, ClientError) as e:
                raise OSError(f"S3 error: {e}") from e
        return call


@dataclass(frozen=True)
class RetryPolicy:
    """Retries of transient storage errors: after the k-th failed attempt sleep a random time
    in [0, min(cap, base * 2**k)] (full jitter) and try again, as long as the sleep ends within
    ``seconds`` of the first attempt's start (attempts themselves take time: the SDK has its own
    quick retries)."""
    seconds: float = DEFAULT_RETRY_SECONDS
    base: float = 0.25
    cap: float = 10.0

    def delay(self, k: int, rng: random.Random) -> float:
        return rng.uniform(0.0, min(self.cap, self.base * 2 ** k))


# Arrow's S3 client: "AWS Error <CODE> during <Operation> operation"; the codes worth retrying.
_TRANSIENT_AWS = re.compile(r"AWS Error (NETWORK_CONNECTION|SLOW_DOWN|SERVICE_UNAVAILABLE|INTERNAL_FAILURE|"
                            r"THROTTLING|REQUEST_TIMEOUT|REQUEST_EXPIRED)|HTTP status 5\d\d|curlCode: (7|28|52|55|56)\b")
_TRANSIENT_TEXT = re.compile(r"connection (reset|refused|aborted|closed)|broken pipe|timed out|timeout",
                             re.IGNORECASE)
_TRANSIENT_S3_CODES = {"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "Throttling",
                       "ThrottlingException", "RequestTimeTooSkewed", "500", "502", "503", "504"}


def is_transient(e: BaseException) -> bool:
    """Whether retrying the operation that raised ``e`` may succeed: network failures, 5xx and
    throttling; not a missing file or bucket, access denied, bad input, or a full disk."""
    if isinstance(e, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError,
                      FileExistsError, StorageError)):
        return False
    if isinstance(e, (ConnectionError, TimeoutError)):
        return True
    try:  # s3fs / botocore (present with s3fs)
        from botocore.exceptions import (ClientError, ConnectionClosedError, ConnectTimeoutError,
                                         EndpointConnectionError, ReadTimeoutError)
    except ImportError:  # pragma: no cover - s3fs is a dependency
        pass
    else:
        for x in (e, e.__cause__):
            if isinstance(x, (EndpointConnectionError, ConnectionClosedError, ConnectTimeoutError, ReadTimeoutError)):
                return True
            if isinstance(x, ClientError):
                err = x.response.get("Error", {})
                status = x.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
                return err.get("Code") in _TRANSIENT_S3_CODES or status >= 500
    if isinstance(e, OSError) and not isinstance(e, pa.ArrowInvalid):
        text = str(e)
        return bool(_TRANSIENT_AWS.search(text) or _TRANSIENT_TEXT.search(text))
    return False


_RETRIES = [0]
_RETRIES_LOCK = threading.Lock()


def retry_count() -> int:
    """Storage operations retried in this process so far (a shard's record reports its share)."""
    return _RETRIES[0]


def _retrying(op: str):
    """Decorate a :class:`Location` method (first argument after self: the relative path, if
    any) to retry transient errors under the location's :class:`RetryPolicy`."""
    def deco(fn):
        @functools.wraps(fn)
        def call(self: "Location", *a, **kw):
            policy, rng, attempt, t0 = self.retry, None, 0, time.monotonic()
            while True:
                attempt += 1
                try:
                    return fn(self, *a, **kw)
                except Exception as e:  # noqa: BLE001 - classified below
                    if not is_transient(e):
                        if _is_boto(e):  # s3fs streams raise botocore's errors unwrapped
                            raise OSError(f"S3 error: {e}") from e
                        raise
                    rng = rng or random.Random()
                    d = policy.delay(attempt - 1, rng)
                    if time.monotonic() - t0 + d > policy.seconds:
                        what = a[0] if a and isinstance(a[0], str) else ""
                        where = self.uri.rstrip("/") + ("/" + what if what else "")
                        raise StorageUnavailableError(
                            f"{op} {where}: storage unavailable after {attempt} attempt(s) over "
                            f"{time.monotonic() - t0:.0f}s: {_one_line(e)}") from e
                    with _RETRIES_LOCK:
                        _RETRIES[0] += 1
                    time.sleep(d)
        return call
    return deco


def _is_boto(e: BaseException) -> bool:
    return type(e).__module__.startswith(("botocore", "aiobotocore"))


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"


_NO_RETRY = RetryPolicy(seconds=0.0)


@dataclass(frozen=True)
class Location:
    """A prefix in some filesystem: where a book or a run's outputs live."""
    uri: str
    fs: pafs.FileSystem = field(repr=False, compare=False)
    path: str  # the prefix inside ``fs`` (no trailing slash)
    retry: RetryPolicy = field(default=_NO_RETRY, repr=False, compare=False)

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    def join(self, *parts: str) -> str:
        return posixpath.join(self.path, *parts)

    def child(self, *parts: str) -> "Location":
        return Location(self.uri.rstrip("/") + "/" + "/".join(parts), self.fs, self.join(*parts), self.retry)

    @_retrying("exists")
    def exists(self, rel: str = "") -> bool:
        return self._type(self.join(rel) if rel else self.path) != pafs.FileType.NotFound

    def _type(self, path: str) -> pafs.FileType:
        """What ``path`` is. On object storage by listing its parent, never by a HEAD request:
        S3 answers a HEAD of a missing key with 403, not 404, when the role may list the bucket
        only under given prefixes (the least-privilege policy in infra/aws/iam-policy.json)."""
        if self.is_local:
            return self.fs.get_file_info(path).type
        parent, name = posixpath.split(path.rstrip("/"))
        if "/" not in parent.strip("/"):  # the bucket itself or a top-level key: nothing to list under
            return self.fs.get_file_info(path).type
        sel = pafs.FileSelector(parent, allow_not_found=True, recursive=False)
        for i in self.fs.get_file_info(sel):
            if posixpath.basename(i.path.rstrip("/")) == name:
                return i.type
        return pafs.FileType.NotFound

    @_retrying("list")
    def listdir(self, rel: str) -> list[str]:
        """Names of the files directly under ``rel`` (sorted); empty if it does not exist."""
        sel = pafs.FileSelector(self.join(rel), allow_not_found=True, recursive=False)
        return sorted(posixpath.basename(i.path) for i in self.fs.get_file_info(sel) if i.type == pafs.FileType.File)

    @_retrying("list")
    def subdirs(self, rel: str = "") -> list[str]:
        """Names of the folders (S3: common prefixes) directly under ``rel`` (sorted)."""
        sel = pafs.FileSelector(self.join(rel) if rel else self.path, allow_not_found=True, recursive=False)
        return sorted(posixpath.basename(i.path) for i in self.fs.get_file_info(sel) if i.type == pafs.FileType.Directory)

    @_retrying("list")
    def sizes(self, rel: str) -> dict[str, int]:
        """Name -> size in bytes of the files directly under ``rel``; empty if it does not exist."""
        sel = pafs.FileSelector(self.join(rel), allow_not_found=True, recursive=False)
        return {posixpath.basename(i.path): i.size for i in self.fs.get_file_info(sel) if i.type == pafs.FileType.File}

    @_retrying("list")
    def files(self, rel: str = "") -> list[str]:
        """Paths (relative to this location) of every file under ``rel``, recursively, sorted."""
        base = self.join(rel) if rel else self.path
        sel = pafs.FileSelector(base, allow_not_found=True, recursive=True)
        return sorted(posixpath.relpath(i.path, self.path) for i in self.fs.get_file_info(sel)
                      if i.type == pafs.FileType.File)

    @_retrying("list")
    def total_size(self, rel: str = "") -> tuple[int, int]:
        """(number of files, bytes) under ``rel``, recursively."""
        sel = pafs.FileSelector(self.join(rel) if rel else self.path, allow_not_found=True, recursive=True)
        files = [i for i in self.fs.get_file_info(sel) if i.type == pafs.FileType.File]
        return len(files), sum(i.size for i in files)

    @_retrying("delete")
    def delete_dir_contents(self, rel: str = "") -> None:
        p = self.join(rel) if rel else self.path
        if self._type(p) == pafs.FileType.Directory:
            self.fs.delete_dir_contents(p, missing_dir_ok=True)

    def _prepare(self, path: str) -> None:
        if self.is_local:
            self.fs.create_dir(posixpath.dirname(path), recursive=True)

    @_retrying("write")
    def write_bytes(self, rel: str, data: bytes) -> None:
        path = self.join(rel)
        self._prepare(path)
        tmp = self._tmp(path)
        with self.fs.open_output_stream(tmp) as f:
            f.write(data)
        self._commit(tmp, path)

    @_retrying("read")
    def read_bytes(self, rel: str) -> bytes:
        with self.fs.open_input_stream(self.join(rel)) as f:
            return f.read()

    def write_json(self, rel: str, obj) -> None:
        """Write ``obj`` as strict JSON (:mod:`rebalancer.jsonout`: non-finite numbers as null)."""
        self.write_bytes(rel, (jsonout.dumps(obj, indent=2, sort_keys=True) + "\n").encode())

    def read_json(self, rel: str):
        # Lenient on purpose: a run resumed from records written before the writer was strict
        # (a NaN residual) must still read them; what is written back is strict.
        return json.loads(self.read_bytes(rel))

    @_retrying("write")
    def write_parquet(self, rel: str, table: pa.Table) -> None:
        """Write one Parquet file with the project's fixed settings.

        Local files are written under a temporary name and renamed, so a reader never sees a
        half-written file; an S3 object (single or multipart upload) appears only when complete.
        """
        path = self.join(rel)
        self._prepare(path)
        tmp = self._tmp(path)
        pq.write_table(table, tmp, filesystem=self.fs, **PARQUET_WRITE_OPTIONS)
        self._commit(tmp, path)

    @_retrying("delete")
    def delete(self, rel: str) -> None:
        """Delete one file if it exists."""
        path = self.join(rel)
        if self._type(path) == pafs.FileType.File:
            self.fs.delete_file(path)

    @_retrying("read")
    def read_parquet(self, rel: str, columns: list[str] | None = None) -> pa.Table:
        return pq.read_table(self.join(rel), filesystem=self.fs, columns=columns)

    def _tmp(self, path: str) -> str:
        return f"{path}.tmp-{uuid.uuid4().hex}" if self.is_local else path

    def _commit(self, tmp: str, path: str) -> None:
        if tmp != path:
            self.fs.move(tmp, path)


def parquet_bytes(table: pa.Table) -> bytes:
    """``table`` as a Parquet file with the project's fixed settings (deterministic bytes)."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, **PARQUET_WRITE_OPTIONS)
    return sink.getvalue().to_pybytes()


def open_uri(uri: str, s3: S3Options | None = None) -> Location:
    """Resolve a URI (plain path, ``file://``, ``s3://bucket/prefix``) to a :class:`Location`."""
    if not uri:
        raise StorageError("empty storage URI")
    u = urlparse(uri)
    if u.scheme == "":
        return Location(uri, pafs.LocalFileSystem(), os.path.abspath(uri))
    if u.scheme == "file":
        if u.netloc not in ("", "localhost"):
            raise StorageError(f"file URI must be file:///absolute/path, got {uri!r}")
        return Location(uri, pafs.LocalFileSystem(), os.path.abspath(url2pathname(u.path)))
    if u.scheme in ("s3", "s3a"):
        if not u.netloc:
            raise StorageError(f"S3 URI has no bucket: {uri!r}")
        if "@" in u.netloc:
            # Never accept credentials in a URI: they would end up in logs and manifests.
            raise StorageError("S3 URI must not contain credentials; use the AWS environment or an instance role")
        if u.query or u.fragment or u.params:
            raise StorageError(f"S3 URI must not have a query or fragment: {uri!r}")
        segments = u.path.strip("/").split("/") if u.path.strip("/") else []
        if any(seg in ("", ".", "..") for seg in segments):
            raise StorageError(f"S3 URI must not contain empty, '.' or '..' path segments: {uri!r}")
        opts = s3 or S3Options.from_env()
        return Location(uri, _s3_filesystem(opts), f"{u.netloc}/{u.path.strip('/')}".rstrip("/"),
                        RetryPolicy(seconds=float(opts.retry_seconds)))
    raise StorageError(f"unsupported storage scheme {u.scheme!r} in {uri!r}; use a path, file:// or s3://")
