"""Audio stages as pure functions over arrays: decode, vad, diarize, words, features, utterances.

Each ``load_*`` function loads bundled weights once (for a Ray actor's ``__init__``); the stage
functions take numpy arrays and return records, and raise ``cmbert.manifest.StageError`` on bad input.
Submodules are imported on demand so that importing one stage does not load every model library.
"""

from cmbert.audio.decode import SAMPLE_RATE

__all__ = ["SAMPLE_RATE"]
