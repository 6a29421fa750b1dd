"""Questions about the scores, as lazy Polars scans over OUT/scores (local or s3://).

    python -m cmbert.query --scores DIR_OR_S3_URI [--model-version V] [--limit N] [--plot trend.png] [what ...]

``what``: clips, speakers, negative, trend, distribution (default: all of them). Each query is a small
function from the scan (a LazyFrame) to a LazyFrame, so callers can chain more Polars onto it.
Except ``distribution``, queries look at one model version (``--model-version``, default: the one that
scored most recently), so an utterance scored by two versions is never counted twice.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import polars as pl

from cmbert import storage

HIVE_SCHEMA = {"score_date": pl.Date, "model_version": pl.String}
QUERIES = ("clips", "speakers", "negative", "trend", "distribution")


def scan_scores(uri: str) -> pl.LazyFrame:
    """All score rows under ``uri`` (OUT/scores), partition columns included; nothing is read yet."""
    if not storage.dataset_exists(uri):
        raise storage.StorageError(f"cannot read {uri}: no such dataset (run jobs/score.py first)")
    return pl.scan_parquet(uri.rstrip("/") + "/**/*.parquet", hive_partitioning=True, hive_schema=HIVE_SCHEMA,
                           storage_options=storage.polars_storage_options(uri))


def latest_version(scores: pl.LazyFrame) -> str | None:
    """The model version whose last score is the most recent."""
    top = (scores.group_by("model_version").agg(pl.col("scored_at").max())
           .sort("scored_at", descending=True).limit(1).collect())
    return top["model_version"][0] if top.height else None


def one_version(scores: pl.LazyFrame, model_version: str | None = None) -> pl.LazyFrame:
    version = model_version or latest_version(scores)
    return scores.filter(pl.col("model_version") == version)


def mean_per_clip(scores: pl.LazyFrame) -> pl.LazyFrame:
    """Mean sentiment per clip, most negative clip first."""
    return (scores.group_by("clip_id")
            .agg(pl.len().alias("utterances"), pl.col("score").mean().alias("mean_score"),
                 (pl.col("polarity") == "negative").mean().alias("share_negative"))
            .sort(["mean_score", "clip_id"]))


def mean_per_speaker(scores: pl.LazyFrame) -> pl.LazyFrame:
    """Mean sentiment per speaker. Diarization labels are per clip, so a speaker is (clip_id, speaker)."""
    return (scores.group_by("clip_id", "speaker")
            .agg(pl.len().alias("utterances"), pl.col("score").mean().alias("mean_score"),
                 (pl.col("end") - pl.col("start")).sum().alias("seconds"))
            .sort(["mean_score", "clip_id", "speaker"], nulls_last=True))


def most_negative(scores: pl.LazyFrame, limit: int = 10) -> pl.LazyFrame:
    """The ``limit`` most negative utterances."""
    return (scores.sort(["score", "utterance_id"]).limit(limit)
            .select("score", "label7", "clip_id", "speaker", "start", "end", "text", "utterance_id"))


def daily_trend(scores: pl.LazyFrame) -> pl.LazyFrame:
    """Mean sentiment of the utterances scored each day (score_date), per model version."""
    return (scores.group_by("score_date", "model_version")
            .agg(pl.len().alias("utterances"), pl.col("score").mean().alias("mean_score"),
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


def plot_trend(trend: pl.DataFrame, path: str) -> str:
    """A PNG of the daily mean score per model version (matplotlib, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4), dpi=100)
    for (version,), part in trend.sort("score_date").group_by(["model_version"], maintain_order=True):
        ax.plot(part["score_date"].to_list(), part["mean_score"].to_list(), marker="o", label=str(version))
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.set_ylim(-3, 3)
    ax.set_xlabel("score date")
    ax.set_ylabel("mean sentiment (-3..3)")
    ax.set_title("Daily mean sentiment")
    ax.legend(title="model version", fontsize="small")
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


@dataclass
class QueryConfig:
    """Print what the scores say: per clip, per speaker, most negative, daily trend, distribution."""

    scores: str = field(metadata={"help": "the scores dataset (OUT/scores), local or s3://"})
    model_version: str | None = field(default=None, metadata={"help": "default: the most recently scoring one"})
    limit: int = field(default=10, metadata={"help": "rows to print per query"})
    plot: str | None = field(default=None, metadata={"help": "write the daily trend as a PNG here"})


def run(cfg: QueryConfig, what: list[str]) -> dict[str, pl.DataFrame]:
    scores = scan_scores(cfg.scores)
    version = cfg.model_version or latest_version(scores)
    mine = scores.filter(pl.col("model_version") == version)
    queries = {
        "clips": lambda: mean_per_clip(mine).limit(cfg.limit),
        "speakers": lambda: mean_per_speaker(mine).limit(cfg.limit),
        "negative": lambda: most_negative(mine, cfg.limit),
        "trend": lambda: daily_trend(scores),
        "distribution": lambda: score_distribution(scores),
    }
    results = {name: queries[name]().collect() for name in what}
    if cfg.plot:
        trend = results["trend"] if "trend" in results else daily_trend(scores).collect()
        plot_trend(trend, cfg.plot)
    return results


def main(argv: list[str] | None = None) -> int:
    from cmbert.cli import build_parser

    parser = build_parser(QueryConfig)
    parser.add_argument("what", nargs="*", help=f"which queries: {', '.join(QUERIES)} (default: all)")
    args = vars(parser.parse_args(argv))
    what = list(dict.fromkeys(args.pop("what") or QUERIES))
    unknown = [w for w in what if w not in QUERIES]
    if unknown:
        parser.error(f"unknown query {unknown[0]!r}: choose from {', '.join(QUERIES)}")
    cfg = QueryConfig(**args)
    try:
        results = run(cfg, what)
    except (storage.StorageError, pl.exceptions.PolarsError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"query: error: {first}", file=sys.stderr)
        return 2
    with pl.Config(tbl_rows=max(cfg.limit, 20), tbl_cols=-1, fmt_str_lengths=60, tbl_width_chars=160):
        for name, frame in results.items():
            print(f"\n== {name}")
            print(frame)
    if cfg.plot:
        print(f"\n[query] trend plot: {cfg.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
