"""Files that are not datasets: bytes, JSON documents, folders (a checkpoint), listings; local or on S3.

Every verb takes a URI (local path or ``s3://...``) or a ``Location`` (which carries a filesystem the driver
resolved, pickled to a worker). A missing file raises ``FileNotFoundError`` (callers word their own "is missing");
any other I/O failure raises a one-line ``StorageError``. A write is whole or absent: on a local filesystem it goes
to a temporary name and is renamed into place; on S3 an object appears when its upload completes.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import tempfile
import uuid

import pyarrow.fs as pafs

from cmbert.storage.locations import Location, explain, has_folders, locate

Where = "str | Location"


def exists(where: Where, action: str = "read") -> bool:
    """Whether a file or folder (an S3 prefix with objects under it) is there."""
    loc = locate(where)
    try:
        info = loc.fs.get_file_info(loc.path)
    except OSError as exc:
        raise explain(exc, loc.uri, action) from None
    return info.type != pafs.FileType.NotFound


def read_bytes(where: Where, action: str = "read") -> bytes:
    loc = locate(where)
    try:
        with loc.fs.open_input_stream(loc.path, compression=None) as f:
            return f.read()
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise explain(exc, loc.uri, action) from None


def write_bytes(where: Where, data: bytes, action: str = "write") -> str:
    """Write one whole file (parent folders made as needed); returns its URI."""
    loc = locate(where)
    try:
        if not has_folders(loc.fs):
            with loc.fs.open_output_stream(loc.path, compression=None) as f:
                f.write(data)
            return loc.uri
        loc.fs.create_dir(posixpath.dirname(loc.path), recursive=True)
        tmp = f"{loc.path}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            with loc.fs.open_output_stream(tmp, compression=None) as f:
                f.write(data)
            loc.fs.move(tmp, loc.path)
        except BaseException:
            _delete_quietly(loc.fs, tmp)
            raise
    except OSError as exc:
        raise explain(exc, loc.uri, action) from None
    return loc.uri


def json_text(obj) -> str:
    """THE JSON layout of every document cmbert writes: indented, keys sorted, anything else as its str()."""
    return json.dumps(obj, indent=2, sort_keys=True, default=str)


def read_json(where: Where, action: str = "read"):
    """The parsed document (``ValueError`` when it is not JSON)."""
    return json.loads(read_bytes(where, action))


def write_json(where: Where, obj, action: str = "write") -> str:
    return write_bytes(where, json_text(obj).encode(), action)


def sha256(where: Where, action: str = "read") -> tuple[str, int]:
    """(sha256 hex digest, size in bytes) of one file, streamed in 1 MiB blocks."""
    loc = locate(where)
    h, size = hashlib.sha256(), 0
    try:
        with loc.fs.open_input_stream(loc.path, compression=None) as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
                size += len(block)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise explain(exc, loc.uri, action) from None
    return h.hexdigest(), size


def list_files(where: Where, *, suffix: str | tuple[str, ...] | None = ".parquet", skip_hidden: bool = True,
               recursive: bool = True, relative: bool = False, action: str = "list") -> list[str]:
    """The files under a folder, sorted (empty when it does not exist): THE listing of cmbert.

    ``suffix``: keep names ending so (None: every file). ``skip_hidden``: leave out anything under a ``.`` or ``_``
    entry, as pyarrow's dataset discovery does (a dataset's readers never see those). Filesystem paths, or paths
    relative to the folder with ``relative``."""
    loc = locate(where)
    try:
        infos = loc.fs.get_file_info(pafs.FileSelector(loc.path, recursive=recursive, allow_not_found=True))
    except OSError as exc:
        raise explain(exc, loc.uri, action) from None
    out = []
    for info in infos:
        if info.type != pafs.FileType.File or (suffix is not None and not info.path.endswith(suffix)):
            continue
        rel = posixpath.relpath(info.path, loc.path)
        if skip_hidden and any(part.startswith((".", "_")) for part in rel.split("/")):
            continue
        out.append(rel if relative else info.path)
    return sorted(out)


def copy_tree(src: Where, dst: Where, *, skip: tuple[str, ...] = (), last: tuple[str, ...] = (),
              recursive: bool = True, action: str = "write") -> list[str]:
    """Copy every file under folder ``src`` to folder ``dst`` (another filesystem is fine); returns the relative
    paths copied, in order.

    Each file lands whole (local: written beside and renamed; S3: one PUT per object). The names in ``last`` are
    copied after all others, and any old copy of them at ``dst`` is removed first, so a reader that waits for a
    ``last`` file (a checkpoint's meta.json) never sees it next to files from another copy. ``skip``: relative
    paths left out."""
    s, d = locate(src), locate(dst)
    names = [n for n in list_files(s, suffix=None, skip_hidden=False, recursive=recursive, relative=True)
             if n not in skip]
    order = [n for n in names if n not in last] + [n for n in last if n in names]
    try:
        if has_folders(d.fs):
            d.fs.create_dir(d.path, recursive=True)
        for name in last:
            old = d.join(name)
            if d.fs.get_file_info(old.path).type == pafs.FileType.File:
                d.fs.delete_file(old.path)
        for name in order:
            final = d.join(name)
            if not has_folders(d.fs):
                pafs.copy_files(s.join(name).path, final.path, source_filesystem=s.fs, destination_filesystem=d.fs)
                continue
            d.fs.create_dir(posixpath.dirname(final.path), recursive=True)
            tmp = final.path + ".partial"
            pafs.copy_files(s.join(name).path, tmp, source_filesystem=s.fs, destination_filesystem=d.fs)
            d.fs.move(tmp, final.path)
    except OSError as exc:
        raise explain(exc, d.uri, action) from None
    return order


def local_copy(src: Where, key: str, under: str = "cmbert-cache") -> str:
    """A local folder holding folder ``src``: its own path when it is local, else a copy cached for the life of
    the machine in the temp folder's ``under``, one per ``key`` (e.g. URI + content version). Many processes may ask at
    once: each copies into its own folder and renames it into place, so a cached folder is always whole."""
    loc = locate(src)
    if isinstance(loc.fs, pafs.LocalFileSystem):
        return loc.path
    local = os.path.join(tempfile.gettempdir(), under, hashlib.sha256(key.encode()).hexdigest()[:16])
    done = os.path.join(local, ".complete")
    if not os.path.exists(done):
        tmp = f"{local}.{os.getpid()}.{uuid.uuid4().hex[:6]}.tmp"
        os.makedirs(tmp, exist_ok=True)
        try:
            pafs.copy_files(loc.path, tmp, source_filesystem=loc.fs, destination_filesystem=pafs.LocalFileSystem())
        except OSError as exc:
            remove_tree(tmp)
            raise explain(exc, loc.uri, "read") from None
        open(os.path.join(tmp, ".complete"), "w").close()
        try:
            os.replace(tmp, local)  # atomic: a folder with .complete is always whole
        except OSError:  # another process on this machine finished first
            remove_tree(tmp)
    return local


def scratch_dir(prefix: str = "cmbert-"):
    """A local temporary folder, removed when the ``with`` block ends (a TemporaryDirectory)."""
    return tempfile.TemporaryDirectory(prefix=prefix)


def remove_tree(where: Where) -> None:
    """Remove a folder and everything under it, quietly (nothing there is fine)."""
    loc = locate(where)
    try:
        loc.fs.delete_dir(loc.path)
    except OSError:
        pass


def _delete_quietly(fs: pafs.FileSystem, path: str) -> None:
    try:
        fs.delete_file(path)
    except OSError:
        pass
