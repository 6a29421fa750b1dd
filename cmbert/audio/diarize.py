"""Speaker diarization: who spoke when.

Two backends, both offline on the CPU with bundled weights (``--diarizer``):

- ``pyannote`` (the default; ``diarize_pyannote``): pyannote.audio's speaker-diarization pipeline with
  segmentation-3.0 and CAM++ embeddings (``cmbert/audio/pyannote_pipeline.py``), or any pyannote pipeline
  directory or hub id given as ``--diarizer-model``. Its turns may overlap (two people at once).
- ``dvector`` (``diarize``): GE2E d-vectors (resemblyzer) over sliding windows of the speech regions,
  agglomerative clustering with cosine distance whose cut height sets the number of speakers, then a
  second, finer pass that labels short windows by their nearest cluster centroid. One speaker at a time.

Speaker labels are "S0", "S1", ... in order of first appearance in the clip.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from cmbert.audio._threads import torch_threads
from cmbert.audio.decode import SAMPLE_RATE
from cmbert.manifest import StageError, Word

_STAGE = "diarize"
_FRAME_S = 0.01  # resemblyzer mel frames are 10 ms apart
_BATCH = 64  # windows per encoder call


@dataclass(frozen=True)
class Turn:
    start: float
    end: float
    speaker: str


@dataclass(frozen=True)
class DiarizeParams:
    # Cosine distance at which agglomerative clustering stops merging (average linkage). Tuned on
    # the real two-speaker call in ../shared/data/call-2spk; see tests/unit/test_audio_diarize.py.
    threshold: float = 0.31  # works on the call for 0.30-0.32 only: set num_speakers when it is known
    num_speakers: int | None = None  # fixes the count instead of the threshold
    max_speakers: int = 8
    window_seconds: float = 1.5  # clustering windows: long enough for a stable d-vector
    hop_seconds: float = 0.5
    label_window_seconds: float = 0.8  # labelling windows: short enough to place a change
    label_hop_seconds: float = 0.1
    min_turn_seconds: float = 0.4  # shorter runs are absorbed by their neighbours
    min_cluster_fraction: float = 0.05  # clusters with less speech than this are folded into others
    min_region_seconds: float = 0.2  # shorter speech regions are dropped from the turns
    min_cluster_region_seconds: float = 1.0  # shorter regions are not clustered, only labelled
    max_cluster_windows: int = 2000  # evenly subsampled beyond this (clustering memory is quadratic)
    torch_threads: int | None = 1  # intra-op threads during the call (None: the process setting)


def load_speaker_encoder(device: str | torch.device = "cpu"):
    """resemblyzer's GE2E VoiceEncoder (weights inside the wheel)."""
    from resemblyzer import VoiceEncoder

    encoder = VoiceEncoder(device=device, verbose=False)
    _mel(np.full(SAMPLE_RATE // 4, 0.01, np.float32))  # librosa's first call costs seconds: pay it here
    return encoder


def diarize_single(speech: list[tuple[float, float]]) -> list[Turn]:
    """One speaker for the whole clip (``--diarizer none``): each speech region is a turn of S0."""
    return _relabel([(s, e, 0) for s, e in speech if e > s])


def _mel(audio: np.ndarray) -> np.ndarray:
    """(T, 40) mel frames, 10 ms apart, on audio normalised the way resemblyzer's training data was."""
    from resemblyzer.audio import normalize_volume, wav_to_mel_spectrogram
    from resemblyzer.hparams import audio_norm_target_dBFS

    if np.sqrt(np.mean(audio.astype(np.float64) ** 2)) < 1e-6:
        raise StageError(_STAGE, "audio is digital silence")
    return wav_to_mel_spectrogram(normalize_volume(audio, audio_norm_target_dBFS, increase_only=True))


def _windows(speech: list[tuple[float, float]], length: float, hop: float, min_len: float) -> list[tuple[float, float]]:
    """Windows of ``length`` seconds every ``hop`` inside each region; a short region is one window."""
    out = []
    for s, e in speech:
        if e - s < min_len:
            continue
        if e - s <= length:
            out.append((s, e))
            continue
        n = int(np.ceil((e - s - length) / hop)) + 1
        starts = np.minimum(s + hop * np.arange(n), e - length)
        out.extend((float(a), float(a + length)) for a in starts)
    return out


def _embed(mel: np.ndarray, windows: list[tuple[float, float]], encoder) -> np.ndarray:
    """(N, 256) L2-normalised d-vectors, one per window; equal-length windows run as one batch."""
    spans = []
    for s, e in windows:
        a = int(round(s / _FRAME_S))
        b = min(mel.shape[0], max(a + 1, int(round(e / _FRAME_S))))
        spans.append((a, b))
    out = np.zeros((len(windows), 256), np.float32)
    by_len: dict[int, list[int]] = {}
    for i, (a, b) in enumerate(spans):
        by_len.setdefault(b - a, []).append(i)
    device = next(encoder.parameters()).device
    with torch.inference_mode():
        for idx in by_len.values():
            for k in range(0, len(idx), _BATCH):
                chunk = idx[k : k + _BATCH]
                batch = np.stack([mel[spans[i][0] : spans[i][1]] for i in chunk])  # (b, frames, 40)
                out[chunk] = encoder(torch.from_numpy(batch).to(device)).cpu().numpy()  # (b, 256)
    return out


def _cluster(emb: np.ndarray, params: DiarizeParams) -> np.ndarray:
    """Cluster index per window."""
    from sklearn.cluster import AgglomerativeClustering

    n = emb.shape[0]
    if params.num_speakers is not None:
        k = min(params.num_speakers, n)
        if k <= 1:
            return np.zeros(n, int)
        return AgglomerativeClustering(n_clusters=k, metric="cosine", linkage="average").fit_predict(emb)
    if n == 1:
        return np.zeros(1, int)
    labels = AgglomerativeClustering(
        n_clusters=None, distance_threshold=params.threshold, metric="cosine", linkage="average"
    ).fit_predict(emb)
    # Too many clusters: cut the tree at max_speakers instead.
    if labels.max() + 1 > params.max_speakers:
        labels = AgglomerativeClustering(
            n_clusters=params.max_speakers, metric="cosine", linkage="average"
        ).fit_predict(emb)
    return labels


def _centroids(emb: np.ndarray, labels: np.ndarray, min_fraction: float) -> np.ndarray:
    """(K, 256) unit centroids of the clusters holding at least ``min_fraction`` of the windows."""
    counts = np.bincount(labels)
    keep = [k for k in range(counts.size) if counts[k] >= max(1, min_fraction * labels.size)]
    if not keep:
        keep = [int(np.argmax(counts))]
    cents = np.stack([emb[labels == k].mean(axis=0) for k in keep])
    return cents / np.linalg.norm(cents, axis=1, keepdims=True).clip(1e-9)


def _runs(times: np.ndarray, labels: np.ndarray, region: tuple[float, float], step: float) -> list[list]:
    """[start, end, label] runs over one region from per-step labels at ``times`` (step centres)."""
    runs: list[list] = []
    for t, lab in zip(times, labels):
        if runs and runs[-1][2] == lab:
            runs[-1][1] = t + step / 2
        else:
            runs.append([t - step / 2, t + step / 2, lab])
    if runs:
        runs[0][0] = region[0]
        runs[-1][1] = region[1]
        for a, b in zip(runs, runs[1:]):  # meet in the middle
            a[1] = b[0] = (a[1] + b[0]) / 2
    return runs


def _absorb_short(runs: list[list], min_len: float) -> list[list]:
    """Give runs shorter than ``min_len`` to the longer neighbour, shortest first, then merge equal labels."""
    runs = [r[:] for r in runs]
    while len(runs) > 1:
        lengths = [r[1] - r[0] for r in runs]
        i = int(np.argmin(lengths))
        if lengths[i] >= min_len:
            break
        if i == 0:
            j = 1
        elif i == len(runs) - 1:
            j = i - 1
        else:
            j = i - 1 if lengths[i - 1] >= lengths[i + 1] else i + 1
        if j < i:
            runs[j][1] = runs[i][1]
        else:
            runs[j][0] = runs[i][0]
        del runs[i]
        merged = [runs[0]]
        for r in runs[1:]:
            if r[2] == merged[-1][2]:
                merged[-1][1] = r[1]
            else:
                merged.append(r)
        runs = merged
    return runs


def _relabel(turns: list[tuple[float, float, int]]) -> list[Turn]:
    """Integer clusters -> "S0", "S1", ... by first appearance."""
    names: dict[int, str] = {}
    out = []
    for s, e, lab in sorted(turns, key=lambda t: t[0]):
        if lab not in names:
            names[lab] = f"S{len(names)}"
        out.append(Turn(round(float(s), 3), round(float(e), 3), names[lab]))  # ms: finer is noise
    return out


def diarize(
    audio: np.ndarray,
    speech: list[tuple[float, float]],
    encoder,
    params: DiarizeParams = DiarizeParams(),
) -> list[Turn]:
    """Speaker turns over the speech regions, labelled "S0", "S1", ... by first appearance.

    Speech regions shorter than ``min_region_seconds`` are dropped. Raises StageError("diarize", ...)
    when no region is long enough to embed.
    """
    speech = [(max(0.0, float(s)), min(audio.size / SAMPLE_RATE, float(e))) for s, e in speech]
    speech = [(s, e) for s, e in sorted(speech) if e - s >= params.min_region_seconds]
    if not speech:
        raise StageError(_STAGE, "no speech region long enough to embed")
    with torch_threads(params.torch_threads):
        return _diarize(audio, speech, encoder, params)


def _diarize(audio: np.ndarray, speech: list[tuple[float, float]], encoder, params: DiarizeParams) -> list[Turn]:
    mel = _mel(audio)

    # A d-vector of a short burst ("Hello?") is an outlier that would form a cluster of its own:
    # cluster the longer regions, then label every region against their centroids.
    windows = _windows(speech, params.window_seconds, params.hop_seconds, params.min_cluster_region_seconds)
    if not windows:
        windows = _windows(speech, params.window_seconds, params.hop_seconds, params.min_region_seconds)
    if len(windows) > params.max_cluster_windows:
        keep = np.linspace(0, len(windows) - 1, params.max_cluster_windows).round().astype(int)
        windows = [windows[i] for i in keep]
    emb = _embed(mel, windows, encoder)
    labels = _cluster(emb, params)
    cents = _centroids(emb, labels, params.min_cluster_fraction)
    if cents.shape[0] == 1:
        return _relabel([(s, e, 0) for s, e in speech])

    # Fine pass: short windows every label_hop; each step takes the centroid nearest to the mean
    # d-vector of the short windows that cover it.
    step = params.label_hop_seconds
    turns: list[tuple[float, float, int]] = []
    for region in speech:
        fine = _windows([region], params.label_window_seconds, step, 0.0)
        fine_emb = _embed(mel, fine, encoder)  # (M, 256)
        starts = np.array([w[0] for w in fine])
        times = np.arange(region[0] + step / 2, region[1], step)  # step centres
        if times.size == 0:
            times = np.array([(region[0] + region[1]) / 2])
        # Windows of one region share one length and ascending starts: those covering time t are
        # a contiguous run, found by binary search; their mean comes from a cumulative sum.
        length = fine[0][1] - fine[0][0]
        lo = np.searchsorted(starts, times - length, side="left")
        hi = np.searchsorted(starts, times, side="right")
        hi = np.maximum(hi, lo + 1).clip(max=len(fine))
        lo = np.minimum(lo, hi - 1)
        csum = np.vstack([np.zeros((1, fine_emb.shape[1]), np.float32), np.cumsum(fine_emb, axis=0)])
        means = (csum[hi] - csum[lo]) / (hi - lo)[:, None]  # (steps, 256)
        step_labels = np.argmax(means @ cents.T, axis=1)
        runs = _absorb_short(_runs(times, step_labels, region, step), params.min_turn_seconds)
        turns.extend((s, e, lab) for s, e, lab in runs)
    return _relabel(turns)


def assign_speakers(words: list[Word], turns: list[Turn]) -> list[Word]:
    """Each timed word gets the speaker whose turn overlaps it most (the nearest turn when none does).

    Where turns overlap (two people at once) and both cover all of the word, it goes to the turn that began
    first (turns are sorted by start): the one holding the floor, so a back-channel does not split their utterance.
    """
    if not turns:
        return list(words)
    starts = np.array([t.start for t in turns])
    ends = np.array([t.end for t in turns])
    out = []
    for w in words:
        if w.start is None or w.end is None:
            out.append(w)
            continue
        overlap = np.minimum(ends, w.end) - np.maximum(starts, w.start)
        if overlap.max() > 0:
            best = int(np.argmax(overlap))
        else:  # in a gap: the turn whose edge is closest to the word's middle
            mid = (w.start + w.end) / 2
            best = int(np.argmin(np.minimum(np.abs(starts - mid), np.abs(ends - mid))))
        out.append(replace(w, speaker=turns[best].speaker))
    return out


@dataclass(frozen=True)
class PyannoteRun:
    """How ``diarize_pyannote`` runs the pipeline on one clip (the pipeline's own hyper-parameters live in
    ``cmbert.audio.pyannote_pipeline.PyannoteParams``)."""

    num_speakers: int | None = None  # fixes the count
    # A clip no longer than one segmentation window (10 s) whose window holds one local speaker is one speaker:
    # its embeddings and clustering are skipped (the alignment path's clips are mostly such: 3-5 s, one voice).
    short_clip_seconds: float = 10.0
    min_local_speaker_seconds: float = 0.5  # a local speaker active for less than this does not count
    torch_threads: int | None = 1  # intra-op threads during the call (None: the process setting)


def load_pyannote(path_or_id: str | None = None, device: str | None = None, token: str | None = None):
    """A pyannote.audio speaker-diarization pipeline: the bundled offline one (segmentation-3.0 + CAM++) when
    ``path_or_id`` is None, else a pipeline directory or hub id (read from the local hub cache unless the
    caller set ``HF_HUB_OFFLINE=0``)."""
    from cmbert.audio import pyannote_pipeline

    if path_or_id is None:
        return pyannote_pipeline.load_bundled_pipeline(device=device)
    pyannote_pipeline.offline_environment()
    pyannote_pipeline.check_torchaudio()
    from pyannote.audio import Pipeline

    pipeline = Pipeline.from_pretrained(path_or_id, token=token) if token else Pipeline.from_pretrained(path_or_id)
    if pipeline is None:
        raise RuntimeError(f"pyannote could not load a pipeline from {path_or_id!r}")
    if device is not None:
        pipeline.to(torch.device(device))
    return pipeline


def _local_speakers(pipeline, audio: np.ndarray, min_seconds: float) -> int | None:
    """Speakers the segmentation model hears in a clip of at most one window: one forward pass on the clip
    itself (not padded to the 10 s window). None when the pipeline is not a pyannote SpeakerDiarization."""
    inference = getattr(pipeline, "_segmentation", None)
    if inference is None or not hasattr(inference, "conversion"):
        return None
    model = inference.model
    device = next(model.parameters()).device
    with torch.inference_mode():
        out = inference.conversion(model(torch.tensor(audio, dtype=torch.float32, device=device)[None, None]))
    active = out[0].float().cpu().numpy()  # (frames, local speakers), 0/1
    seconds = active.sum(axis=0) * (audio.size / SAMPLE_RATE) / max(1, active.shape[0])
    return int((seconds >= min_seconds).sum())


def diarize_pyannote(
    audio: np.ndarray,
    pipeline,
    run: PyannoteRun = PyannoteRun(),
    speech: list[tuple[float, float]] | None = None,
) -> list[Turn]:
    """Turns from a pyannote.audio pipeline run on in-memory audio, relabelled "S0", "S1", ...

    Turns of different speakers overlap where both speak. ``speech`` (the VAD's regions) is the fallback:
    a short one-voice clip, or a clip where pyannote hears nobody but the VAD heard speech, is one speaker
    over those regions, so quiet speech never makes a clip a reject here. Raises StageError("diarize", ...)
    when neither found speech.
    """
    from cmbert.audio.pyannote_pipeline import waveform_input

    if speech and run.num_speakers == 1:
        return diarize_single(speech)
    with torch_threads(run.torch_threads):
        if speech and run.num_speakers is None and audio.size <= run.short_clip_seconds * SAMPLE_RATE:
            local = _local_speakers(pipeline, audio, run.min_local_speaker_seconds)
            if local is not None and local <= 1:  # one voice (or one too faint for it): no clustering needed
                return diarize_single(speech)
        kwargs = {} if run.num_speakers is None else {"num_speakers": run.num_speakers}
        result = pipeline(waveform_input(audio), **kwargs)
    # pyannote.audio 4 returns an object holding the Annotation; 3.x returns the Annotation itself.
    annotation = getattr(result, "speaker_diarization", result)
    turns = [(seg.start, seg.end, label) for seg, _, label in annotation.itertracks(yield_label=True)]
    if not turns:
        if speech:
            return diarize_single(speech)
        raise StageError(_STAGE, "pyannote found no speech")
    return _relabel(turns)
