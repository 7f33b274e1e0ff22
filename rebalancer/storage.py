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
"""
from __future__ import annotations

import json
import os
import posixpath
import uuid
from dataclasses import dataclass, field
from urllib.parse import urlparse
from urllib.request import url2pathname

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .errors import StorageError

__all__ = ["S3Options", "Location", "open_uri", "parquet_bytes", "PARQUET_WRITE_OPTIONS"]

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

    def __post_init__(self):
        if self.backend not in ("arrow", "s3fs"):
            raise ValueError(f"S3 backend must be 'arrow' or 's3fs', got {self.backend!r}")
        if self.endpoint_url is not None:
            u = urlparse(self.endpoint_url)
            if u.scheme not in ("http", "https") or not u.netloc or u.path not in ("", "/"):
                raise ValueError(f"S3 endpoint must be an http(s) URL with no path, got {self.endpoint_url!r}")

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides) -> "S3Options":
        env = os.environ if env is None else env
        opts = dict(
            endpoint_url=env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None,
            region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None,
            backend=env.get("REBALANCER_S3_BACKEND") or "arrow",
        )
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
class Location:
    """A prefix in some filesystem: where a book or a run's outputs live."""
    uri: str
    fs: pafs.FileSystem = field(repr=False, compare=False)
    path: str  # the prefix inside ``fs`` (no trailing slash)

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    def join(self, *parts: str) -> str:
        return posixpath.join(self.path, *parts)

    def child(self, *parts: str) -> "Location":
        return Location(self.uri.rstrip("/") + "/" + "/".join(parts), self.fs, self.join(*parts))

    def exists(self, rel: str = "") -> bool:
        return self.fs.get_file_info(self.join(rel) if rel else self.path).type != pafs.FileType.NotFound

    def listdir(self, rel: str) -> list[str]:
        """Names of the files directly under ``rel`` (sorted); empty if it does not exist."""
        sel = pafs.FileSelector(self.join(rel), allow_not_found=True, recursive=False)
        return sorted(posixpath.basename(i.path) for i in self.fs.get_file_info(sel) if i.type == pafs.FileType.File)

    def subdirs(self, rel: str = "") -> list[str]:
        """Names of the folders (S3: common prefixes) directly under ``rel`` (sorted)."""
        sel = pafs.FileSelector(self.join(rel) if rel else self.path, allow_not_found=True, recursive=False)
        return sorted(posixpath.basename(i.path) for i in self.fs.get_file_info(sel) if i.type == pafs.FileType.Directory)

    def sizes(self, rel: str) -> dict[str, int]:
        """Name -> size in bytes of the files directly under ``rel``; empty if it does not exist."""
        sel = pafs.FileSelector(self.join(rel), allow_not_found=True, recursive=False)
        return {posixpath.basename(i.path): i.size for i in self.fs.get_file_info(sel) if i.type == pafs.FileType.File}

    def total_size(self, rel: str = "") -> tuple[int, int]:
        """(number of files, bytes) under ``rel``, recursively."""
        sel = pafs.FileSelector(self.join(rel) if rel else self.path, allow_not_found=True, recursive=True)
        files = [i for i in self.fs.get_file_info(sel) if i.type == pafs.FileType.File]
        return len(files), sum(i.size for i in files)

    def delete_dir_contents(self, rel: str = "") -> None:
        p = self.join(rel) if rel else self.path
        if self.fs.get_file_info(p).type == pafs.FileType.Directory:
            self.fs.delete_dir_contents(p, missing_dir_ok=True)

    def _prepare(self, path: str) -> None:
        if self.is_local:
            self.fs.create_dir(posixpath.dirname(path), recursive=True)

    def write_bytes(self, rel: str, data: bytes) -> None:
        path = self.join(rel)
        self._prepare(path)
        tmp = self._tmp(path)
        with self.fs.open_output_stream(tmp) as f:
            f.write(data)
        self._commit(tmp, path)

    def read_bytes(self, rel: str) -> bytes:
        with self.fs.open_input_stream(self.join(rel)) as f:
            return f.read()

    def write_json(self, rel: str, obj) -> None:
        self.write_bytes(rel, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())

    def read_json(self, rel: str):
        return json.loads(self.read_bytes(rel))

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

    def delete(self, rel: str) -> None:
        """Delete one file if it exists."""
        path = self.join(rel)
        if self.fs.get_file_info(path).type == pafs.FileType.File:
            self.fs.delete_file(path)

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
        opts = s3 or S3Options.from_env()
        return Location(uri, _s3_filesystem(opts), f"{u.netloc}/{u.path.strip('/')}".rstrip("/"))
    raise StorageError(f"unsupported storage scheme {u.scheme!r} in {uri!r}; use a path, file:// or s3://")
