import math

import pytest

from cmbert.metrics import aggregate, json_safe, majority_rates, regression_metrics

PREDS = [2.6, -0.4, 0.2, -1.6, 0.0, 1.2]
LABELS = [3.0, 0.0, -0.6, -2.0, 1.0, 1.4]


def test_hand_computed():
    m = regression_metrics(PREDS, LABELS)
    # has0 (>= 0 vs < 0, all 6 rows): truth T T F F T T, pred T F T F T T -> 4/6
    assert m["has0_acc2"] == pytest.approx(4 / 6)
    # weighted F1: class True (support 4): tp 3, fp 1, fn 1 -> 0.75; class False (support 2): tp 1, fp 1, fn 1 -> 0.5
    assert m["has0_f1"] == pytest.approx((4 * 0.75 + 2 * 0.5) / 6)
    # non0 (label != 0: rows 2.6/3.0, 0.2/-0.6, -1.6/-2.0, 0.0/1.0, 1.2/1.4; > 0 vs not):
    # truth T F F T T, pred T T F F T (a prediction of 0.0 counts as negative) -> 3/5
    assert m["non0_acc2"] == pytest.approx(3 / 5)
    # class True (support 3): tp 2, fp 1, fn 1 -> 2/3; class False (support 2): tp 1, fp 1, fn 1 -> 1/2
    assert m["non0_f1"] == pytest.approx((3 * 2 / 3 + 2 * 0.5) / 5)
    assert m["mae"] == pytest.approx((0.4 + 0.4 + 0.8 + 0.4 + 1.0 + 0.2) / 6)
    # acc7: round(clip(.,-3,3)): pred 3 -0 0 -2 0 1, truth 3 0 -1 -2 1 1 -> 4/6
    assert m["acc7"] == pytest.approx(4 / 6)
    # acc5: clip to [-2, 2] first: pred 2 -0 0 -2 0 1, truth 2 0 -1 -2 1 1 -> 4/6
    assert m["acc5"] == pytest.approx(4 / 6)
    assert -1 <= m["corr"] <= 1 and m["n"] == 6


def test_clipping_matters_for_acc5():
    # 2.6 vs 3.0: acc7 rounds to 3 and 3 (equal); acc5 clips both to 2 (equal). -2.6 vs -1.6: 7-class -3 vs -2
    # (differ), 5-class -2 vs -2 (equal).
    m = regression_metrics([2.6, -2.6], [3.0, -1.6])
    assert m["acc7"] == 0.5 and m["acc5"] == 1.0


def test_perfect_and_nan_labels_dropped():
    m = regression_metrics([1.0, -2.0, 0.5, 9.9], [1.0, -2.0, 0.5, float("nan")])
    assert m["n"] == 3 and m["mae"] == 0 and m["has0_acc2"] == 1 and m["corr"] == pytest.approx(1.0)


def test_constant_predictions_have_no_correlation():
    assert math.isnan(regression_metrics([0.0, 0.0, 0.0], [1.0, -1.0, 2.0])["corr"])


def test_aggregate_mean_std():
    agg = aggregate([{"mae": 1.0, "n": 3}, {"mae": 2.0, "n": 3}, {"mae": 3.0, "n": 3}])
    assert agg["mae"]["mean"] == 2.0 and agg["mae"]["std"] == pytest.approx(1.0) and agg["mae"]["n"] == 3
    assert aggregate([{"mae": 1.5}])["mae"]["std"] == 0.0
    assert json_safe({"a": float("nan"), "b": [1.0, float("inf")]}) == {"a": None, "b": [1.0, None]}


def test_majority_rates_are_the_constant_predictors_acc2():
    # LABELS: has0 classes (>= 0): T T F F T T -> 4 of 6; non0 (label != 0: 3.0 -0.6 -2.0 1.0 1.4): 3 of 5 positive
    rates = majority_rates(LABELS)
    assert rates == {"has0_acc2": pytest.approx(4 / 6), "non0_acc2": pytest.approx(3 / 5)}
    # it is exactly what predicting the larger class everywhere scores
    assert rates["has0_acc2"] == pytest.approx(regression_metrics([1.0] * 6, LABELS)["has0_acc2"])
    assert rates["non0_acc2"] == pytest.approx(regression_metrics([1.0] * 6, LABELS)["non0_acc2"])
    # a negative majority, NaN labels left out; no row left -> NaN
    assert majority_rates([-1.0, -2.0, 0.5, float("nan")]) == {"has0_acc2": pytest.approx(2 / 3),
                                                                "non0_acc2": pytest.approx(2 / 3)}
    assert math.isnan(majority_rates([0.0, 0.0])["non0_acc2"]) and majority_rates([0.0, 0.0])["has0_acc2"] == 1.0
    assert all(math.isnan(v) for v in majority_rates([]).values())
