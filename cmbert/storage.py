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
import re
import uuid
from dataclasses import dataclass
from urllib.parse import quote, urlparse

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from cmbert.errors import UserError

STAGING_DIR = "_staging"
# A metadata key is dropped when one of its words (split on non-letters and camelCase) names a credential.
SECRET_KEY_RE = re.compile(
    r"(^|_)(secret|secrets|password|passwd|token|tokens|credential|credentials|api_?key|access_?key|private_?key"
    r"|auth|authorization|signature)(_|$)"
)
SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID")


class StorageError(UserError, RuntimeError):
    """An I/O failure, phrased for a user in one line (never carries credentials)."""


class SchemaMismatchError(UserError, ValueError):
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


def explain(exc: BaseException, uri: str, action: str, endpoint: str | None = None) -> StorageError:
    """Turn a pyarrow/AWS error into one line a user can act on. Credentials never appear.

    ``endpoint``: the S3 endpoint for the message, as the driver saw it (a worker's environment may lack it)."""
    text = str(exc)
    low = text.lower()
    squashed = re.sub(r"[\s_\-]", "", low)  # ACCESS_DENIED, Access Denied, AccessDenied -> accessdenied
    where = f"{action} {uri}"
    if is_s3(uri):
        endpoint = endpoint or _safe_endpoint()
        if any(s in low for s in ("couldn't connect", "could not connect", "connection refused", "curlcode: 7",
                                  "network_connection", "timed out", "resolve host", "curlcode: 28",
                                  "curlcode: 6")):
            return StorageError(_redact(f"cannot {where}: S3 endpoint {endpoint} is unreachable"))
        denied = ("accessdenied", "invalidaccesskey", "signaturedoesnotmatch", "forbidden", "invalidtoken",
                  "expiredtoken")
        if any(s in squashed for s in denied) or re.search(r"\b403\b", low):
            return StorageError(_redact(f"cannot {where}: access denied by S3 endpoint {endpoint}; "
                                        "check the AWS credentials"))
        if "nosuchbucket" in squashed or "bucket does not exist" in low or re.search(r"bucket '[^']*' not found", low):
            return StorageError(_redact(f"cannot {where}: bucket does not exist at S3 endpoint {endpoint}"))
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return StorageError(_redact(f"cannot {where}: {first[:300]}"))


def safe_endpoint() -> str:
    return _safe_endpoint()


def _safe_endpoint() -> str:
    """The S3 endpoint for messages, without any user:password@ part."""
    endpoint = s3_endpoint()
    if not endpoint:
        return "(default AWS endpoint)"
    parsed = urlparse(endpoint)
    if parsed.username or parsed.password:
        return endpoint.replace(parsed.netloc, parsed.hostname + (f":{parsed.port}" if parsed.port else ""))
    return endpoint


def _redact(text: str) -> str:
    """Remove credential values from a message and keep it on one line."""
    for var in SECRET_ENV:
        value = os.environ.get(var)
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    return " ".join(text.split())


# ---------------------------------------------------------------- schemas


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Cast ``table`` to ``schema``: same columns (missing nullable ones filled with nulls), declared types.

    Only lossless casts of the same kind are made (int -> wider int or float, string -> large_string,
    timestamp unit/zone, nested types field by field); a number is never turned into text or back.
    Raises SchemaMismatchError naming the first column that is missing, extra, duplicated, of another kind,
    or null where the schema (at any depth) forbids it.
    """
    names = table.column_names
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise SchemaMismatchError(f"column {dupes[0]!r} appears more than once")
    extra = sorted(set(names) - set(schema.names))
    if extra:
        raise SchemaMismatchError(f"column {extra[0]!r} is not in schema {schema_name(schema)}")
    columns = []
    for f in schema:
        if f.name not in names:
            if not f.nullable:
                raise SchemaMismatchError(f"column {f.name!r} is missing (required by schema {schema_name(schema)})")
            columns.append(pa.chunked_array([pa.nulls(table.num_rows, f.type)], type=f.type))
            continue
        col = table.column(f.name)
        problem = _incompatible(col.type, f.type, f.name)
        if problem is None and col.type != f.type:
            try:
                col = col.cast(f.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
                problem = (f.name, str(exc).splitlines()[0])
        if problem is not None:
            where, why = problem
            raise SchemaMismatchError(
                f"column {where!r} has type {table.schema.field(f.name).type}, schema {schema_name(schema)} "
                f"wants {f.type}: {why}"
            )
        if not f.nullable and col.null_count:
            raise SchemaMismatchError(f"column {f.name!r} has {col.null_count} nulls but is not nullable")
        for chunk in col.chunks:
            where = _nested_nulls(chunk, f.type, f.name)
            if where:
                raise SchemaMismatchError(f"column {where!r} has nulls but is not nullable")
        columns.append(col)
    return pa.Table.from_arrays(columns, schema=schema)


def _kind(t: pa.DataType) -> str:
    if pa.types.is_null(t):
        return "null"
    if pa.types.is_dictionary(t):
        return _kind(t.value_type)
    if pa.types.is_boolean(t):
        return "bool"
    if pa.types.is_integer(t):
        return "int"
    if pa.types.is_floating(t):
        return "float"
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return "string"
    if pa.types.is_timestamp(t):
        return "timestamp"
    if pa.types.is_map(t):  # before list: a map is a list of key/item structs to pyarrow
        return "map"
    if (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)
            or pa.types.is_list_view(t) or pa.types.is_large_list_view(t)):
        return "list"
    if pa.types.is_struct(t):
        return "struct"
    return str(t)


def _incompatible(src: pa.DataType, dst: pa.DataType, where: str) -> tuple[str, str] | None:
    """(column path, reason) when ``src`` may not be cast to ``dst``; None when it may."""
    if src == dst:
        return None
    a, b = _kind(src), _kind(dst)
    if a == "null":
        return None
    if pa.types.is_dictionary(src):
        src = src.value_type
    if a != b and not (a == "int" and b == "float"):
        return where, f"a {a} cannot become a {b}"
    if a == "list":
        return _incompatible(src.value_type, dst.value_type, f"{where}[]")
    if a == "map":
        return (_incompatible(src.key_type, dst.key_type, f"{where}.key")
                or _incompatible(src.item_type, dst.item_type, f"{where}.value"))
    if a == "struct":
        wanted = {dst.field(i).name: dst.field(i) for i in range(dst.num_fields)}
        for i in range(src.num_fields):
            sf = src.field(i)
            if sf.name not in wanted:
                return f"{where}.{sf.name}", "field is not in the schema"
            problem = _incompatible(sf.type, wanted[sf.name].type, f"{where}.{sf.name}")
            if problem:
                return problem
    return None


def _nested_nulls(arr: pa.Array, t: pa.DataType, where: str) -> str | None:
    """Path of the first non-nullable field inside a list/struct/map that holds a null, else None."""
    if arr.null_count == len(arr) and len(arr):
        return None  # all null at this level: nothing below to check
    if pa.types.is_struct(t):
        valid = arr.is_valid()
        for i in range(t.num_fields):
            f = t.field(i)
            child = arr.field(i)
            if not f.nullable and pc.any(pc.and_(valid, child.is_null())).as_py():
                return f"{where}.{f.name}"
            found = _nested_nulls(child.filter(valid), f.type, f"{where}.{f.name}")
            if found:
                return found
    elif pa.types.is_map(t):
        start, stop = arr.offsets[0].as_py(), arr.offsets[-1].as_py()
        items = arr.items.slice(start, stop - start)  # .items ignores a slice of the map array
        if not t.item_field.nullable and items.null_count:
            return f"{where}.value"
        return _nested_nulls(items, t.item_type, f"{where}.value")
    elif pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        values = arr.flatten()
        if not t.value_field.nullable and values.null_count:
            return f"{where}[]"
        return _nested_nulls(values, t.value_type, f"{where}[]")
    return None


def schema_name(schema: pa.Schema) -> str:
    meta = schema.metadata or {}
    name = meta.get(b"cmbert.schema", b"?").decode()
    version = meta.get(b"cmbert.schema_version", b"?").decode()
    return f"{name} v{version}"


def is_secret_key(key: str) -> bool:
    """Whether a metadata key names a credential (``aws_secret_access_key``, ``hfToken``; not ``tokenizer``)."""
    words = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", str(key))
    words = re.sub(r"[^a-zA-Z0-9]+", "_", words).lower().strip("_")
    return bool(SECRET_KEY_RE.search(words))


def _scrub(value):
    """A copy of a JSON-like value with credential-named keys removed at any depth."""
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items() if not is_secret_key(k)}
    if isinstance(value, (list, tuple)):
        return [_scrub(v) for v in value]
    return value


def safe_metadata(metadata: dict | None) -> dict[str, str]:
    """File metadata with anything that looks like a credential removed.

    Keys naming a credential are dropped at any depth of a nested value, and so is any entry whose text
    contains the current AWS secret key, session token or access key id.
    """
    live = [v for v in (os.environ.get(var) for var in SECRET_ENV) if v and len(v) >= 4]
    out = {}
    for key, value in (metadata or {}).items():
        if is_secret_key(key):
            continue
        if isinstance(value, str):
            text = value
            try:  # a JSON document (e.g. a resolved config) is scrubbed inside as well
                parsed = json.loads(value)
                if isinstance(parsed, (dict, list)):
                    text = json.dumps(_scrub(parsed), sort_keys=True, default=str)
            except ValueError:
                pass
        else:
            text = json.dumps(_scrub(value), sort_keys=True, default=str)
        if any(secret in text for secret in live):
            continue
        out[str(key)] = text
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

    ``partition`` puts the file under hive-style ``key=value`` folders (values percent-encoded, as
    pyarrow and Polars decode them). The file is staged first and then moved into place, so a failure
    leaves nothing visible; the staging folder is removed whether the write succeeds or not.
    """
    table = conform(table, schema)
    meta = dict(table.schema.metadata or {})
    meta.update({k.encode(): v.encode() for k, v in safe_metadata(metadata).items()})
    table = table.replace_schema_metadata(meta)
    sub = [partition_segment(k, v) for k, v in (partition or {}).items()]
    fname = (name or f"part-{uuid.uuid4().hex}") + ".parquet"
    if "/" in fname or fname.startswith((".", "_")):
        raise StorageError(f"bad file name {fname!r}: no '/', and no leading '.' or '_' (readers skip those)")
    dest = locate(uri)
    staging = staging_location(dest, uuid.uuid4().hex)
    staged = staging.join(fname)
    try:
        try:
            if not dest.is_s3:  # S3 has no folders; pyarrow would write empty marker objects
                dest.fs.create_dir(staging.path, recursive=True)
            pq.write_table(table, staged.path, filesystem=dest.fs, compression="zstd")
        except OSError as exc:
            raise explain(exc, uri, "write") from None
        final = dest.join(*sub, fname)
        publish_file(dest.fs, staged.path, final.path, uri)
    finally:
        remove_quietly(dest.fs, staging.path)
    return final.uri


def partition_segment(key: str, value) -> str:
    """One hive-style ``key=value`` folder name; the value is percent-encoded so '/' cannot nest folders."""
    key = str(key)
    if not key or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
        raise StorageError(f"bad partition key {key!r}: letters, digits and '_' only")
    text = str(value)
    if text == "":
        raise StorageError(f"partition {key!r} has an empty value")
    return f"{key}={quote(text, safe='')}"


def staging_location(dest: Location, run: str) -> Location:
    """A staging folder beside the dataset (not inside it, so dataset globs never see it).

    A dataset at the root of a bucket stages inside it, under ``_staging/`` (which pyarrow skips).
    """
    parent, leaf = posixpath.split(dest.path.rstrip("/"))
    if dest.is_s3 and not parent:  # s3://bucket: the parent would be the list of buckets
        return dest.join(STAGING_DIR, f"{leaf}-{run}")
    path = posixpath.join(parent, STAGING_DIR, f"{leaf}-{run}")
    uri_parent = dest.uri.rstrip("/").rsplit("/", 1)[0]
    return Location(dest.fs, path, f"{uri_parent}/{STAGING_DIR}/{leaf}-{run}")


def publish_file(fs: pafs.FileSystem, src: str, dst: str, uri: str) -> None:
    """Move a staged file into the dataset. On S3 a move is copy+delete: the copy is the atomic step."""
    try:
        if not isinstance(fs, pafs.S3FileSystem):
            fs.create_dir(posixpath.dirname(dst), recursive=True)
        fs.move(src, dst)
    except OSError as exc:
        raise explain(exc, uri, "publish to") from None


def publish_dir(staging_uri: str, final_uri: str) -> list[str]:
    """Move every file under a staging folder (e.g. one Ray Data wrote) into the final dataset."""
    if is_s3(staging_uri) != is_s3(final_uri) or (is_s3(final_uri) and
                                                 urlparse(staging_uri).netloc != urlparse(final_uri).netloc):
        raise StorageError(f"cannot publish {staging_uri} to {final_uri}: staging must be in the same bucket "
                           "or on the same filesystem (use new_staging_uri)")
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


def _exists(loc: Location, uri: str) -> bool:
    try:
        info = loc.fs.get_file_info(loc.path)
    except OSError as exc:
        raise explain(exc, uri, "read") from None
    return info.type != pafs.FileType.NotFound


def dataset_exists(uri: str) -> bool:
    return _exists(locate(uri), uri)


def read_table(uri: str, schema: pa.Schema | None = None, columns: list[str] | None = None,
               filter=None) -> pa.Table:
    """Read a dataset (hive partitions understood). A missing dataset is an empty table of ``schema``.

    With ``schema``, files are read as that schema (columns an older file lacks come back null) and
    hive partition keys that are not schema columns are added at the end as strings.
    """
    loc = locate(uri)
    try:
        if not _exists(loc, uri):
            if schema is None:
                raise StorageError(f"cannot read {uri}: no such dataset")
            empty = schema.empty_table()
            return empty.select(columns) if columns else empty
        ds = pads.dataset(loc.path, filesystem=loc.fs, format="parquet", partitioning="hive")
        if schema is not None:
            keys = ds.partitioning.schema.names if ds.partitioning is not None else []
            part = pa.schema([schema.field(k) if k in schema.names else pa.field(k, pa.string()) for k in keys])
            full = pa.schema(list(schema) + [f for f in part if f.name not in schema.names],
                             metadata=schema.metadata)
            ds = pads.dataset(ds.files, filesystem=loc.fs, format="parquet", schema=full,
                              partitioning=pads.HivePartitioning(part), partition_base_dir=loc.path)
        return ds.to_table(columns=columns, filter=filter)
    except OSError as exc:
        raise explain(exc, uri, "read") from None
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise StorageError(_redact(f"cannot read {uri}: {str(exc).strip().splitlines()[0][:300]}")) from None


def distinct_values(uri: str, column: str, schema: pa.Schema) -> set[str]:
    """The set of values of one column of a dataset (empty when the dataset does not exist yet)."""
    table = read_table(uri, schema, columns=[column])
    return set(table.column(column).to_pylist())


def written_version(uri: str) -> str | None:
    """The ``cmbert.schema_version`` in the footer of one file of dataset ``uri``; None when it has no files.

    One file, not all: a dataset is written by one schema version unless older code wrote into a newer output,
    which no check here could prevent; reading every footer would cost one request per file on S3.
    """
    loc = locate(uri)
    try:
        if not _exists(loc, uri):
            return None
        files = pads.dataset(loc.path, filesystem=loc.fs, format="parquet", partitioning="hive").files
        if not files:
            return None
        meta = pq.read_schema(files[0], filesystem=loc.fs).metadata or {}
    except OSError as exc:
        raise explain(exc, uri, "read") from None
    version = meta.get(b"cmbert.schema_version")
    return version.decode() if version else None


def check_written_version(uri: str, schema: pa.Schema) -> None:
    """Refuse to add to dataset ``uri`` when its files were written with another major version of ``schema``."""
    found = written_version(uri)
    want = (schema.metadata or {}).get(b"cmbert.schema_version", b"?").decode()
    if found is not None and found.split(".")[0] != want.split(".")[0]:
        name = (schema.metadata or {}).get(b"cmbert.schema", b"?").decode()
        raise SchemaMismatchError(f"{uri} was written with {name} schema v{found}, this version writes v{want} "
                                  "(schemas/__init__.py says what changed): write to a new output")


def list_files(uri: str) -> list[str]:
    """Filesystem paths of a dataset's Parquet files, sorted (empty when it does not exist yet). Skips hidden
    and ``_``-prefixed entries as pyarrow's dataset discovery does."""
    loc = locate(uri)
    try:
        infos = loc.fs.get_file_info(pafs.FileSelector(loc.path, recursive=True, allow_not_found=True))
    except OSError as exc:
        raise explain(exc, uri, "list") from None
    out = []
    for info in infos:
        if info.type != pafs.FileType.File or not info.path.endswith(".parquet"):
            continue
        rel = posixpath.relpath(info.path, loc.path)
        if any(part.startswith((".", "_")) for part in rel.split("/")):
            continue
        out.append(info.path)
    return sorted(out)


def write_staged(table: pa.Table, fs: pafs.FileSystem, path: str, uri: str, schema: pa.Schema, *,
                 metadata: dict | None = None, drop: tuple[str, ...] = (), endpoint: str | None = None) -> int:
    """Write one staged Parquet file (a worker's output) in the declared schema; returns its size in bytes.

    ``metadata`` must already be safe (``safe_metadata``); ``drop`` names columns kept in folder names instead
    (hive partitions). On a local or shared filesystem the file is written under a temporary name and renamed,
    so the name only ever holds a whole file; on S3 an object appears whole when its upload completes."""
    table = conform(table, schema)
    meta = dict(table.schema.metadata or {})
    meta.update({k.encode(): v.encode() for k, v in (metadata or {}).items()})
    table = table.replace_schema_metadata(meta)
    if drop:
        table = table.drop_columns(list(drop))
    s3 = isinstance(fs, pafs.S3FileSystem)
    tmp = path if s3 else f"{path}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        if not s3:
            fs.create_dir(posixpath.dirname(path), recursive=True)
        pq.write_table(table, tmp, filesystem=fs, compression="zstd")
        if not s3:
            fs.move(tmp, path)
        return fs.get_file_info(path).size
    except OSError as exc:
        if not s3:
            try:
                fs.delete_file(tmp)
            except OSError:
                pass
        raise explain(exc, uri, "write", endpoint) from None


def require_shared(uri: str, timeout_s: float = 60.0) -> None:
    """On a Ray cluster of several nodes, refuse a local path that not every node sees, in one line, before work.

    S3 is shared by definition. For a path, the driver writes a probe file with a random token under it and a
    zero-CPU task pinned to every alive node reads it back: a filesystem every node mounts (NFS, Lustre, a
    cluster's shared volume) passes, a node-local disk fails. Without Ray, or on one node, there is nothing to
    check."""
    if is_s3(uri):
        return
    import ray

    if not ray.is_initialized():
        return
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) <= 1:
        return
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    loc = locate(uri)
    token = uuid.uuid4().hex
    probe = os.path.join(loc.path, f".cmbert-probe-{token}")
    try:
        os.makedirs(loc.path, exist_ok=True)
        with open(probe, "w") as f:
            f.write(token)
    except OSError as exc:
        raise explain(exc, uri, "write") from None

    @ray.remote(num_cpus=0, max_retries=0)
    def sees(path: str) -> str | None:
        try:
            with open(path) as f:
                return f.read()
        except OSError:
            return None

    try:
        refs = [sees.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(probe)
                for n in nodes]
        seen = ray.get(refs, timeout=timeout_s)
    finally:
        try:
            os.remove(probe)
        except OSError:
            pass
    blind = [n.get("NodeManagerAddress", n["NodeID"]) for n, s in zip(nodes, seen) if s != token]
    if blind:
        raise StorageError(f"output {uri} is a local path that node {blind[0]} of this {len(nodes)}-node Ray "
                           "cluster does not see: use s3://... or a filesystem every node mounts")
