"""Does CM-BERT hear? Binary valence on RAVDESS, unseen speakers: T-BERT vs paper mode vs our hearing variants.

    python bench/bench_ravdess.py [--features whisper|egemaps|...] [--utterances URI] [--work runs/bench-ravdess]
        [--seeds 2 | --seed-values 1111,11111 [--merge]] [--epochs N] [--workers 1] [--encoder mpnet|minilm]
        [--only NAME ...] [--skip-baseline] [--reuse] [--train-args "--lr 3e-5 ..."] [--results ravdess] [--resume]
        [--finished-seeds]

RAVDESS speech (../shared/data/ravdess, actors 01-16): two fixed, emotionally neutral sentences spoken with
8 emotions, so the words carry no valence and any skill beyond the majority rate must come from the audio.
The clips go through the real preprocess job (jobs/preprocess.py: forced alignment of the manifest's
transcript, ``--features`` averaged per word; skipped when ``--utterances`` exists) and are split by actor:
01-12 train, 13-16 dev (unseen speakers). Each model is trained and evaluated with the real jobs, in-process:
jobs/train.py main() (Ray Train, --workers 1) and jobs/evaluate.py main(); ``--epochs`` (default: the job's, so the
bench measures the plain command; RAVDESS has 30 batches an epoch; a maximum under the job's early stopping, ``--train-args "--patience N"``) with the job's
model selection on dev loss; each per-seed entry carries the train job's record of that seed's training (best
epoch, epochs run, whether it stopped early, the per-epoch dev history: bench/common.py seed_training).
``--encoder`` is passed on when given (default: the job's own default encoder, all-mpnet-base-v2; the two RAVDESS
sentences need no big encoder, so ``--encoder minilm`` is the cheap way to measure the audio path). ``--train-args`` appends more jobs/train.py
flags to every model (recipe exploration: ``--lr``, ``--fusion-lr``, ``--dropout``, ...); ``--results NAME``
writes bench/results/NAME.json instead of ravdess.json (so an exploration does not replace the headline file).
``--seed-values`` trains those seeds (jobs/train.py --seed-values) instead of the first ``--seeds``; with
``--merge`` each model's per-seed results already in NAME.json (seeds not run now) are kept and its means are
taken over all of them (bench/common.py merge_seeds, as bench_mosi.py does): seeds added in a later session.

- T-BERT (``--fusion none``): text only.
- CM-BERT as published (``--cls-audio zero --no-audio-values --fusion-lr 0.01``): cannot depend on the audio.
- attention only (``--cls-audio mean --no-audio-values``): the mean word audio at [CLS]; audio can only
  re-weight the attention over (identical) text vectors.
- values only (``--cls-audio zero --audio-values``): the fusion attention's values carry the word audio.
- the default variant (the job's defaults: ``--cls-audio mean --audio-values --fusion-lr 1e-3``).
- Classical audio-only baseline: eGeMAPSv02 functionals (88 dims) per clip, standardised (train statistics),
  logistic regression (scikit-learn, C=1) on the non-zero labels. For context, the same logistic regression on
  the utterances' own word features (their mean over the words): what a linear probe of the features gives.

Headline figure: binary valence accuracy on dev rows with label != 0 (pred > 0 vs label > 0, i.e. the
metrics' non0_acc2), beside the dev majority rate. Two audio checks on each trained CM-BERT: the dev accuracy
with each clip's word audio shuffled among clips of the same sentence, and the spread of the scores among
clips of the same sentence (0 for a model that cannot hear). Writes bench/results/ravdess.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from common import RAVDESS_DEV_ACTORS, REPO, RESULTS, SHARED_DATA, merge_seeds, seed_training, write_result  # noqa: E402

sys.path.insert(0, str(REPO / "jobs"))

TRAIN_ACTORS = {f"{i:02d}" for i in range(1, 13)}
DEV_ACTORS = RAVDESS_DEV_ACTORS


# ---------------------------------------------------------------- the split


def split_by_actor(utterances: str, work: str, centre: bool = False) -> dict:
    """Write work/train/utterances and work/dev/utterances (UTTERANCES_SCHEMA); returns their URIs and counts.
    ``centre``: each actor's word audio less that actor's mean word vector (``centred_by_actor``)."""
    import pyarrow.compute as pc

    from cmbert import storage
    from schemas import UTTERANCES_SCHEMA

    table = storage.read_table(utterances, UTTERANCES_SCHEMA)
    actor = pc.map_lookup(table.column("extra"), "actor", "first")
    out = {}
    for name, actors in (("train", TRAIN_ACTORS), ("dev", DEV_ACTORS)):
        part = table.filter(pc.is_in(actor, value_set=__import__("pyarrow").array(sorted(actors))))
        if centre:
            part = centred_by_actor(part)
        uri = os.path.join(work, name, "utterances")
        shutil.rmtree(os.path.join(work, name), ignore_errors=True)  # a rerun must not append a second copy
        storage.write_table(part, uri, UTTERANCES_SCHEMA, name=f"ravdess-{name}")
        labels = part.column("label").to_pylist()
        out[name] = {"uri": uri, "rows": part.num_rows,
                     "clips": len(set(part.column("clip_id").to_pylist())),
                     "actors": sorted(set(pc.map_lookup(part.column("extra"), "actor", "first").to_pylist())),
                     "labels": {str(k): sum(1 for x in labels if x == k) for k in (-1.0, 0.0, 1.0)}}
    out["source"] = {"uri": utterances, "rows": table.num_rows,
                     "other_actors": int(table.num_rows - out["train"]["rows"] - out["dev"]["rows"])}
    return out


def centred_by_actor(table):
    """An experiment, not a job option: every word vector less the mean word vector of its actor (over all of that
    actor's words with features in ``table``; a speaker baseline). It removes who speaks from the audio, keeping
    how this utterance differs from the speaker's usual voice; it uses the unseen speakers' unlabelled audio, and
    RAVDESS's actors each voice every emotion, so their means carry no valence."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    rows = table.to_pylist()
    actors = pc.map_lookup(table.column("extra"), "actor", "first").to_pylist()  # as split_by_actor reads it
    sums: dict[str, list] = {}
    for r, a in zip(rows, actors):
        acc = sums.setdefault(a, [0.0, 0])
        for w in r["words"]:
            if w["features"] is not None:
                acc[0], acc[1] = acc[0] + np.asarray(w["features"], np.float64), acc[1] + 1
    means = {a: s / max(n, 1) for a, (s, n) in sums.items()}
    for r, a in zip(rows, actors):
        for w in r["words"]:
            if w["features"] is not None:
                w["features"] = (np.asarray(w["features"]) - means[a]).astype(np.float32).tolist()
    return pa.Table.from_pylist(rows, schema=table.schema)


def majority(labels) -> dict:
    """Majority rates on the non-zero labels: the dev set's own, and what a constant trained on train gives."""
    nz = [x for x in labels if x != 0]
    pos = sum(1 for x in nz if x > 0)
    return {"n_non0": len(nz), "pos": pos, "neg": len(nz) - pos, "rate": max(pos, len(nz) - pos) / len(nz)}


# ---------------------------------------------------------------- one model: the real jobs


def train_and_evaluate(name: str, args, split: dict, extra: list[str], reuse: bool) -> dict:
    import evaluate as evaluate_job
    import train as train_job

    model_dir = os.path.join(args.work, "models", name)
    eval_json = os.path.join(args.work, "eval", f"{name}.json")
    train_argv = ["--train", split["train"]["uri"], "--dev", split["dev"]["uri"], "--output", model_dir,
                  *(["--seed-values", args.seed_values] if args.seed_values else ["--seeds", str(args.seeds)]),
                  "--workers", str(args.workers)] + extra
    eval_argv = ["--checkpoint", model_dir, "--data", split["dev"]["uri"], "--output", eval_json]
    timing_path = os.path.join(args.work, "eval", f"{name}.timing.json")
    if reuse and os.path.exists(eval_json) and os.path.exists(timing_path):
        with open(timing_path) as f:
            timing = json.load(f)
        if timing.get("train_argv") == train_argv:
            print(f"[ravdess] {name}: reusing {eval_json}", flush=True)
            with open(eval_json) as f:
                return {"result": json.load(f), **timing}
    if args.finished_seeds:
        return finished_seeds(model_dir, train_argv, eval_argv, timing_path)
    if not args.resume:
        shutil.rmtree(model_dir, ignore_errors=True)  # fresh run (train.py would otherwise resume from _ray/)
    print(f"[ravdess] {name}: train {' '.join(train_argv)}", flush=True)
    t0 = time.perf_counter()
    if train_job.main(train_argv):
        raise SystemExit(f"train {name} failed")
    train_s = time.perf_counter() - t0
    with open(os.path.join(model_dir, "summary.json")) as f:
        summary = json.load(f)
    t0 = time.perf_counter()
    if evaluate_job.main(eval_argv):  # writes the metrics JSON read below
        raise SystemExit(f"evaluate {name} failed")
    eval_s = time.perf_counter() - t0
    timing = {"train_argv": train_argv, "eval_argv": eval_argv, "train_s": train_s, "eval_s": eval_s,
              "best_epochs": [s["best_epoch"] for s in summary["seeds"]],
              "dev_loss": [s["dev"]["loss"] for s in summary["seeds"]],
              "training": [{"seed": s["seed"]} | seed_training(s) for s in summary["seeds"]]}
    os.makedirs(os.path.dirname(timing_path), exist_ok=True)
    with open(timing_path, "w") as f:
        json.dump(timing, f)
    with open(eval_json) as f:  # the file as written (strict JSON, NaN -> null)
        return {"result": json.load(f), **timing}


def finished_seeds(model_dir: str, train_argv: list[str], eval_argv: list[str], timing_path: str) -> dict:
    """An interrupted train run (killed before its last seed ended): evaluate the seeds it finished. train.py
    publishes seed-N/ (that seed's best epoch) as each seed ends and the multi-seed meta.json only at the end, so
    this writes that meta.json for the finished seeds (the job's own write_multiseed_meta) and runs evaluate.py;
    train times are not known (null) and the entry says it is partial."""
    import evaluate as evaluate_job

    from cmbert import storage
    from cmbert.checkpoint import MULTI_FORMAT, CheckpointMeta, read_meta, write_multiseed_meta

    seeds = sorted((f.split("/")[0] for f in storage.list_files(model_dir, suffix="/meta.json", relative=True)
                    if f.startswith("seed-") and f.count("/") == 1), key=len)
    if not seeds:
        raise SystemExit(f"{model_dir}: no finished seed")
    metas = [read_meta(os.path.join(model_dir, d)) for d in seeds]
    best = min(range(len(seeds)), key=lambda i: metas[i].metrics["dev_loss"])
    write_multiseed_meta(model_dir, CheckpointMeta(
        format=MULTI_FORMAT, checkpoints=seeds, best=seeds[best], feature_set=metas[best].feature_set,
        feature_dim=metas[best].feature_dim, model_id=metas[best].model_id,
        model_version=metas[best].model_version, run_id=metas[best].run_id))
    t0 = time.perf_counter()
    if evaluate_job.main(eval_argv):
        raise SystemExit(f"evaluate {model_dir} failed")
    timing = {"train_argv": train_argv, "eval_argv": eval_argv, "train_s": None, "eval_s": time.perf_counter() - t0,
              "best_epochs": [m.epoch for m in metas], "dev_loss": [m.metrics["dev_loss"] for m in metas],
              "partial": f"train run interrupted: {len(seeds)} finished seed(s) evaluated ({', '.join(seeds)})"}
    with open(eval_argv[-1]) as f:
        return {"result": json.load(f), **timing}


def audio_checks(model_dir: str, dev_uri: str) -> list[dict]:
    """Per seed: non0 accuracy with real audio, with audio shuffled among same-sentence clips, with no audio;
    and the mean over sentences of the std of the scores (real audio)."""
    import copy
    import random

    import numpy as np

    from cmbert.checkpoint import load_checkpoint, seed_checkpoints
    from cmbert.collate import predict_rows
    from cmbert.metrics import non0_acc2
    from evaluate import read_rows

    rows = read_rows(dev_uri, "label")
    labels = np.array([r["label"] for r in rows], dtype=np.float64)
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        groups.setdefault(r["text"].strip().lower(), []).append(i)
    rng = random.Random(0)
    shuffled = list(rows)
    for idx in groups.values():
        perm = idx[:]
        rng.shuffle(perm)
        for i, j in zip(idx, perm):
            shuffled[i] = dict(rows[i], words=rows[j]["words"])
    silent = [dict(r, words=[dict(w, features=None) for w in r["words"]]) for r in copy.deepcopy(rows)]
    out = []
    for uri in seed_checkpoints(model_dir):
        lm = load_checkpoint(uri)
        runs = {}
        for tag, data in (("real", rows), ("shuffled", shuffled), ("no_audio", silent)):
            scores, _ = predict_rows(lm.model, lm.tokenizer, data, lm.config.max_len, lm.config.audio_dim)
            runs[tag] = scores
        out.append({"seed": lm.meta.seed,
                    "non0_acc2_real_audio": non0_acc2(runs["real"], labels),
                    "non0_acc2_shuffled_audio": non0_acc2(runs["shuffled"], labels),
                    "non0_acc2_no_audio": non0_acc2(runs["no_audio"], labels),
                    "score_std_within_sentence": float(np.mean([np.std(runs["real"][idx]) for idx in groups.values()])),
                    "max_abs_change_shuffled": float(np.max(np.abs(runs["real"] - runs["shuffled"])))})
    return out


# ---------------------------------------------------------------- the classical baseline


def egemaps_functionals(files: list[str], cache: str):
    """(n, 88) eGeMAPSv02 functionals, one row per file (cached as .npy keyed by the file list)."""
    import hashlib

    import numpy as np

    key = hashlib.sha256("\n".join(files).encode()).hexdigest()[:16]
    path = os.path.join(cache, f"egemaps-functionals-{key}.npy")
    if os.path.exists(path):
        return np.load(path), 0.0
    import opensmile
    import soundfile as sf

    smile = opensmile.Smile(feature_set=opensmile.FeatureSet.eGeMAPSv02,
                            feature_level=opensmile.FeatureLevel.Functionals)
    t0 = time.perf_counter()
    feats = []
    for f in files:
        signal, sr = sf.read(f, dtype="float32", always_2d=False)
        if signal.ndim > 1:
            signal = signal.mean(axis=1)
        feats.append(smile.process_signal(signal, sr).to_numpy(dtype=np.float64).reshape(-1))
    x = np.stack(feats)
    os.makedirs(cache, exist_ok=True)
    np.save(path, x)
    return x, time.perf_counter() - t0


def classical_baseline(work: str) -> dict:
    import csv

    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.preprocessing import StandardScaler

    root = SHARED_DATA / "ravdess"
    with open(root / "manifest.csv", newline="") as f:
        manifest = [r for r in csv.DictReader(f) if r["actor"] in TRAIN_ACTORS | DEV_ACTORS]
    x, extract_s = egemaps_functionals([str(root / r["file"]) for r in manifest], os.path.join(work, "cache"))
    y = np.array([float(r["valence"]) for r in manifest])
    actor = np.array([r["actor"] for r in manifest])
    is_train, is_dev = np.isin(actor, sorted(TRAIN_ACTORS)), np.isin(actor, sorted(DEV_ACTORS))
    nz = y != 0
    tr, dv = is_train & nz, is_dev & nz

    def fit_eval(xtr, ytr, xdv, ydv, c):
        scaler = StandardScaler().fit(xtr)
        clf = LogisticRegression(C=c, max_iter=5000).fit(scaler.transform(xtr), ytr > 0)
        pred = clf.predict(scaler.transform(xdv))
        return {"non0_acc2": float(accuracy_score(ydv > 0, pred)),
                "non0_f1": float(f1_score(ydv > 0, pred, average="weighted")),
                "train_acc": float(accuracy_score(ytr > 0, clf.predict(scaler.transform(xtr))))}

    t0 = time.perf_counter()
    main = fit_eval(x[tr], y[tr], x[dv], y[dv], 1.0)
    fit_s = time.perf_counter() - t0
    # For context only (chosen on dev, so optimistic): the regularisation strength, and per-speaker
    # standardisation (each actor's features z-scored with that actor's own statistics, a common trick).
    sweep = {str(c): fit_eval(x[tr], y[tr], x[dv], y[dv], c)["non0_acc2"] for c in (0.001, 0.01, 0.1, 1.0, 10.0)}
    xs = x.copy()
    for a in np.unique(actor):
        m = actor == a
        xs[m] = (x[m] - x[m].mean(0)) / (x[m].std(0) + 1e-8)
    per_speaker = {str(c): fit_eval(xs[tr], y[tr], xs[dv], y[dv], c)["non0_acc2"] for c in (0.01, 0.1, 1.0)}
    return {"features": "opensmile eGeMAPSv02 Functionals (88 dims) per clip", "dims": int(x.shape[1]),
            "model": "StandardScaler (train) + LogisticRegression(C=1, lbfgs), label > 0 vs < 0, non-zero labels",
            "n_train": int(tr.sum()), "n_dev": int(dv.sum()), "n_dev_all_labels": int(is_dev.sum()),
            "dev_majority": majority(list(y[is_dev])), **main,
            "extract_s": extract_s, "fit_s": fit_s,
            "context_only_C_sweep_non0_acc2": sweep,
            "context_only_per_speaker_zscore_non0_acc2": per_speaker}


def word_feature_probe(split: dict) -> dict:
    """Logistic regression (C=1; a C sweep for context) on each utterance's mean word-feature vector."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from cmbert.collate import read_utterances

    def xy(uri):
        table, _ = read_utterances(uri, "label")
        x = [np.mean([w["features"] for w in words if w["features"] is not None], axis=0)
             for words in table.column("words").to_pylist()]
        y = np.array(table.column("label").to_pylist())
        return np.array(x)[y != 0], y[y != 0] > 0

    xtr, ytr = xy(split["train"]["uri"])
    xdv, ydv = xy(split["dev"]["uri"])
    scaler = StandardScaler().fit(xtr)

    def acc(c):
        clf = LogisticRegression(C=c, max_iter=5000).fit(scaler.transform(xtr), ytr)
        return float(np.mean(clf.predict(scaler.transform(xdv)) == ydv))

    return {"model": "StandardScaler (train) + LogisticRegression(C=1) on the mean word-feature vector",
            "dims": int(xtr.shape[1]), "non0_acc2": acc(1.0),
            "context_only_C_sweep_non0_acc2": {str(c): acc(c) for c in (0.01, 0.1, 1.0, 10.0)}}


def preprocess(features: str) -> tuple[str, float | None]:
    """runs/ravdess-FEATURES/utterances from the real preprocess job (reused when it exists)."""
    import preprocess as preprocess_job

    out = REPO / "runs" / f"ravdess-{features}"
    uri = str(out / "utterances")
    if os.path.isdir(uri):
        return uri, None
    root = SHARED_DATA / "ravdess"
    t0 = time.perf_counter()
    rc = preprocess_job.main(["--input", str(root), "--manifest", str(root / "manifest.csv"), "--label-column",
                              "valence", "--diarizer", "none", "--features", features, "--output", str(out)])
    if rc:
        raise SystemExit(f"preprocess failed with {rc}")
    return uri, time.perf_counter() - t0


# ---------------------------------------------------------------- main


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--features", default="whisper", help="preprocess --features (when --utterances is absent)")
    p.add_argument("--utterances", default=None, help="default: runs/ravdess-FEATURES/utterances (made if absent)")
    p.add_argument("--work", default=str(REPO / "runs" / "bench-ravdess"))
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--seed-values", default=None, help="comma-separated seeds to train instead of the first --seeds")
    p.add_argument("--merge", action="store_true", help="keep the per-seed results of bench/results/NAME.json for "
                   "seeds not run now; each model's means over all of them")
    p.add_argument("--epochs", type=int, default=None, help="at most this many (default: the job's)")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--encoder", default=None, help="jobs/train.py --encoder (default: the job's default)")
    p.add_argument("--only", nargs="*", default=None, help="run only these model names (tbert, paper, attention, "
                   "values, variant, baseline); the results file lists what ran")
    p.add_argument("--skip-baseline", action="store_true")
    p.add_argument("--reuse", action="store_true", help="reuse a finished run with the same train arguments")
    p.add_argument("--resume", action="store_true", help="keep an interrupted run's model folder: train.py "
                   "resumes each seed from its Ray Train checkpoints (same train arguments; --seeds may differ)")
    p.add_argument("--finished-seeds", action="store_true", help="do not train: evaluate the seeds an "
                   "interrupted run of the same models finished (its model folders in --work)")
    p.add_argument("--train-args", default="", help="more jobs/train.py flags for every model, one string")
    p.add_argument("--results", default="ravdess", help="bench/results/NAME.json to write")
    p.add_argument("--centre-by-actor", action="store_true", help="experiment: subtract each actor's mean word "
                   "vector from their words in both splits (a speaker baseline; centred_by_actor)")
    args = p.parse_args()
    t_all = time.perf_counter()
    preprocess_s = None
    if args.utterances is None:
        args.utterances, preprocess_s = preprocess(args.features)

    split = split_by_actor(args.utterances, args.work, centre=args.centre_by_actor)
    print(f"[ravdess] split: {json.dumps(split)}", flush=True)
    from cmbert.collate import read_utterances

    dev_labels = read_utterances(split["dev"]["uri"], "label")[0].column("label").to_pylist()
    train_labels = read_utterances(split["train"]["uri"], "label")[0].column("label").to_pylist()
    dev_major = majority(dev_labels)
    train_mean = sum(train_labels) / len(train_labels)
    const_sign_rate = (dev_major["pos"] if train_mean > 0 else dev_major["neg"]) / dev_major["n_non0"]

    import shlex

    base = ((["--epochs", str(args.epochs)] if args.epochs else [])  # default: the job's own
            + (["--encoder", args.encoder] if args.encoder else [])
            + shlex.split(args.train_args))
    runs = [("tbert", "T-BERT (--fusion none)", ["--fusion", "none"] + base),
            ("paper", "CM-BERT as published (--cls-audio zero --no-audio-values --fusion-lr 0.01)",
             ["--cls-audio", "zero", "--no-audio-values", "--fusion-lr", "0.01"] + base),
            ("attention", "audio at [CLS] only (--cls-audio mean --no-audio-values)",
             ["--cls-audio", "mean", "--no-audio-values"] + base),
            ("values", "audio in the attention's values only (--cls-audio zero --audio-values)",
             ["--cls-audio", "zero", "--audio-values"] + base),
            ("variant", "our default variant (--cls-audio mean --audio-values --fusion-lr 1e-3)", base)]

    models = {}
    for name, title, extra in runs:
        if args.only is not None and name not in args.only:
            continue
        r = train_and_evaluate(name, args, split, extra, args.reuse)
        res = r["result"]
        training = {t["seed"]: t for t in r.get("training") or []}  # the train job's record of each seed
        per_seed = [training.get(s["seed"], {}) | {"seed": s["seed"], "non0_acc2": s["metrics"]["non0_acc2"],
                                                   "metrics": s["metrics"]} for s in res["per_seed"]]
        entry = {"title": title, "train_args": r["train_argv"], "eval_args": r["eval_argv"],
                 "seeds": len(per_seed), "non0_acc2_mean": res["mean_std"]["non0_acc2"]["mean"],
                 "non0_acc2_std": res["mean_std"]["non0_acc2"]["std"], "per_seed": per_seed,
                 "mean_std": res["mean_std"], "best_epochs": r["best_epochs"], "dev_loss": r["dev_loss"],
                 "train_s": r["train_s"],
                 "train_s_per_seed": r["train_s"] / max(len(per_seed), 1) if r["train_s"] is not None else None,
                 "eval_s": r["eval_s"]}
        if r.get("partial"):
            entry["partial"] = r["partial"]
        if name != "tbert":
            entry["audio_checks"] = audio_checks(os.path.join(args.work, "models", name), split["dev"]["uri"])
        if args.merge:
            entry = merged(entry, name, args.results)
        models[name] = entry
        print(f"[ravdess] {name}: non0_acc2 {entry['non0_acc2_mean']:.4f} ± {entry['non0_acc2_std']:.4f} "
              f"(dev majority {dev_major['rate']:.4f}); train {r['train_s'] or 0:.0f}s", flush=True)

    baseline = probe = None
    if not args.skip_baseline and (args.only is None or "baseline" in args.only):
        baseline = classical_baseline(args.work)
        print(f"[ravdess] baseline: non0_acc2 {baseline['non0_acc2']:.4f}", flush=True)
        probe = word_feature_probe(split)
        print(f"[ravdess] linear probe of the word features: non0_acc2 {probe['non0_acc2']:.4f}", flush=True)

    from train import TrainConfig

    figures = {"split": split, "dev_majority": dev_major, "features": args.features,
               "encoder": args.encoder or TrainConfig.encoder,
               "utterances": args.utterances, "preprocess_s": preprocess_s, "linear_probe_word_features": probe,
               "dev_rate_of_train_mean_sign": {"train_mean_label": train_mean, "rate": const_sign_rate},
               "models": models, "classical_baseline": baseline,
               "target": ("variant (the defaults) >= 0.85 non0 accuracy on unseen speakers, above the linear probe of "
                          "the same word features; paper mode at the majority rate (issue 12)"),
               "total_s": time.perf_counter() - t_all}
    figures["train_args_extra"] = shlex.split(args.train_args)
    figures["centre_by_actor"] = args.centre_by_actor
    figures["load_average_1_5_15_min_at_end"] = list(os.getloadavg())  # the machine is shared: see the notes
    write_result(args.results, figures, notes=args_notes(args))


def merged(entry: dict, name: str, results: str) -> dict:
    """``entry`` (one model, this run's seeds) with the seeds of bench/results/<results>.json's same model that did
    not run now (common.merge_seeds); means, per-seed lists and the train time over all of them."""
    from cmbert.metrics import aggregate

    path = RESULTS / f"{results}.json"
    old_doc = json.loads(path.read_text()) if path.exists() else {}
    old = old_doc.get("figures", {}).get("models", {}).get(name)
    if not old:
        return entry

    def with_lists(e: dict) -> list[dict]:  # each seed carries its dev loss and audio checks
        checks = {c["seed"]: c for c in e.get("audio_checks") or []}
        return [s | {"dev_loss": s.get("dev_loss", loss), "audio_checks": s.get("audio_checks", checks.get(s["seed"]))}
                for s, loss in zip(e["per_seed"], e["dev_loss"])]

    per_seed = merge_seeds(with_lists(entry), with_lists(old), old_doc)
    mean_std = aggregate([s["metrics"] for s in per_seed])
    train_s = [e["train_s"] for e in (entry, old)]
    return entry | {"seeds": len(per_seed), "per_seed": per_seed, "mean_std": mean_std,
                    "non0_acc2_mean": mean_std["non0_acc2"]["mean"], "non0_acc2_std": mean_std["non0_acc2"]["std"],
                    "best_epochs": [s.get("best_epoch") for s in per_seed],
                    "dev_loss": [s["dev_loss"] for s in per_seed],
                    "audio_checks": [s["audio_checks"] for s in per_seed if s.get("audio_checks")],
                    "train_s": sum(train_s) if None not in train_s else None,
                    "train_s_per_seed": sum(train_s) / len(per_seed) if None not in train_s else None}


def args_notes(args) -> str:
    from train import TrainConfig

    return (f"RAVDESS actors 01-12 train / 13-16 dev (unseen speakers), --features {args.features}, "
            f"encoder {args.encoder or TrainConfig.encoder}; "
            + (f"seeds {args.seed_values} (--merge: with the seeds already in the results file; per_seed says which)"
               if args.seed_values else f"{args.seeds} seed(s) per model (1, 11, ...)")
            + f"; at most {args.epochs or TrainConfig.epochs} epochs, "
            "early stopping with the "
            f"job's --patience (default {TrainConfig.patience}; each per_seed entry has epochs_run, stopped_early "
            f"and the dev history); --workers {args.workers} "
            "(Ray Train, CPU, 2 cores shared with other jobs, so timings are indicative). non0_acc2 = "
            "sign(pred) vs sign(label) on dev rows with label != 0 (a prediction of 0 counts as negative). "
            "The variants' knobs (fusion lr 1e-3, 8 epochs, whisper features) were chosen by looking at dev, the "
            "only held-in split here, so dev figures are optimistic; actors 17-24 are held out elsewhere. The "
            "baselines' C sweeps and per-speaker z-scoring are context only; the headline baselines use C=1."
            + (" --finished-seeds: the train runs were interrupted and only the seeds they finished are evaluated "
               "(each model's per_seed; 'partial' says which); their train times are unknown here (null)."
               if args.finished_seeds else "")
            + (f" Extra train flags: {args.train_args}." if args.train_args else ""))


if __name__ == "__main__":
    main()
