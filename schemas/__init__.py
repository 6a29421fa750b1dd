"""Declared Arrow schemas: the one truth about every table the jobs write.

Each schema carries its name and version in its metadata. Writers cast to these schemas
(``cmbert.storage.conform``) and fail naming the column on a mismatch; nothing is inferred.
Bump a version when a column changes meaning or type. Preprocess, before it adds to an existing output, checks
the major version its utterances and rejects were written with (``storage.check_written_version``) and refuses
another one: ids of another scheme would not match, so a rerun would duplicate. Readers (train, evaluate, score)
read any version whose columns they know.

Changes: utterances and rejects v2 (was v1): ids of annotated manifest rows. A manifest row with a transcript
or a label is one utterance named by its clip id and its row key (``cmbert.manifest.row_key``); in v1 it was
split like an unannotated clip and named by clip id and start, so two rows with the same transcript collided.
"""

import pyarrow as pa


def _versioned(name: str, version: str, fields: list[pa.Field]) -> pa.Schema:
    return pa.schema(fields, metadata={"cmbert.schema": name, "cmbert.schema_version": version})


UTC_TIME = pa.timestamp("us", tz="UTC")

# One aligned word. Times are seconds from clip start; null for text-only rows (no audio).
# `features` is the word's acoustic vector (LLDs averaged over its span); null when audio is absent.
WORD_TYPE = pa.struct(
    [
        pa.field("word", pa.string(), nullable=False),
        pa.field("start", pa.float64()),
        pa.field("end", pa.float64()),
        pa.field("speaker", pa.string()),
        pa.field("features", pa.list_(pa.float32())),
    ]
)

UTTERANCES_SCHEMA = _versioned(
    "utterances",
    "2",
    [
        # Stable across reruns: clip_id + "-r" + row key for an annotated manifest row (its one utterance), else
        # clip_id + start in ms (the utterances an unannotated clip is split into).
        pa.field("utterance_id", pa.string(), nullable=False),
        pa.field("task_id", pa.string(), nullable=False),  # unit of incremental work: manifest row, clip or segment
        pa.field("clip_id", pa.string(), nullable=False),  # content hash of the clip (or of the text)
        pa.field("source", pa.string(), nullable=False),  # path relative to --input, or "manifest:ROW"
        pa.field("speaker", pa.string()),
        pa.field("start", pa.float64()),
        pa.field("end", pa.float64()),
        pa.field("text", pa.string(), nullable=False),
        pa.field("label", pa.float64()),
        pa.field("words", pa.list_(WORD_TYPE), nullable=False),
        pa.field("words_source", pa.string(), nullable=False),  # align | asr | text | spread (alignment failed: words laid over the speech)
        pa.field("audio_present", pa.bool_(), nullable=False),
        pa.field("feature_set", pa.string(), nullable=False),  # e.g. egemaps_v02_lld, or "none" (manifest.NO_AUDIO)
        pa.field("feature_dim", pa.int32(), nullable=False),
        pa.field("extra", pa.map_(pa.string(), pa.string())),  # other manifest columns, carried through as text
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("created_at", UTC_TIME, nullable=False),
    ],
)

REJECTS_SCHEMA = _versioned(
    "rejects",
    "2",
    [
        pa.field("task_id", pa.string(), nullable=False),
        pa.field("clip_id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("stage", pa.string(), nullable=False),  # manifest | read | decode | vad | diarize | words | features
        pa.field("reason", pa.string(), nullable=False),
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("created_at", UTC_TIME, nullable=False),
    ],
)

# Between preprocess's Ray stages (never written to the output): a planned task (``cmbert.manifest.ClipTask``),
# and what a worker makes of it. Nullable where the value can be absent, so values arrive as they left.
CLIP_TASK_SCHEMA = _versioned(
    "clip_tasks",
    "1",
    [
        pa.field("kind", pa.string(), nullable=False),  # media | text | reject
        pa.field("source", pa.string(), nullable=False),
        pa.field("text", pa.string()),
        pa.field("label", pa.float64()),
        pa.field("start", pa.float64()),
        pa.field("end", pa.float64()),
        pa.field("extra", pa.map_(pa.string(), pa.string())),  # in manifest order
        pa.field("row", pa.string()),  # the annotated manifest row's key
        pa.field("task_id", pa.string()),  # null until named (media: by cmbert.stages.identify_tasks)
        pa.field("clip_id", pa.string()),
        pa.field("stage", pa.string()),  # rejects only
        pa.field("reason", pa.string()),
        pa.field("order", pa.int64(), nullable=False),  # position in the plan: of two tasks with one id, the first
    ],
)

CLIP_RESULT_SCHEMA = _versioned(
    "clip_results",
    "1",
    [
        pa.field("kind", pa.string(), nullable=False),  # utterance | reject
        pa.field("task_id", pa.string(), nullable=False),
        pa.field("audio_seconds", pa.float64(), nullable=False),  # decoded audio of the task, on its first row only
        pa.field("utterance", pa.struct(list(UTTERANCES_SCHEMA))),
        pa.field("reject", pa.struct(list(REJECTS_SCHEMA))),
    ],
)

# v2: ``source`` and ``extra`` (where the scored utterance comes from, as in UTTERANCES_SCHEMA). Files written
# as v1 lack them: readers that pass this schema get nulls there.
SCORES_SCHEMA = _versioned(
    "scores",
    "2",
    [
        pa.field("utterance_id", pa.string(), nullable=False),
        pa.field("clip_id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),  # the clip's path relative to --input, or "manifest:ROW"
        # the clip's manifest columns other than file/text/label/start/end (e.g. video_id), as text; empty without
        # a manifest. Carried whole: which of them identify a video is the reader's choice (cmbert.query --ids).
        pa.field("extra", pa.map_(pa.string(), pa.string())),
        pa.field("speaker", pa.string()),
        pa.field("start", pa.float64()),
        pa.field("end", pa.float64()),
        pa.field("text", pa.string(), nullable=False),
        pa.field("score", pa.float32(), nullable=False),  # in [-3, 3]
        pa.field("polarity", pa.string(), nullable=False),  # positive (score >= 0) | negative
        pa.field("label7", pa.int8(), nullable=False),  # round(clip(score, -3, 3)) in -3..3
        pa.field("model_id", pa.string(), nullable=False),
        pa.field("model_version", pa.string(), nullable=False),
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("scored_at", UTC_TIME, nullable=False),
        pa.field("score_date", pa.string(), nullable=False),  # YYYY-MM-DD, the partition key
    ],
)

# What the score stage returns for each utterance (intermediate, never written as is): a SCORES_SCHEMA row, or the
# same row with ``error`` set and no score (not written; counted as rejected with its reason). Follows
# SCORES_SCHEMA's columns and version.
SCORE_RESULT_SCHEMA = _versioned(
    "score_result",
    SCORES_SCHEMA.metadata[b"cmbert.schema_version"].decode(),
    [f.with_nullable(True) for f in SCORES_SCHEMA] + [pa.field("error", pa.string())],
)

RUNS_SCHEMA = _versioned(
    "runs",
    "1",
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("job", pa.string(), nullable=False),  # preprocess | train | score
        pa.field("status", pa.string(), nullable=False),  # succeeded | failed
        pa.field("started_at", UTC_TIME, nullable=False),
        pa.field("finished_at", UTC_TIME, nullable=False),
        pa.field("duration_s", pa.float64(), nullable=False),
        pa.field("input", pa.string(), nullable=False),
        pa.field("output", pa.string(), nullable=False),
        pa.field("n_input", pa.int64(), nullable=False),
        pa.field("n_output", pa.int64(), nullable=False),
        pa.field("n_rejected", pa.int64(), nullable=False),
        pa.field("n_skipped", pa.int64(), nullable=False),  # already done by an earlier run
        pa.field("audio_seconds", pa.float64(), nullable=False),
        pa.field("model_version", pa.string()),
        pa.field("code_version", pa.string(), nullable=False),
        pa.field("config_json", pa.string(), nullable=False),  # resolved job config; never credentials
    ],
)

ALL_SCHEMAS = {
    "utterances": UTTERANCES_SCHEMA,
    "rejects": REJECTS_SCHEMA,
    "scores": SCORES_SCHEMA,
    "runs": RUNS_SCHEMA,
}
