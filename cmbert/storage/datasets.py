"""Parquet datasets on a local path or an ``s3://`` URI, with declared schemas and staged publishing.

- Writers cast to the declared schema and raise ``SchemaMismatchError`` naming the column.
- Files are written under a staging prefix (``<parent>/_staging/<run>/``, outside the dataset) and then
  moved into the dataset. Each file holds complete records, so a reader sees either a file or nothing, and
  a write that fails before publishing leaves nothing visible at the destination.
"""

from __future__ import annotations

import posixpath
import re
import uuid
from urllib.parse import quote, urlparse

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from cmbert.errors import UserError
from cmbert.storage.blobs import exists, list_files
from cmbert.storage.locations import Location, StorageError, explain, has_folders, is_s3, locate
from cmbert.storage.secrets import redact, safe_metadata

STAGING_DIR = "_staging"


class SchemaMismatchError(UserError, ValueError):
    """A table does not fit its declared schema; the message names the column."""


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
            if has_folders(dest.fs):
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
        if has_folders(fs):
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
    moved = []
    for rel in list_files(src, skip_hidden=False, relative=True):
        publish_file(dst.fs, src.join(rel).path, posixpath.join(dst.path, rel), final_uri)
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
    return exists(uri)


def read_table(uri: str, schema: pa.Schema | None = None, columns: list[str] | None = None,
               filter=None) -> pa.Table:
    """Read a dataset (hive partitions understood). A missing dataset is an empty table of ``schema``.

    With ``schema``, files are read as that schema (columns an older file lacks come back null) and
    hive partition keys that are not schema columns are added at the end as strings.
    """
    loc = locate(uri)
    try:
        if not exists(loc):
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
        raise StorageError(redact(f"cannot read {uri}: {str(exc).strip().splitlines()[0][:300]}")) from None


def read_file(where: "str | Location", columns: list[str] | None = None, filter=None) -> pa.Table:
    """One Parquet file, as it was written (no schema applied): a worker's read of a file the driver listed.

    Errors are pyarrow's own (an ``OSError``), left to the caller's retry policy: a worker holds a filesystem
    path, not the dataset's URI a user-facing message would name."""
    loc = locate(where)
    return pads.dataset(loc.path, filesystem=loc.fs, format="parquet").to_table(columns=columns, filter=filter)


def distinct_tuples(uri: str, files: list[str], columns: tuple[str, ...], *, where: str | None = None,
                    required: tuple[str, ...] = (), kind: str = "dataset") -> set[tuple]:
    """The distinct tuples of ``columns`` in the files of dataset ``uri``, from each row group's column statistics
    where every column holds one value (one footer read per file); other row groups are read for those columns
    only, counting the rows where the boolean column ``where`` is true. A file without one of ``required`` is
    not a ``kind``: a ``StorageError``."""
    import pyarrow.parquet as pq

    if not files:
        raise StorageError(f"cannot read {uri}: no such dataset")
    fs = locate(uri).fs
    out: set[tuple] = set()
    try:
        for path in files:
            pf = pq.ParquetFile(path, filesystem=fs)
            names = pf.schema_arrow.names
            missing = [c for c in required if c not in names]
            if missing:
                raise StorageError(f"cannot read {uri}: not {kind} (no column {missing[0]!r})")
            index = {name: i for i, name in enumerate(names)}
            for rg in range(pf.metadata.num_row_groups):
                group = pf.metadata.row_group(rg)
                stats = [group.column(index[c]).statistics for c in columns]
                if all(st is not None and st.has_min_max and st.min == st.max for st in stats):
                    out.add(tuple(st.min for st in stats))
                    continue
                t = pf.read_row_group(rg, columns=[*([where] if where else []), *columns])
                if where:
                    t = t.filter(t.column(where))
                out |= set(zip(*(t.column(c).to_pylist() for c in columns)))
    except OSError as exc:
        raise explain(exc, uri, "read") from None
    return out


def written_version(uri: str) -> str | None:
    """The ``cmbert.schema_version`` in the footer of one file of dataset ``uri``; None when it has no files.

    One file, not all: a dataset is written by one schema version unless older code wrote into a newer output,
    which no check here could prevent; reading every footer would cost one request per file on S3.
    """
    loc = locate(uri)
    try:
        if not exists(loc):
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
    s3 = not has_folders(fs)
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
