"""What a preprocess run works on: media files under an input root and/or rows of a manifest.

Runs on the driver. Produces the planned tasks (``cmbert.manifest.ClipTask``, one per clip or manifest row), plus
rejects for rows that are wrong before any audio is touched (missing file, path outside the root,
label that is not a number). A malformed manifest (unreadable, no usable columns) is an error before any work.
An annotated row (a transcript or a label) carries its row key (``cmbert.manifest.row_key``): it becomes
exactly one utterance, whichever other rows name the same file or the same transcript.
"""

from __future__ import annotations

import math
import posixpath
import re

import polars as pl

from cmbert import storage
from cmbert.errors import UserError
from cmbert.manifest import ClipTask, Reject, row_key, source_id, task_id, text_id
from cmbert.storage import StorageError

MEDIA_EXTENSIONS = (".mp4", ".webm", ".mkv", ".mov", ".m4a", ".wav", ".flac", ".mp3", ".ogg", ".opus", ".aac")
LABEL_RANGE = (-3.0, 3.0)
RESERVED_COLUMNS = ("file", "start", "end")


class ManifestError(UserError, ValueError):
    """The manifest cannot be used at all (raised before any work starts)."""


def read_manifest(uri: str) -> pl.DataFrame:
    """CSV, TSV or Parquet, local or S3. Every column is read as text; parsing happens per row."""
    try:
        data = storage.read_bytes(uri, "read manifest")
    except FileNotFoundError:
        raise ManifestError(f"manifest {uri} does not exist") from None
    try:
        if uri.lower().endswith(".parquet"):
            import io

            df = pl.read_parquet(io.BytesIO(data))
            return df.with_columns(pl.all().cast(pl.String))
        if data[:2] in (b"\xff\xfe", b"\xfe\xff") or b"\x00" in data[:4096]:
            raise ManifestError(f"manifest {uri} is malformed: not UTF-8 text (binary, or UTF-16: "
                                "save it as UTF-8)")
        sep = "\t" if uri.lower().endswith((".tsv", ".tab")) else ","
        df = pl.read_csv(data, separator=sep, infer_schema=False, quote_char='"')
    except ManifestError:
        raise
    except Exception as exc:  # polars raises several exception types for malformed files
        raise ManifestError(f"manifest {uri} is malformed: {str(exc).splitlines()[0]}") from None
    for name in df.columns:  # polars renames a repeated header to NAME_duplicated_N
        base = re.fullmatch(r"(.*)_duplicated_\d+", name)
        if base and base.group(1) in df.columns:
            raise ManifestError(f"manifest {uri} is malformed: column {base.group(1)!r} appears more than once")
    return df


def list_media(input_uri: str) -> list[str]:
    """Media files under the input root, as paths relative to it, sorted."""
    files = storage.list_files(input_uri, suffix=None, skip_hidden=True, relative=True)
    if not files and not storage.exists(input_uri, "list"):
        raise ManifestError(f"input {input_uri} does not exist")
    return [p for p in files if p.lower().endswith(MEDIA_EXTENSIONS)]


def safe_relative(path: str) -> str | None:
    """The normalised relative path, or None when it would escape the input root."""
    if not path or path.startswith(("/", "\\")) or "://" in path:
        return None
    norm = posixpath.normpath(path.replace("\\", "/"))
    if norm == ".." or norm.startswith("../") or norm == ".":
        return None
    return norm


def parse_label(value: str | None) -> tuple[float | None, str | None]:
    """(label, None) or (None, reason). Empty and NaN mean 'no label'."""
    if value is None or str(value).strip() == "":
        return None, None
    try:
        label = float(value)
    except ValueError:
        return None, f"label {value!r} is not a number"
    if math.isnan(label):
        return None, None
    if not LABEL_RANGE[0] <= label <= LABEL_RANGE[1]:
        return None, f"label {label} is outside [{LABEL_RANGE[0]}, {LABEL_RANGE[1]}]"
    return label, None


def parse_seconds(value: str | None, name: str) -> tuple[float | None, str | None]:
    if value is None or str(value).strip() == "":
        return None, None
    try:
        seconds = float(value)
    except ValueError:
        return None, f"{name} {value!r} is not a number of seconds"
    if math.isnan(seconds) or seconds < 0:
        return None, f"{name} {value!r} is not a valid time"
    return seconds, None


def build_tasks(
    input_uri: str | None,
    manifest: pl.DataFrame | None,
    text_column: str = "text",
    label_column: str = "label",
) -> tuple[list[ClipTask], list[Reject]]:
    """The planned tasks and the rejects found before any audio is read. Text rows are named here (by their
    text); media tasks are named by their bytes later (``cmbert.stages.identify_tasks``)."""
    if manifest is None:
        if input_uri is None:
            raise ManifestError("give --input (a folder or S3 prefix of media) and/or --manifest")
        return [media_task(rel) for rel in list_media(input_uri)], []
    columns = manifest.columns
    has_file = "file" in columns
    if has_file and input_uri is None:
        raise ManifestError("the manifest has a 'file' column, so --input (the folder it is relative to) is required")
    if not has_file and text_column not in columns:
        raise ManifestError(f"the manifest has neither a 'file' column nor a {text_column!r} column")
    carried = [c for c in columns if c not in (*RESERVED_COLUMNS, text_column, label_column)]
    tasks, rejects = [], []
    seen: dict[tuple, int] = {}  # occurrences so far of each (file, transcript, segment) among annotated rows
    for i, row in enumerate(manifest.iter_rows(named=True)):
        text = row.get(text_column)
        text = text.strip() if isinstance(text, str) and text.strip() else None
        extra = tuple((c, str(row[c])) for c in carried if row[c] is not None)
        file = row.get("file") if has_file else None
        source = f"manifest:{i + 1}" if not file else file
        label, bad_label = parse_label(row.get(label_column))
        start, bad_start = parse_seconds(row.get("start"), "start")
        end, bad_end = parse_seconds(row.get("end"), "end")
        problem = bad_label or bad_start or bad_end
        if not problem and start is not None and end is not None and end <= start:
            problem = f"segment end {end} is not after start {start}"
        rel = safe_relative(str(file)) if file else None
        key = None
        if text is not None or label is not None or bad_label is not None:  # annotated: one row, one utterance
            named = (rel or (str(file) if file else None), text, start, end)
            key = row_key(*named, seen.get(named, 0))
            seen[named] = seen.get(named, 0) + 1
        if not file:
            if text is None:
                problem = problem or "row has neither a file nor a transcript"
            clip = text_id(text) if text else source_id(source)
            if problem:
                rejects.append(Reject(task_id(clip, row=key), clip, source, "manifest", problem))
            else:
                tasks.append(ClipTask("text", source, text, label, extra=extra, row=key,
                                      task_id=task_id(clip, row=key), clip_id=clip))
            continue
        if rel is None:
            problem = problem or f"path {file!r} is outside the input root"
        if problem:
            sid = source_id(str(file))
            rejects.append(Reject(task_id(sid, start, end, key), sid, str(file), "manifest", problem))
            continue
        tasks.append(ClipTask("media", rel, text, label, start, end, extra, key))
    return tasks, rejects


def media_task(rel: str) -> ClipTask:
    """An unannotated clip: split into utterances by the pipeline."""
    return ClipTask("media", rel)


__all__ = ["ManifestError", "StorageError", "build_tasks", "list_media", "read_manifest"]
