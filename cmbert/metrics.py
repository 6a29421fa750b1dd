"""The field's regression metrics for sentiment in [-3, 3], as MMSA's ``metricsTop`` defines them for MOSI.

Papers report Acc2/F1 in two conventions that differ on label 0 (neutral); both are given, never one for
the other. The CM-BERT authors' own script used a third one (pred > 0 vs label > 0 over all rows, and
sklearn's f1_score with its arguments swapped); it is not reproduced here.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from sklearn.metrics import accuracy_score, f1_score

METRIC_NAMES = ("has0_acc2", "has0_f1", "non0_acc2", "non0_f1", "mae", "corr", "acc7", "acc5")


def has0_acc2(preds: np.ndarray, labels: np.ndarray) -> float:
    """Binary accuracy over all rows, classes label >= 0 (non-negative) vs label < 0; the prediction likewise."""
    return float(accuracy_score(labels >= 0, preds >= 0))


def has0_f1(preds: np.ndarray, labels: np.ndarray) -> float:
    """Weighted F1 of the has0 split (label >= 0 vs < 0) over all rows; weights are the class supports."""
    return float(f1_score(labels >= 0, preds >= 0, average="weighted"))


def non0_acc2(preds: np.ndarray, labels: np.ndarray) -> float:
    """Binary accuracy over rows whose label != 0 only: positive (> 0) vs negative; a prediction of 0 is negative."""
    nz = labels != 0
    return float(accuracy_score(labels[nz] > 0, preds[nz] > 0)) if nz.any() else math.nan


def non0_f1(preds: np.ndarray, labels: np.ndarray) -> float:
    """Weighted F1 of the non0 split (rows with label != 0; > 0 vs not)."""
    nz = labels != 0
    return float(f1_score(labels[nz] > 0, preds[nz] > 0, average="weighted")) if nz.any() else math.nan


def mae(preds: np.ndarray, labels: np.ndarray) -> float:
    """Mean absolute error, unclipped."""
    return float(np.mean(np.abs(preds - labels)))


def corr(preds: np.ndarray, labels: np.ndarray) -> float:
    """Pearson correlation of predictions and labels; NaN when either is constant."""
    if len(preds) < 2 or np.std(preds) == 0 or np.std(labels) == 0:
        return math.nan
    return float(np.corrcoef(preds, labels)[0, 1])


def acc7(preds: np.ndarray, labels: np.ndarray) -> float:
    """7-class accuracy: clip both to [-3, 3], round to the nearest integer (numpy: halves to even), compare."""
    return float(np.mean(np.round(np.clip(preds, -3, 3)) == np.round(np.clip(labels, -3, 3))))


def acc5(preds: np.ndarray, labels: np.ndarray) -> float:
    """5-class accuracy: clip both to [-2, 2], round (halves to even), compare."""
    return float(np.mean(np.round(np.clip(preds, -2, 2)) == np.round(np.clip(labels, -2, 2))))


def majority_rates(labels: Sequence[float]) -> dict[str, float]:
    """The Acc2 a constant prediction of the larger class gets, in both conventions: ``has0_acc2`` over all rows
    (label >= 0 vs < 0) and ``non0_acc2`` over rows whose label != 0 (> 0 vs < 0). The floor an Acc2 is read
    against. NaN labels are left out; NaN when no row is left."""
    labels = np.asarray(labels, dtype=np.float64).reshape(-1)
    labels = labels[np.isfinite(labels)]
    nz = labels[labels != 0]
    has0 = max(np.mean(labels >= 0), np.mean(labels < 0)) if labels.size else math.nan
    non0 = max(np.mean(nz > 0), np.mean(nz < 0)) if nz.size else math.nan
    return {"has0_acc2": float(has0), "non0_acc2": float(non0)}


def regression_metrics(preds: Sequence[float], labels: Sequence[float]) -> dict[str, float]:
    """All of METRIC_NAMES plus n. Rows whose label is NaN are left out."""
    preds = np.asarray(preds, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels, dtype=np.float64).reshape(-1)
    if preds.shape != labels.shape:
        raise ValueError(f"{preds.size} predictions for {labels.size} labels")
    ok = np.isfinite(labels)
    preds, labels = preds[ok], labels[ok]
    if preds.size == 0:
        return {name: math.nan for name in METRIC_NAMES} | {"n": 0}
    out = {name: globals()[name](preds, labels) for name in METRIC_NAMES}
    out["n"] = int(preds.size)
    return out


def aggregate(runs: Sequence[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Mean and sample standard deviation (ddof=1; 0 for one run) of every numeric metric across seeds."""
    keys = [k for k in runs[0] if all(isinstance(r.get(k), (int, float)) for r in runs)] if runs else []
    out = {}
    for k in keys:
        values = np.array([r[k] for r in runs], dtype=np.float64)
        out[k] = {"mean": float(np.mean(values)),
                  "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
                  "n": int(len(values))}
    return out


def json_safe(value):
    """NaN/inf -> None, recursively, so metrics serialise as strict JSON."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
