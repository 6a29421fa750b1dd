"""split_utterances: speaker changes, sentence ends, long pauses, maximum length."""

from __future__ import annotations

from cmbert.audio.diarize import Turn
from cmbert.audio.utterances import SplitParams, split_utterances, utterance_text
from cmbert.manifest import Word


def words_of(spec: str, start: float = 0.0, step: float = 0.3, speaker: str | None = None) -> list[Word]:
    times = [round(start + i * step, 3) for i in range(len(spec.split()))]
    return [Word(t, s, round(s + 0.25, 3), speaker) for t, s in zip(spec.split(), times)]


def texts(utterances: list[list[Word]]) -> list[str]:
    return [utterance_text(u) for u in utterances]


def test_sentence_ends_split():
    ws = words_of('I loved it. Was it good? "Yes!" Great (really.) fine')
    assert texts(split_utterances(ws, [])) == ["I loved it.", "Was it good?", '"Yes!"', "Great (really.)", "fine"]
    assert len(split_utterances(ws, [], SplitParams(split_at_sentence_end=False))) == 1


def test_speaker_change_splits_and_words_get_speakers():
    ws = words_of("the phone is great really I found it slow")  # 0.0 .. 2.65 s
    turns = [Turn(0.0, 1.15, "S0"), Turn(1.15, 3.0, "S1")]
    utts = split_utterances(ws, turns)
    assert texts(utts) == ["the phone is great", "really I found it slow"]
    assert [{w.speaker for w in u} for u in utts] == [{"S0"}, {"S1"}]


def test_existing_speakers_are_kept():
    ws = words_of("a b", speaker="S1") + words_of("c d", start=0.6, speaker="S0")
    utts = split_utterances(ws, [Turn(0.0, 5.0, "S0")])
    assert [[w.speaker for w in u] for u in utts] == [["S1", "S1"], ["S0", "S0"]]


def test_long_pause_splits():
    ws = words_of("one two") + words_of("three four", start=2.0)
    assert texts(split_utterances(ws, [])) == ["one two", "three four"]
    assert texts(split_utterances(ws, [], SplitParams(max_pause_seconds=3.0))) == ["one two three four"]


def test_max_utterance_length():
    ws = words_of(" ".join(f"w{i}" for i in range(10)), step=1.0)  # 10 words, 0.75 s pauses
    utts = split_utterances(ws, [], SplitParams(max_utterance_seconds=3.5))
    assert [len(u) for u in utts] == [4, 4, 2]  # w0..w3 span 3.25 s; w4 would make it 4.25 s
    assert all(u[-1].end - u[0].start <= 3.5 for u in utts)


def test_untimed_words_split_at_sentence_ends_only():
    ws = [Word(t, None, None) for t in "Good film. Bad ending".split()]
    assert texts(split_utterances(ws, [Turn(0, 1, "S0")])) == ["Good film.", "Bad ending"]
    assert split_utterances([], []) == []
