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
from dataclasses import dataclass

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save_file

from cmbert.errors import UserError
from cmbert.model import CMBert, CMBertConfig, build_model
from cmbert import storage
from cmbert.storage import explain, locate, read_json

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
    with storage.scratch_dir("cmbert-ckpt-") as stage:
        save_file(state, os.path.join(stage, WEIGHTS), metadata={"format": "pt"})
        storage.write_json(os.path.join(stage, CONFIG), config.to_dict())
        tokenizer.save_pretrained(stage)
        files = {}
        for name in storage.list_files(stage, suffix=None, skip_hidden=False, recursive=False, relative=True):
            sha256, size = storage.sha256(os.path.join(stage, name))
            files[name] = {"bytes": size, "sha256": sha256}
        full_meta = dict(meta) | {"format": FORMAT, "model_version": weights_version(state), "files": files}
        storage.write_json(os.path.join(stage, META), full_meta)
        publish_checkpoint(stage, uri)
    return full_meta


def publish_checkpoint(src: "str | storage.Location", uri: str, skip: tuple[str, ...] = ()) -> None:
    """Copy the files of one checkpoint folder to ``uri``, meta.json last (and any old meta.json removed first),
    so a reader never sees a meta.json next to files from another save."""
    names = storage.list_files(src, suffix=None, skip_hidden=False, recursive=False, relative=True)
    if META not in names:
        raise CheckpointError(f"cannot publish {storage.locate(src).path}: it has no {META}")
    storage.copy_tree(src, uri, skip=skip, last=(META,), recursive=False, action="write checkpoint to")


def publish_dir(src_fs, src_path: str, uri: str, skip: tuple[str, ...] = ()) -> None:
    """Deprecated spelling of ``publish_checkpoint`` (a filesystem and a path on it), until jobs/train.py moves."""
    publish_checkpoint(storage.Location(src_fs, src_path, src_path), uri, skip)


def write_multiseed_meta(uri: str, meta: dict) -> None:
    """The top-level meta.json of a multi-seed output: ``checkpoints`` (sub-folders) and ``best`` (one of them)."""
    storage.write_json(locate(uri).join(META), dict(meta) | {"format": MULTI_FORMAT}, action="write checkpoint to")


def read_meta(uri: str) -> dict:
    loc = locate(uri).join(META)
    try:
        data = storage.read_bytes(loc)
    except FileNotFoundError:
        raise CheckpointError(f"{uri} is not a checkpoint: {loc.uri} is missing (no checkpoint there, or its "
                              f"save did not finish)") from None
    except storage.StorageError as exc:
        raise CheckpointError(str(exc)) from None
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
            sha256, size = storage.sha256(loc)
        except FileNotFoundError:
            raise CheckpointError(f"checkpoint {uri} is incomplete: {loc.uri} is missing") from None
        except storage.StorageError as exc:
            raise CheckpointError(str(exc)) from None
        _check_file(uri, loc.uri, info, sha256, size)
    return meta


def load_checkpoint(uri: str, device: str | torch.device = "cpu") -> LoadedModel:
    """Load a checkpoint (the best seed of a multi-seed output) in eval mode. No pretrained weights needed."""
    meta = read_meta(uri)
    if meta["format"] == MULTI_FORMAT:
        return load_checkpoint(locate(uri).join(meta["best"]).uri, device)
    src = locate(uri)
    with storage.scratch_dir("cmbert-load-") as local:
        data = {}
        for name, info in sorted(meta["files"].items()):
            try:
                data[name] = storage.read_bytes(src.join(name))
            except FileNotFoundError:
                raise CheckpointError(f"checkpoint {uri} is incomplete: {src.join(name).uri} is missing") from None
            except storage.StorageError as exc:
                raise CheckpointError(str(exc)) from None
            _check_file(uri, src.join(name).uri, info, hashlib.sha256(data[name]).hexdigest(), len(data[name]))
            if name != WEIGHTS:  # the tokenizer loads from a folder; the weights load from memory
                storage.write_bytes(os.path.join(local, name), data[name])
        config = CMBertConfig.from_dict(json.loads(data[CONFIG]))
        if config.encoder_config is None:
            raise CheckpointError(f"checkpoint {uri} is corrupt: {CONFIG} has no encoder_config")
        model = build_model(config)
        try:
            state = load_safetensors(data.pop(WEIGHTS))
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



@dataclass
class ModelInfo:
    """What scoring needs to know of a checkpoint before any weights load."""

    checkpoint: str  # the single checkpoint scored with (the best seed of a multi-seed output)
    model_id: str
    model_version: str
    audio: "ModelAudio"  # cmbert.scoring.ModelAudio: which utterances' audio it can score


def read_model_info(checkpoint: str) -> ModelInfo:
    """``ModelInfo`` from a checkpoint's meta.json and config.json only (no weights read here); a multi-seed
    output resolves to its best seed."""
    from cmbert.scoring import ModelAudio  # scoring builds on this module, not the other way round

    meta = read_meta(checkpoint)
    if meta["format"] == MULTI_FORMAT:
        checkpoint = locate(checkpoint).join(meta["best"]).uri
        meta = read_meta(checkpoint)
    loc = locate(checkpoint).join(CONFIG)
    try:
        config = CMBertConfig.from_dict(read_json(loc))
    except FileNotFoundError as exc:
        raise explain(exc, loc.uri, "read") from None
    return ModelInfo(checkpoint, str(meta.get("model_id") or "cmbert"), str(meta["model_version"]),
                     ModelAudio.from_meta(meta, config))
