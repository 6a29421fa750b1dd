"""Parquet datasets on a local path or an ``s3://`` URI, with declared schemas and staged publishing.

- Endpoint and credentials come from the standard AWS environment (``AWS_ENDPOINT_URL[_S3]``,
  ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``/``AWS_DEFAULT_REGION``) or the AWS config
  files; they are never logged, never put in error messages and never written to metadata.
- Writers cast to the declared schema and raise ``SchemaMismatchError`` naming the column.
- Files are written under a staging prefix (``<parent>/_staging/<run>/``, outside the dataset) and then
  moved into the dataset. Each file holds complete records, so a reader sees either a file or nothing, and
  a write that fails before publishing leaves nothing visible at the destination.
"""

from __future__ import annotations

import json
import os
import posixpath
import uuid
from dataclasses import dataclass
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

STAGING_DIR = "_staging"
SECRET_WORDS = ("secret", "password", "token", "access_key", "credential")


class StorageError(RuntimeError):
    """An I/O failure, phrased for a user in one line (never carries credentials)."""


class SchemaMismatchError(ValueError):
    """A table does not fit its declared schema; the message names the column."""


# ---------------------------------------------------------------- locations


@dataclass(frozen=True)
class Location:
    fs: pafs.FileSystem
    path: str  # filesystem path: "bucket/key" for S3, absolute for local
    uri: str  # as the user wrote it

    def join(self, *parts: str) -> "Location":
        path = posixpath.join(self.path, *parts)
        uri = self.uri.rstrip("/") + "/" + "/".join(parts)
        return Location(self.fs, path, uri)

    @property
    def is_s3(self) -> bool:
        return self.uri.startswith("s3://")


def is_s3(uri: str) -> bool:
    return str(uri).startswith("s3://")


def s3_endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")


def s3_region() -> str:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"


def s3_filesystem() -> pafs.S3FileSystem:
    """A pyarrow S3 filesystem from the standard AWS environment; fails fast on a dead endpoint."""
    kwargs: dict = {
        "region": s3_region(),
        "connect_timeout": 5,
        "request_timeout": 30,
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=3),
    }
    endpoint = s3_endpoint()
    if endpoint:
        parsed = urlparse(endpoint)
        kwargs["endpoint_override"] = parsed.netloc or parsed.path
        kwargs["scheme"] = parsed.scheme or "https"
    if os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("AWS_SECRET_ACCESS_KEY"):
        kwargs["access_key"] = os.environ["AWS_ACCESS_KEY_ID"]
        kwargs["secret_key"] = os.environ["AWS_SECRET_ACCESS_KEY"]
        if os.environ.get("AWS_SESSION_TOKEN"):
            kwargs["session_token"] = os.environ["AWS_SESSION_TOKEN"]
    return pafs.S3FileSystem(**kwargs)


def locate(uri: str) -> Location:
    """Resolve a local path or ``s3://bucket/prefix`` to a filesystem and a path on it."""
    uri = str(uri)
    if is_s3(uri):
        parsed = urlparse(uri)
        if not parsed.netloc:
            raise StorageError(f"bad S3 URI {uri!r}: expected s3://bucket/prefix")
        return Location(s3_filesystem(), (parsed.netloc + parsed.path).rstrip("/"), uri.rstrip("/"))
    path = os.path.abspath(os.path.expanduser(uri))
    return Location(pafs.LocalFileSystem(), path, uri)


def polars_storage_options(uri: str) -> dict | None:
    """``storage_options`` for ``polars.scan_parquet`` on the same S3 endpoint (None for local paths)."""
    if not is_s3(uri):
        return None
    opts = {"aws_region": s3_region()}
    endpoint = s3_endpoint()
    if endpoint:
        opts["aws_endpoint_url"] = endpoint
        if endpoint.startswith("http://"):
            opts["aws_allow_http"] = "true"
    for env, key in (
        ("AWS_ACCESS_KEY_ID", "aws_access_key_id"),
        ("AWS_SECRET_ACCESS_KEY", "aws_secret_access_key"),
        ("AWS_SESSION_TOKEN", "aws_session_token"),
    ):
        if os.environ.get(env):
            opts[key] = os.environ[env]
    return opts


def explain(exc: BaseException, uri: str, action: str) -> StorageError:
    """Turn a pyarrow/AWS error into one line a user can act on. Credentials never appear."""
    text = str(exc)
    low = text.lower()
    where = f"{action} {uri}"
    if is_s3(uri):
        endpoint = s3_endpoint() or "the default AWS endpoint"
        if any(s in low for s in ("couldn't connect", "could not connect", "connection refused", "curlcode: 7",
                                  "network_connection", "timed out", "resolve host", "curlcode: 28")):
            return StorageError(f"cannot {where}: S3 endpoint {endpoint} is unreachable")
        if any(s in low for s in ("access denied", "accessdenied", "invalidaccesskeyid", "signaturedoesnotmatch",
                                  "forbidden", "403", "invalid access key")):
            return StorageError(f"cannot {where}: access denied by {endpoint}; check the AWS credentials")
        if "nosuchbucket" in low or "bucket does not exist" in low:
            return StorageError(f"cannot {where}: bucket does not exist at {endpoint}")
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return StorageError(f"cannot {where}: {first[:300]}")


# ---------------------------------------------------------------- schemas


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Cast ``table`` to ``schema``: same columns (missing nullable ones filled with nulls), declared types.

    Raises SchemaMismatchError naming the first column that is missing, extra, or cannot be cast.
    """
    names = set(table.column_names)
    extra = sorted(names - set(schema.names))
    if extra:
        raise SchemaMismatchError(f"column {extra[0]!r} is not in schema {schema_name(schema)}")
    columns = []
    for f in schema:
        if f.name not in names:
            if not f.nullable:
                raise SchemaMismatchError(f"column {f.name!r} is missing (required by schema {schema_name(schema)})")
            columns.append(pa.nulls(table.num_rows, f.type))
            continue
        col = table.column(f.name)
        try:
            col = col.cast(f.type) if col.type != f.type else col
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
            raise SchemaMismatchError(
                f"column {f.name!r} has type {table.schema.field(f.name).type}, schema {schema_name(schema)} "
                f"wants {f.type}: {str(exc).splitlines()[0]}"
            ) from None
        if not f.nullable and col.null_count:
            raise SchemaMismatchError(f"column {f.name!r} has {col.null_count} nulls but is not nullable")
        columns.append(col)
    return pa.Table.from_arrays(columns, schema=schema)


def schema_name(schema: pa.Schema) -> str:
    meta = schema.metadata or {}
    name = meta.get(b"cmbert.schema", b"?").decode()
    version = meta.get(b"cmbert.schema_version", b"?").decode()
    return f"{name} v{version}"


def safe_metadata(metadata: dict | None) -> dict[str, str]:
    """File metadata with anything that looks like a credential removed."""
    out = {}
    for key, value in (metadata or {}).items():
        if any(w in key.lower() for w in SECRET_WORDS):
            continue
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
        out[key] = text
    return out


# ---------------------------------------------------------------- writing


def write_table(
    table: pa.Table,
    uri: str,
    schema: pa.Schema,
    *,
    name: str | None = None,
    partition: dict[str, str] | None = None,
    metadata: dict | None = None,
) -> str:
    """Write one Parquet file of complete records into dataset ``uri``; returns its final path.

    ``partition`` puts the file under hive-style ``key=value`` folders. The file is staged first and then
    moved into place, so a failure leaves nothing visible.
    """
    table = conform(table, schema)
    meta = dict(table.schema.metadata or {})
    meta.update({k.encode(): v.encode() for k, v in safe_metadata(metadata).items()})
    table = table.replace_schema_metadata(meta)
    dest = locate(uri)
    sub = [f"{k}={v}" for k, v in (partition or {}).items()]
    fname = (name or f"part-{uuid.uuid4().hex}") + ".parquet"
    staging = staging_location(dest, uuid.uuid4().hex)
    staged = staging.join(fname)
    try:
        dest.fs.create_dir(staging.path, recursive=True)
        pq.write_table(table, staged.path, filesystem=dest.fs, compression="zstd")
    except OSError as exc:
        raise explain(exc, uri, "write") from None
    final = dest.join(*sub, fname)
    publish_file(dest.fs, staged.path, final.path, uri)
    remove_quietly(dest.fs, staging.path)
    return final.uri


def staging_location(dest: Location, run: str) -> Location:
    """A staging folder beside the dataset (not inside it, so dataset globs never see it)."""
    parent, leaf = posixpath.split(dest.path.rstrip("/"))
    path = posixpath.join(parent, STAGING_DIR, f"{leaf}-{run}")
    uri_parent = dest.uri.rstrip("/").rsplit("/", 1)[0]
    return Location(dest.fs, path, f"{uri_parent}/{STAGING_DIR}/{leaf}-{run}")


def publish_file(fs: pafs.FileSystem, src: str, dst: str, uri: str) -> None:
    """Move a staged file into the dataset. On S3 a move is copy+delete: the copy is the atomic step."""
    try:
        fs.create_dir(posixpath.dirname(dst), recursive=True)
        fs.move(src, dst)
    except OSError as exc:
        raise explain(exc, uri, "publish to") from None


def publish_dir(staging_uri: str, final_uri: str) -> list[str]:
    """Move every file under a staging folder (e.g. one Ray Data wrote) into the final dataset."""
    src = locate(staging_uri)
    dst = locate(final_uri)
    try:
        infos = src.fs.get_file_info(pafs.FileSelector(src.path, recursive=True, allow_not_found=True))
    except OSError as exc:
        raise explain(exc, staging_uri, "list") from None
    moved = []
    for info in sorted(infos, key=lambda i: i.path):
        if info.type != pafs.FileType.File or not info.path.endswith(".parquet"):
            continue
        rel = posixpath.relpath(info.path, src.path)
        publish_file(dst.fs, info.path, posixpath.join(dst.path, rel), final_uri)
        moved.append(rel)
    remove_quietly(src.fs, src.path)
    return moved


def new_staging_uri(final_uri: str) -> str:
    return staging_location(locate(final_uri), uuid.uuid4().hex).uri


def remove_quietly(fs: pafs.FileSystem, path: str) -> None:
    try:
        fs.delete_dir(path)
    except OSError:
        pass


# ---------------------------------------------------------------- reading


def dataset_exists(uri: str) -> bool:
    loc = locate(uri)
    try:
        info = loc.fs.get_file_info(loc.path)
    except OSError as exc:
        raise explain(exc, uri, "read") from None
    return info.type != pafs.FileType.NotFound


def read_table(uri: str, schema: pa.Schema | None = None, columns: list[str] | None = None,
               filter=None) -> pa.Table:
    """Read a dataset (hive partitions understood). A missing dataset is an empty table of ``schema``."""
    loc = locate(uri)
    try:
        if not dataset_exists(uri):
            if schema is None:
                raise StorageError(f"cannot read {uri}: no such dataset")
            empty = schema.empty_table()
            return empty.select(columns) if columns else empty
        ds = pads.dataset(loc.path, filesystem=loc.fs, format="parquet", partitioning="hive",
                          schema=_with_partitions(schema, loc) if schema is not None else None)
        return ds.to_table(columns=columns, filter=filter)
    except OSError as exc:
        raise explain(exc, uri, "read") from None


def _with_partitions(schema: pa.Schema, loc: Location) -> pa.Schema:
    return schema


def distinct_values(uri: str, column: str, schema: pa.Schema) -> set[str]:
    """The set of values of one column of a dataset (empty when the dataset does not exist yet)."""
    table = read_table(uri, schema, columns=[column])
    return set(table.column(column).to_pylist())
