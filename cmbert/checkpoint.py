"""Checkpoints: model.safetensors + config.json + tokenizer files + meta.json, in a local folder or under s3://.

meta.json is written last and lists every other file with its size and sha256, so a checkpoint whose
save did not finish (no meta.json) or whose files were cut short or changed is refused with a clear error.
Weights are only ever safetensors: nothing here unpickles.

A multi-seed training output is a folder of ``seed-N/`` checkpoints plus a top-level meta.json naming the
best one; ``load_checkpoint`` on the top level loads that seed.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import tempfile
from dataclasses import dataclass

import pyarrow.fs as pafs
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save_file

from cmbert.errors import UserError
from cmbert.model import CMBert, CMBertConfig, build_model
from cmbert.storage import explain, locate

FORMAT = "cmbert-checkpoint/1"
MULTI_FORMAT = "cmbert-multiseed/1"
META = "meta.json"
WEIGHTS = "model.safetensors"
CONFIG = "config.json"


class CheckpointError(UserError, RuntimeError):
    """A checkpoint is missing, unfinished, truncated or corrupt; the message names the path."""


@dataclass
class LoadedModel:
    model: CMBert
    tokenizer: object
    config: CMBertConfig
    meta: dict


def weights_version(state: dict[str, torch.Tensor]) -> str:
    """A content hash of the weights (names, dtypes, shapes, bytes): the model_version of a checkpoint."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def _sha256_stream(f) -> tuple[str, int]:
    """(sha256 hex digest, bytes read) of a binary stream, read in 1 MiB blocks."""
    h, size = hashlib.sha256(), 0
    for block in iter(lambda: f.read(1 << 20), b""):
        h.update(block)
        size += len(block)
    return h.hexdigest(), size


def _sha256_file(path: str) -> str:
    with open(path, "rb") as f:
        return _sha256_stream(f)[0]


def _check_file(uri: str, file_uri: str, info: dict, sha256: str, size: int) -> None:
    """Raise CheckpointError unless a file's size and sha256 are what meta.json lists for it."""
    if size != info["bytes"]:
        raise CheckpointError(f"checkpoint {uri} is corrupt: {file_uri} has {size} bytes, "
                              f"meta.json says {info['bytes']} (truncated or overwritten)")
    if sha256 != info["sha256"]:
        raise CheckpointError(f"checkpoint {uri} is corrupt: {file_uri} does not match the sha256 in meta.json")


def save_checkpoint(model, tokenizer, config: CMBertConfig, uri: str, meta: dict) -> dict:
    """Write a checkpoint to ``uri`` (local folder or s3://...). Returns the meta.json written.

    ``meta`` should carry feature_set, feature_dim, model_id, seed, epoch and metrics; model_version (the
    weights' content hash), the file list and the format are added here.
    """
    model = getattr(model, "module", model)  # unwrap DDP
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with tempfile.TemporaryDirectory(prefix="cmbert-ckpt-") as stage:
        save_file(state, os.path.join(stage, WEIGHTS), metadata={"format": "pt"})
        with open(os.path.join(stage, CONFIG), "w") as f:
            json.dump(config.to_dict(), f, indent=2, sort_keys=True, default=str)
        tokenizer.save_pretrained(stage)
        files = {}
        for name in sorted(os.listdir(stage)):
            path = os.path.join(stage, name)
            if os.path.isfile(path):
                files[name] = {"bytes": os.path.getsize(path), "sha256": _sha256_file(path)}
        full_meta = dict(meta) | {"format": FORMAT, "model_version": weights_version(state), "files": files}
        with open(os.path.join(stage, META), "w") as f:
            json.dump(full_meta, f, indent=2, sort_keys=True, default=str)
        publish_dir(pafs.LocalFileSystem(), stage, uri)
    return full_meta


def publish_dir(src_fs: pafs.FileSystem, src_path: str, uri: str, skip: tuple[str, ...] = ()) -> None:
    """Copy the files of one checkpoint folder to ``uri``, meta.json last (and any old meta.json removed first),
    so a reader never sees a meta.json next to files from another save."""
    dest = locate(uri)
    try:
        infos = src_fs.get_file_info(pafs.FileSelector(src_path, recursive=False))
        names = sorted(posixpath.basename(i.path) for i in infos if i.type == pafs.FileType.File)
        if META not in names:
            raise CheckpointError(f"cannot publish {src_path}: it has no {META}")
        dest.fs.create_dir(dest.path, recursive=True)
        old_meta = dest.join(META)
        if dest.fs.get_file_info(old_meta.path).type == pafs.FileType.File:
            dest.fs.delete_file(old_meta.path)
        for name in [n for n in names if n != META and n not in skip] + [META]:
            src = posixpath.join(src_path, name)
            final = dest.join(name)
            if dest.is_s3:  # one PUT per object: an object is either complete or absent
                pafs.copy_files(src, final.path, source_filesystem=src_fs, destination_filesystem=dest.fs)
            else:  # local: write beside, then rename into place
                tmp = final.path + ".partial"
                pafs.copy_files(src, tmp, source_filesystem=src_fs, destination_filesystem=dest.fs)
                os.replace(tmp, final.path)
    except OSError as exc:
        raise explain(exc, uri, "write checkpoint to") from None


def write_multiseed_meta(uri: str, meta: dict) -> None:
    """The top-level meta.json of a multi-seed output: ``checkpoints`` (sub-folders) and ``best`` (one of them)."""
    dest = locate(uri)
    body = json.dumps(dict(meta) | {"format": MULTI_FORMAT}, indent=2, sort_keys=True, default=str).encode()
    try:
        dest.fs.create_dir(dest.path, recursive=True)
        with dest.fs.open_output_stream(dest.join(META).path) as f:
            f.write(body)
    except OSError as exc:
        raise explain(exc, uri, "write checkpoint to") from None


def read_meta(uri: str) -> dict:
    loc = locate(uri).join(META)
    try:
        with loc.fs.open_input_stream(loc.path) as f:
            data = f.read()
    except FileNotFoundError:
        raise CheckpointError(f"{uri} is not a checkpoint: {loc.uri} is missing (no checkpoint there, or its "
                              f"save did not finish)") from None
    except OSError as exc:
        raise CheckpointError(str(explain(exc, loc.uri, "read"))) from None
    try:
        meta = json.loads(data)
    except ValueError:
        raise CheckpointError(f"checkpoint {uri} is corrupt: {loc.uri} is not valid JSON") from None
    if meta.get("format") not in (FORMAT, MULTI_FORMAT):
        raise CheckpointError(f"{uri} is not a cmbert checkpoint (format {meta.get('format')!r} in {loc.uri})")
    return meta


def seed_checkpoints(uri: str) -> list[str]:
    """The checkpoint URIs under ``uri``: every seed of a multi-seed output, or ``uri`` itself."""
    meta = read_meta(uri)
    if meta["format"] == MULTI_FORMAT:
        return [locate(uri).join(name).uri for name in meta["checkpoints"]]
    return [uri]


def verify_checkpoint(uri: str) -> dict:
    """Check, without loading the model, that every file meta.json lists is there, whole and unchanged (size and
    sha256); returns the meta. For a job's driver: a damaged checkpoint is refused in one line before any work,
    instead of failing inside every worker that loads it. ``uri`` is one checkpoint, not a multi-seed output."""
    meta = read_meta(uri)
    src = locate(uri)
    for name, info in sorted(meta.get("files", {}).items()):
        loc = src.join(name)
        try:
            with loc.fs.open_input_stream(loc.path) as f:
                sha256, size = _sha256_stream(f)
        except FileNotFoundError:
            raise CheckpointError(f"checkpoint {uri} is incomplete: {loc.uri} is missing") from None
        except OSError as exc:
            raise CheckpointError(str(explain(exc, loc.uri, "read"))) from None
        _check_file(uri, loc.uri, info, sha256, size)
    return meta


def load_checkpoint(uri: str, device: str | torch.device = "cpu") -> LoadedModel:
    """Load a checkpoint (the best seed of a multi-seed output) in eval mode. No pretrained weights needed."""
    meta = read_meta(uri)
    if meta["format"] == MULTI_FORMAT:
        return load_checkpoint(locate(uri).join(meta["best"]).uri, device)
    src = locate(uri)
    with tempfile.TemporaryDirectory(prefix="cmbert-load-") as local:
        for name, info in sorted(meta["files"].items()):
            path = os.path.join(local, name)
            try:
                pafs.copy_files(src.join(name).path, path, source_filesystem=src.fs,
                                destination_filesystem=pafs.LocalFileSystem())
            except FileNotFoundError:
                raise CheckpointError(f"checkpoint {uri} is incomplete: {src.join(name).uri} is missing") from None
            except OSError as exc:
                raise CheckpointError(str(explain(exc, src.join(name).uri, "read"))) from None
            _check_file(uri, src.join(name).uri, info, _sha256_file(path), os.path.getsize(path))
        with open(os.path.join(local, CONFIG)) as f:
            config = CMBertConfig.from_dict(json.load(f))
        if config.encoder_config is None:
            raise CheckpointError(f"checkpoint {uri} is corrupt: {CONFIG} has no encoder_config")
        model = build_model(config)
        with open(os.path.join(local, WEIGHTS), "rb") as f:
            try:
                state = load_safetensors(f.read())
            except Exception as exc:  # safetensors raises its own error types for bad headers
                raise CheckpointError(f"checkpoint {uri} is corrupt: cannot read {WEIGHTS}: {exc}") from None
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            first = str(exc).splitlines()[0]
            raise CheckpointError(f"checkpoint {uri} does not fit its config.json: {first}") from None
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(local)
    model.to(device).eval()
    return LoadedModel(model=model, tokenizer=tokenizer, config=config, meta=meta)

