"""Checkpoints: model.safetensors + config.json + tokenizer files + meta.json, in a local folder or under s3://.

meta.json (``CheckpointMeta``, read and written only here) is written last and lists every other file with its size and sha256, so a checkpoint whose
save did not finish (no meta.json) or whose files were cut short or changed is refused with a clear error.
Weights are only ever safetensors: nothing here unpickles.

A multi-seed training output is a folder of ``seed-N/`` checkpoints plus a top-level meta.json naming the
best one; ``load_checkpoint`` on the top level loads that seed.

The training job's epoch checkpoints add a second format beside the first: Adam's state
and where the loop stood (``TrainState``: the epoch and the dev history so far), written by ``save_train_state`` and
read by ``load_train_state`` (optimizer.safetensors + train_state.json), which a resumed run reads and the published
checkpoint leaves out (``TRAIN_STATE_FILES``).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field, fields, replace
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import load_file, save_file

from cmbert import storage
from cmbert.errors import UserError
from cmbert.model import CMBert, CMBertConfig, build_model
from cmbert.storage import StorageError, locate

if TYPE_CHECKING:  # a type only (read_model_info imports it when called)
    from cmbert.scoring import ModelAudio

FORMAT = "cmbert-checkpoint/1"
MULTI_FORMAT = "cmbert-multiseed/1"
META = "meta.json"
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
TRAIN_STATE_FILES = ("optimizer.safetensors", "train_state.json")  # in epoch checkpoints only, never published


class CheckpointError(UserError, RuntimeError):
    """A checkpoint is missing, unfinished, truncated or corrupt; the message names the path."""


@dataclass
class CheckpointMeta:
    """meta.json: what a checkpoint is (format, weights hash, files) and what it was trained on.

    One checkpoint (``FORMAT``) has ``files``; a multi-seed output's top level (``MULTI_FORMAT``) has
    ``checkpoints`` (its seed folders) and ``best`` (one of them) instead. Keys an older meta.json lacks get the
    defaults below; keys this code does not know are ignored.
    """

    format: str = FORMAT
    model_version: str = ""  # weights_version() of the weights; set by save_checkpoint
    feature_set: str = "none"  # the audio features trained on ("none": text only)
    feature_dim: int = 0
    model_id: str | None = None  # the model's name in score rows
    # "zeros": trained on audio-absent rows as zero audio, so it may score them the same way; else "refuse".
    missing_audio: str = "refuse"
    seed: int | None = None
    epoch: int | None = None
    metrics: dict = field(default_factory=dict)  # dev metrics of this epoch
    run_id: str | None = None
    code_version: str | None = None
    train_config: dict = field(default_factory=dict)  # the training job's resolved options
    files: dict = field(default_factory=dict)  # name -> {"bytes": int, "sha256": str}; set by save_checkpoint
    checkpoints: list = field(default_factory=list)  # multi-seed: the seed folders
    best: str | None = None  # multi-seed: the seed folder with the lowest dev loss

    @property
    def multiseed(self) -> bool:
        return self.format == MULTI_FORMAT

    def to_dict(self) -> dict:
        """The JSON object; unset fields (None, empty) are left out, as meta.json always had them."""
        return {k: v for k, v in asdict(self).items() if v is not None and v != {} and v != []}

    @classmethod
    def from_dict(cls, data: dict) -> "CheckpointMeta":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known and v is not None})


@dataclass
class LoadedModel:
    model: CMBert
    tokenizer: object
    config: CMBertConfig
    meta: CheckpointMeta


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


def save_checkpoint(model, tokenizer, config: CMBertConfig, uri: str, meta: CheckpointMeta) -> CheckpointMeta:
    """Write a checkpoint to ``uri`` (local folder or s3://...). Returns the meta.json written.

    ``meta`` carries what the model was trained on (feature_set, feature_dim, model_id, seed, epoch, metrics);
    model_version (the weights' content hash), the file list and the format are set here.
    """
    if config.encoder_config is None:  # config.json must rebuild the encoder without its pretrained weights
        raise ValueError("the config has no encoder_config: save the model's own (model.config, filled in by "
                         "build_model)")
    model = getattr(model, "module", model)  # unwrap DDP
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with storage.scratch_dir(prefix="cmbert-ckpt-") as stage:
        save_file(state, os.path.join(stage, WEIGHTS), metadata={"format": "pt"})
        storage.write_json(os.path.join(stage, CONFIG), config.to_dict())
        tokenizer.save_pretrained(stage)
        files = {}
        for name in storage.list_files(stage, suffix=None, skip_hidden=False, recursive=False, relative=True):
            sha256, size = storage.sha256(os.path.join(stage, name))
            files[name] = {"bytes": size, "sha256": sha256}
        full_meta = replace(meta, format=FORMAT, model_version=weights_version(state), files=files,
                            checkpoints=[], best=None)
        storage.write_json(os.path.join(stage, META), full_meta.to_dict())
        publish_checkpoint(stage, uri)
    return full_meta


def publish_checkpoint(src: "str | storage.Location", uri: str, skip: tuple[str, ...] = ()) -> None:
    """Copy the files of one checkpoint folder to ``uri``, meta.json last (and any old meta.json removed first),
    so a reader never sees a meta.json next to files from another save."""
    names = storage.list_files(src, suffix=None, skip_hidden=False, recursive=False, relative=True)
    if META not in names:
        raise CheckpointError(f"cannot publish {storage.locate(src).path}: it has no {META}")
    storage.copy_tree(src, uri, skip=skip, last=(META,), recursive=False, action="write checkpoint to")


def write_multiseed_meta(uri: str, meta: CheckpointMeta) -> None:
    """The top-level meta.json of a multi-seed output: ``checkpoints`` (sub-folders) and ``best`` (one of them)."""
    if not meta.checkpoints or meta.best not in meta.checkpoints:
        raise ValueError(f"a multi-seed meta.json names its checkpoints and the best of them, not {meta.best!r}")
    storage.write_json(locate(uri).join(META), replace(meta, format=MULTI_FORMAT, files={}).to_dict(),
                       action="write checkpoint to")


def read_meta(uri: str) -> CheckpointMeta:
    """The meta.json of a checkpoint or of a multi-seed output (CheckpointError when absent or not ours)."""
    loc = locate(uri).join(META)
    try:
        data = storage.read_bytes(loc)
    except FileNotFoundError:
        raise CheckpointError(f"{uri} is not a checkpoint: {loc.uri} is missing (no checkpoint there, or its "
                              f"save did not finish)") from None
    except StorageError as exc:
        raise CheckpointError(str(exc)) from None
    try:
        meta = json.loads(data)
    except ValueError:
        raise CheckpointError(f"checkpoint {uri} is corrupt: {loc.uri} is not valid JSON") from None
    if not isinstance(meta, dict) or meta.get("format") not in (FORMAT, MULTI_FORMAT):
        found = meta.get("format") if isinstance(meta, dict) else None
        raise CheckpointError(f"{uri} is not a cmbert checkpoint (format {found!r} in {loc.uri})")
    return CheckpointMeta.from_dict(meta)


def seed_checkpoints(uri: str) -> list[str]:
    """The checkpoint URIs under ``uri``: every seed of a multi-seed output, or ``uri`` itself."""
    meta = read_meta(uri)
    if meta.multiseed:
        return [locate(uri).join(name).uri for name in meta.checkpoints]
    return [uri]


def best_checkpoint(uri: str) -> tuple[str, CheckpointMeta]:
    """(URI, meta) of the one checkpoint ``uri`` names: itself, or the best seed of a multi-seed output."""
    meta = read_meta(uri)
    if meta.multiseed:
        uri = locate(uri).join(meta.best).uri
        meta = read_meta(uri)
    return uri, meta


def verify_checkpoint(uri: str) -> CheckpointMeta:
    """Check, without loading the model, that every file meta.json lists is there, whole and unchanged (size and
    sha256); returns the meta. For a job's driver: a damaged checkpoint is refused in one line before any work,
    instead of failing inside every worker that loads it. ``uri`` is one checkpoint, not a multi-seed output."""
    meta = read_meta(uri)
    src = locate(uri)
    for name, info in sorted(meta.files.items()):
        loc = src.join(name)
        try:
            sha256, size = storage.sha256(loc)
        except FileNotFoundError:
            raise CheckpointError(f"checkpoint {uri} is incomplete: {loc.uri} is missing") from None
        except StorageError as exc:
            raise CheckpointError(str(exc)) from None
        _check_file(uri, loc.uri, info, sha256, size)
    return meta


def load_checkpoint(uri: str, device: str | torch.device = "cpu") -> LoadedModel:
    """Load a checkpoint (the best seed of a multi-seed output) in eval mode. No pretrained weights needed."""
    uri, meta = best_checkpoint(uri)
    src = locate(uri)
    data = {}
    for name, info in sorted(meta.files.items()):  # each file read once, checked, then used from memory
        loc = src.join(name)
        try:
            data[name] = storage.read_bytes(loc)
        except FileNotFoundError:
            raise CheckpointError(f"checkpoint {uri} is incomplete: {loc.uri} is missing") from None
        except StorageError as exc:
            raise CheckpointError(str(exc)) from None
        _check_file(uri, loc.uri, info, hashlib.sha256(data[name]).hexdigest(), len(data[name]))
    if CONFIG not in data or WEIGHTS not in data:
        raise CheckpointError(f"checkpoint {uri} is corrupt: meta.json lists no {CONFIG if CONFIG not in data else WEIGHTS}")
    config = CMBertConfig.from_dict(json.loads(data.pop(CONFIG)))
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

    with storage.scratch_dir(prefix="cmbert-load-") as local:  # the tokenizer loads from a folder
        for name, body in data.items():
            storage.write_bytes(os.path.join(local, name), body)
        tokenizer = AutoTokenizer.from_pretrained(local)
    model.to(device).eval()
    return LoadedModel(model=model, tokenizer=tokenizer, config=config, meta=meta)



# ---------------------------------------------------------------- what scoring needs, without the weights


@dataclass
class ModelInfo:
    """What scoring needs to know of a checkpoint before any weights load."""

    checkpoint: str  # the single checkpoint scored with (the best seed of a multi-seed output)
    model_id: str
    model_version: str
    audio: "ModelAudio"  # which utterances' audio it can score


def read_model_info(checkpoint: str) -> ModelInfo:
    """``ModelInfo`` from a checkpoint's meta.json and config.json only (no weights read here); a multi-seed
    output resolves to its best seed."""
    from cmbert.scoring import ModelAudio  # scoring builds on this module, not the other way round

    checkpoint, meta = best_checkpoint(checkpoint)
    loc = locate(checkpoint).join(CONFIG)
    try:
        config = CMBertConfig.from_dict(storage.read_json(loc))
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {checkpoint} is incomplete: {loc.uri} is missing") from None
    return ModelInfo(checkpoint, str(meta.model_id or "cmbert"), str(meta.model_version),
                     ModelAudio.from_meta(meta, config))


# ---------------------------------------------------------------- the loop's state (epoch checkpoints)


@dataclass
class TrainState:
    """train_state.json: where a seed's loop stood after an epoch, so a resumed run carries on exactly as the
    uninterrupted run would. Keys an older file lacks get a fresh run's values (below); unknown keys are ignored."""

    epoch: int  # the epoch this checkpoint finished
    # one JSON-safe dict per epoch so far (epoch, train_loss, dev_loss, dev_*): early stopping's only input
    history: list = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainState":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known and v is not None})


def save_train_state(path: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: TrainState) -> None:
    """Adam's moments as safetensors (keyed by parameter name) and ``state``, beside the checkpoint's weights in
    the local folder ``path``."""
    names = {id(p): n for n, p in model.named_parameters()}
    tensors = {}
    for p, slots in optimizer.state.items():
        for key, value in slots.items():
            tensors[f"{names[id(p)]}::{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    save_file(tensors, os.path.join(path, TRAIN_STATE_FILES[0]))
    storage.write_json(os.path.join(path, TRAIN_STATE_FILES[1]), asdict(state))


def load_train_state(path: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> TrainState:
    """Restore weights and Adam's state from the local epoch checkpoint ``path``; returns where the loop stood."""
    model.load_state_dict(load_file(os.path.join(path, WEIGHTS)), strict=True)
    params = dict(model.named_parameters())
    for key, value in load_file(os.path.join(path, TRAIN_STATE_FILES[0])).items():
        name, slot = key.split("::")
        p = params[name]
        optimizer.state[p][slot] = value if slot == "step" else value.to(p.device)
    return TrainState.from_dict(storage.read_json(os.path.join(path, TRAIN_STATE_FILES[1])))
