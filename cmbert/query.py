"""Questions about the scores, as lazy Polars scans over OUT/scores (local or s3://).

    python -m cmbert.query --scores DIR_OR_S3_URI [--model-version V] [--limit N] [--ids KEY,...]
        [--plot trend.png] [--plot-clip SOURCE_OR_CLIP_ID clip.png] [what ...]

``what``: versions, clips, speakers, negative, trend, distribution (default: all of them; with ``--plot-clip``
alone, none). Each query is a small function from the scan (a LazyFrame) to a LazyFrame, so callers can chain
more Polars onto it. Except ``versions``, ``trend`` and ``distribution``, queries look at one model version
(``--model-version``, default: the one that scored most recently), so an utterance scored by two versions is
never counted twice. Rows about clips and utterances name the clip's ``source`` (its path under the input root)
and the manifest's own columns (``extra``, e.g. ``video_id``: all of them, or those ``--ids`` names).
"""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field

import polars as pl
import pyarrow as pa

from cmbert import storage

HIVE_SCHEMA = {"score_date": pl.Date, "model_version": pl.String}
QUERIES = ("versions", "clips", "speakers", "negative", "trend", "distribution")


class ClipNotFound(LookupError):
    """``--plot-clip`` names no clip of the chosen model version."""


def scan_scores(uri: str) -> pl.LazyFrame:
    """All score rows under ``uri`` (OUT/scores), partition columns included; nothing is read yet.

    Files written before SCORES_SCHEMA v2 have no ``source``/``extra``: they read as nulls."""
    if not storage.dataset_exists(uri):
        raise storage.StorageError(f"cannot read {uri}: no such dataset (run jobs/score.py first)")
    return pl.scan_parquet(uri.rstrip("/") + "/**/*.parquet", schema=file_schema(), hive_partitioning=True,
                           hive_schema=HIVE_SCHEMA, missing_columns="insert",
                           storage_options=storage.polars_storage_options(uri))


def file_schema() -> pl.Schema:
    """The columns of a score file as Polars reads them (SCORES_SCHEMA less the hive partition columns)."""
    from schemas import SCORES_SCHEMA

    fields = [f for f in SCORES_SCHEMA if f.name not in HIVE_SCHEMA]
    return pl.from_arrow(pa.schema(fields).empty_table()).schema


def model_versions(scores: pl.LazyFrame) -> pl.LazyFrame:
    """Every model version with its utterances and when it last scored, the most recent first."""
    return (scores.group_by("model_version")
            .agg(pl.len().alias("utterances"), pl.col("score_date").min().alias("first_date"),
                 pl.col("score_date").max().alias("last_date"), pl.col("scored_at").max().alias("last_scored_at"))
            .sort("last_scored_at", "model_version", descending=True))


def latest_version(scores: pl.LazyFrame) -> str | None:
    """The model version whose last score is the most recent."""
    top = model_versions(scores).limit(1).collect()
    return top["model_version"][0] if top.height else None


def one_version(scores: pl.LazyFrame, model_version: str | None = None) -> pl.LazyFrame:
    version = model_version or latest_version(scores)
    return scores.filter(pl.col("model_version") == version)


def manifest_keys(scores: pl.LazyFrame) -> list[str]:
    """The manifest columns carried in ``extra`` (e.g. ``video_id``), sorted."""
    keys = scores.select(pl.col("extra").map.keys().explode().drop_nulls().unique()).collect()
    return sorted(keys["extra"].to_list())


def manifest_value(key: str) -> pl.Expr:
    """The value of manifest column ``key`` in a score row's ``extra`` map (null when absent)."""
    return pl.col("extra").map.get(key).alias(key)


def with_ids(scores: pl.LazyFrame, ids: Sequence[str]) -> pl.LazyFrame:
    """``scores`` plus one column per manifest column in ``ids``."""
    taken = set(scores.collect_schema().names())
    return scores.with_columns(manifest_value(k).alias(k if k not in taken else f"extra.{k}") for k in ids)


def _id_names(scores: pl.LazyFrame, ids: Sequence[str]) -> list[str]:
    taken = set(scores.collect_schema().names())
    return [k if k not in taken else f"extra.{k}" for k in ids]


def mean_per_clip(scores: pl.LazyFrame, ids: Sequence[str] = ()) -> pl.LazyFrame:
    """Mean sentiment per clip, most negative clip first, named by its source (and manifest ids)."""
    names = _id_names(scores, ids)
    return (with_ids(scores, ids).group_by("clip_id")
            .agg(pl.col("source").first(), *[pl.col(n).drop_nulls().first() for n in names],
                 pl.len().alias("utterances"), pl.col("score").mean().alias("mean_score"),
                 (pl.col("polarity") == "negative").mean().alias("share_negative"))
            .sort(["mean_score", "clip_id"])
            .select("source", *names, "utterances", "mean_score", "share_negative", "clip_id"))


def mean_per_speaker(scores: pl.LazyFrame, ids: Sequence[str] = ()) -> pl.LazyFrame:
    """Mean sentiment per speaker. Diarization labels are per clip, so a speaker is (clip_id, speaker)."""
    names = _id_names(scores, ids)
    return (with_ids(scores, ids).group_by("clip_id", "speaker")
            .agg(pl.col("source").first(), *[pl.col(n).drop_nulls().first() for n in names],
                 pl.len().alias("utterances"), pl.col("score").mean().alias("mean_score"),
                 (pl.col("end") - pl.col("start")).sum().alias("seconds"))
            .sort(["mean_score", "clip_id", "speaker"], nulls_last=True)
            .select("source", *names, "speaker", "utterances", "mean_score", "seconds", "clip_id"))


def most_negative(scores: pl.LazyFrame, limit: int = 10, ids: Sequence[str] = ()) -> pl.LazyFrame:
    """The ``limit`` most negative utterances."""
    names = _id_names(scores, ids)
    return (with_ids(scores, ids).sort(["score", "utterance_id"]).limit(limit)
            .select("score", "label7", "source", *names, "speaker", "start", "end", "text", "clip_id",
                    "utterance_id"))


def daily_trend(scores: pl.LazyFrame) -> pl.LazyFrame:
    """Mean sentiment of the utterances scored each day (score_date), per model version."""
    return (scores.group_by("score_date", "model_version")
            .agg(pl.len().alias("utterances"), pl.col("clip_id").n_unique().alias("clips"),
                 pl.col("score").mean().alias("mean_score"),
                 (pl.col("polarity") == "positive").mean().alias("share_positive"))
            .sort("score_date", "model_version"))


def score_distribution(scores: pl.LazyFrame) -> pl.LazyFrame:
    """Per model version: how many utterances fall in each of the seven classes -3..3, and summary figures."""
    classes = [(pl.col("label7") == k).sum().alias(f"n{k:+d}") for k in range(-3, 4)]
    return (scores.group_by("model_version")
            .agg(pl.len().alias("utterances"), pl.col("score").mean().alias("mean"),
                 pl.col("score").std().alias("std"), pl.col("score").quantile(0.1).alias("p10"),
                 pl.col("score").median().alias("median"), pl.col("score").quantile(0.9).alias("p90"), *classes)
            .sort("model_version"))


def clip_utterances(scores: pl.LazyFrame, clip: str, ids: Sequence[str] = ()) -> pl.DataFrame:
    """One clip's scored utterances in time order; ``clip`` is its source or its clip id."""
    rows = (with_ids(scores, ids).filter((pl.col("source") == clip) | (pl.col("clip_id") == clip))
            .sort("start", "utterance_id", nulls_last=True).collect())
    if not rows.height:
        raise ClipNotFound(f"no clip {clip!r} in these scores (give its source, as the clips query prints it, "
                           f"or its clip_id)")
    return rows


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_trend(trend: pl.DataFrame, path: str) -> str:
    """A PNG of the daily mean score per model version (matplotlib, no display needed)."""
    import datetime as dt

    import matplotlib.dates as mdates

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4), dpi=100)
    days = trend["score_date"].to_list()
    few = trend.height <= 14  # label each point with its utterance count while that stays readable
    for (version,), part in trend.sort("score_date").group_by(["model_version"], maintain_order=True):
        x, y = part["score_date"].to_list(), part["mean_score"].to_list()
        ax.plot(x, y, marker="o", label=str(version))
        if few:
            for xi, yi, n in zip(x, y, part["utterances"].to_list()):
                ax.annotate(f"n={n}", (xi, yi), xytext=(0, 7), textcoords="offset points", ha="center", fontsize=7)
    if days:  # at least a week wide: one day alone would otherwise span years of ticks
        lo, hi = min(days), max(days)
        pad = dt.timedelta(days=max(1, (7 - (hi - lo).days) // 2 + 1) if (hi - lo).days < 7 else 1)
        ax.set_xlim(lo - pad, hi + pad)
    locator = mdates.AutoDateLocator(minticks=3, maxticks=10)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.set_ylim(-3.3, 3.3)  # room for a point at the scale's end and its label
    ax.set_yticks(range(-3, 4))
    ax.set_xlabel("score date (UTC)")
    ax.set_ylabel("mean sentiment (-3..3)")
    ax.set_title("Daily mean sentiment of the utterances scored that day")
    ax.legend(title="model version", fontsize="small")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _quote(text: str, width: int = 46, lines: int = 3) -> str:
    return "\u201c" + textwrap.shorten(text, width * lines, placeholder=" ...") + "\u201d"


def plot_clip(rows: pl.DataFrame, path: str, ids: Sequence[str] = ()) -> str:
    """A PNG of one clip's sentiment over time: each utterance a segment from its start to its end at its score,
    coloured by speaker, the most negative and most positive lines quoted. ``rows``: ``clip_utterances``."""
    plt = _pyplot()
    timed = rows["start"].null_count() == 0 and rows["end"].null_count() == 0
    if timed:
        start, end = rows["start"].to_list(), rows["end"].to_list()
    else:  # text-only rows have no times: one slot per utterance, in order
        start = [float(i) for i in range(rows.height)]
        end = [i + 0.8 for i in start]
    scores = rows["score"].to_list()
    speakers = ["unknown" if s is None else str(s) for s in rows["speaker"].to_list()]
    fig, ax = plt.subplots(figsize=(10, 4.8), dpi=110)
    ax.axhspan(0, 3.3, color="#2ca02c", alpha=0.04)
    ax.axhspan(-3.3, 0, color="#d62728", alpha=0.04)
    ax.axhline(0.0, color="grey", linewidth=0.8)
    colours = plt.get_cmap("tab10")
    for k, who in enumerate(sorted(set(speakers))):
        mine = [i for i, s in enumerate(speakers) if s == who]
        ax.hlines([scores[i] for i in mine], [start[i] for i in mine], [end[i] for i in mine],
                  colors=colours(k % 10), linewidth=5, label=who)
    span = max(end) - min(start) or 1.0
    ax.set_xlim(min(start) - 0.03 * span, max(end) + 0.03 * span)
    ax.set_ylim(-3.3, 3.3)
    ax.set_yticks(range(-3, 4))
    lo, hi = scores.index(min(scores)), scores.index(max(scores))
    texts = rows["text"].to_list()
    marks = [(hi, "the only line" if rows.height == 1 else "most positive" if scores[hi] >= 0 else "highest", True)]
    if lo != hi:
        marks.append((lo, "most negative" if scores[lo] < 0 else "lowest", False))
    for i, label, top in marks:
        mid = (start[i] + end[i]) / 2
        frac = (mid - ax.get_xlim()[0]) / (ax.get_xlim()[1] - ax.get_xlim()[0])
        ha = "left" if frac < 0.3 else "right" if frac > 0.7 else "center"
        # the highest line's quote above it and the lowest's below, away from the other segments, unless
        # that would leave the axes
        above = scores[i] < 1.6 if top else scores[i] < -1.6
        ax.annotate(f"{label} ({scores[i]:+.2f}):\n" + textwrap.fill(_quote(texts[i]), 46),
                    xy=(mid, scores[i]), xytext=(0, 22 if above else -22), textcoords="offset points",
                    ha=ha, va="bottom" if above else "top", multialignment="left", fontsize=8,
                    bbox={"boxstyle": "round,pad=0.3", "fc": "white", "ec": "0.6", "alpha": 0.9},
                    arrowprops={"arrowstyle": "-", "color": "0.4", "linewidth": 0.8})
    if timed:
        ax.set_xlabel("time in the clip (s)")
    else:
        ax.set_xticks([i + 0.4 for i in start], [str(i + 1) for i in range(rows.height)])
        ax.set_xlabel("utterance (text-only rows have no times)")
    ax.set_ylabel("sentiment (-3 negative .. +3 positive)")
    first = rows.row(0, named=True)
    named = [f"{k}={first[k]}" for k in ids if first.get(k) is not None]
    ax.set_title(f"{first['source']}" + (f"  ({', '.join(named)})" if named else ""), fontsize=11, loc="left")
    fig.text(0.99, 0.01, f"clip {first['clip_id']} · model {first['model_version']} · {rows.height} utterances · "
             f"mean {sum(scores) / len(scores):+.2f}", ha="right", va="bottom", fontsize=7, color="0.4")
    ax.legend(title="speaker", fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path)
    plt.close(fig)
    return path


@dataclass
class QueryConfig:
    """Print what the scores say: versions, per clip, per speaker, most negative, daily trend, distribution."""

    scores: str = field(metadata={"help": "the scores dataset (OUT/scores), local or s3://"})
    model_version: str | None = field(default=None, metadata={"help": "default: the most recently scoring one"})
    limit: int = field(default=10, metadata={"help": "rows to print per query"})
    ids: str | None = field(default=None, metadata={"help": "manifest columns (from extra, comma-separated) to show "
                                                             "beside each clip's source; default: all of them"})
    plot: str | None = field(default=None, metadata={"help": "write the daily trend as a PNG here"})


def run(cfg: QueryConfig, what: Sequence[str], plot_clip_args: Sequence[str] | None = None
        ) -> dict[str, pl.DataFrame]:
    scores = scan_scores(cfg.scores)
    version = cfg.model_version or latest_version(scores)
    mine = scores.filter(pl.col("model_version") == version)
    ids = ([k for k in cfg.ids.split(",") if k.strip()] if cfg.ids is not None else manifest_keys(mine))
    queries = {
        "versions": lambda: model_versions(scores),
        "clips": lambda: mean_per_clip(mine, ids).limit(cfg.limit),
        "speakers": lambda: mean_per_speaker(mine, ids).limit(cfg.limit),
        "negative": lambda: most_negative(mine, cfg.limit, ids),
        "trend": lambda: daily_trend(scores),
        "distribution": lambda: score_distribution(scores),
    }
    results = {name: queries[name]().collect() for name in what}
    if cfg.plot:
        trend = results["trend"] if "trend" in results else daily_trend(scores).collect()
        plot_trend(trend, cfg.plot)
    if plot_clip_args:
        clip, png = plot_clip_args
        plot_clip(clip_utterances(mine, clip, ids), png, _id_names(mine, ids))
    return results


def main(argv: list[str] | None = None) -> int:
    from cmbert.cli import build_parser

    parser = build_parser(QueryConfig)
    parser.add_argument("--plot-clip", nargs=2, metavar=("SOURCE_OR_CLIP_ID", "PNG"), default=None,
                        help="write one clip's sentiment over time as a PNG")
    parser.add_argument("what", nargs="*", help=f"which queries: {', '.join(QUERIES)} (default: all; none with "
                                                f"--plot-clip)")
    args = vars(parser.parse_args(argv))
    plot_clip_args = args.pop("plot_clip")
    what = list(dict.fromkeys(args.pop("what") or ([] if plot_clip_args else QUERIES)))
    unknown = [w for w in what if w not in QUERIES]
    if unknown:
        parser.error(f"unknown query {unknown[0]!r}: choose from {', '.join(QUERIES)}")
    cfg = QueryConfig(**args)
    try:
        results = run(cfg, what, plot_clip_args)
    except (ClipNotFound, storage.StorageError, pl.exceptions.PolarsError, OSError) as exc:
        text = str(exc.args[0] if isinstance(exc, ClipNotFound) else exc).strip()
        first = text.splitlines()[0] if text else type(exc).__name__
        print(f"query: error: {first}", file=sys.stderr)
        return 2
    with pl.Config(tbl_rows=max(cfg.limit, 20), tbl_cols=-1, fmt_str_lengths=60, tbl_width_chars=180):
        for name, frame in results.items():
            print(f"\n== {name}")
            print(frame)
    if cfg.plot:
        print(f"\n[query] trend plot: {cfg.plot}")
    if plot_clip_args:
        print(f"[query] clip plot: {plot_clip_args[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
