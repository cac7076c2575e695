#!/usr/bin/env python3
"""Golden values from scikit-learn for greenbelt-train's tests.

Regenerate golden.json (next to this script) from the repository root with
the pinned fixtures environment (scikit-learn 1.9.1, numpy 2.4.6):

    fixtures/.venv/bin/python crates/greenbelt-train/tests/golden/make_golden.py

The output is deterministic (fixed seeds, sorted keys); commit it together
with any change to this script. The Rust side is
crates/greenbelt-train/tests/it/golden.rs.

Check the ONNX files the Rust export tests write with Python onnxruntime and
the ONNX checker:

    ORT_DYLIB_PATH=... cargo test -p greenbelt-train --test it export
    fixtures/.venv/bin/python crates/greenbelt-train/tests/golden/make_golden.py \
        --check-onnx target/tmp/greenbelt-train

Contents:
- "metrics": binary cases (labels, probabilities) with every sklearn metric.
  Inputs are stored as IEEE-754 bit patterns ("*_bits", u64) so that values
  such as 1 - 2**-53 reach Rust exactly; expected values are plain floats.
  A metric sklearn leaves undefined (one class: roc_auc_score warns and
  returns NaN) is null, and the Rust function must return an error.
- "regression": rmse / mae cases.
- "logreg": sklearn LogisticRegression on greenbelt_train::synthetic::linear
  data, reproduced here bit for bit (SplitMix64 and + - * / only).
- "gbdt": sklearn HistGradientBoostingClassifier's test AUC on
  synthetic::disc data, as a reference point for the Rust trainer.
- "linreg": sklearn Ridge (solver="cholesky") and LinearRegression (alpha 0)
  coefficients on synthetic::regression data, reproduced bit for bit.
- "gbdt_regression": sklearn HistGradientBoostingRegressor's test RMSE on
  synthetic::regression data, a reference point for the squared-error trees.
"""

from __future__ import annotations

import argparse
import json
import math
import struct
import sys
import warnings
from pathlib import Path

import numpy as np
import sklearn
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.linear_model import LinearRegression, LogisticRegression, Ridge
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    f1_score,
    log_loss,
    mean_absolute_error,
    precision_score,
    recall_score,
    roc_auc_score,
    root_mean_squared_error,
)
from sklearn.preprocessing import StandardScaler

HERE = Path(__file__).resolve().parent
OUT = HERE / "golden.json"
MASK = (1 << 64) - 1


# --- the Rust generators, reproduced exactly -------------------------------


class SplitMix64:
    def __init__(self, seed: int):
        self.state = seed & MASK

    def next_u64(self) -> int:
        self.state = (self.state + 0x9E3779B97F4A7C15) & MASK
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        return z ^ (z >> 31)

    def next_f64(self) -> float:
        return (self.next_u64() >> 11) * (1.0 / (1 << 53))


LINEAR_W = [1.5, -1.0, 0.5, 2.0, -0.75]
LINEAR_SCALE = [1.0, 10.0, 0.1, 100.0]
LINEAR_OFFSET = [0.0, 5.0, -1.0, 50.0]


def linear(rows: int, cols: int, seed: int):
    """greenbelt_train::synthetic::linear"""
    w = [LINEAR_W[j % 5] for j in range(cols)]
    rng = SplitMix64(seed)
    x, y = [], []
    for _ in range(rows):
        z = 0.25
        row = []
        for j in range(cols):
            s = rng.next_f64() * 4.0 - 2.0
            row.append(s * LINEAR_SCALE[j % 4] + LINEAR_OFFSET[j % 4])
            z += w[j] * s
        noise = (rng.next_f64() + rng.next_f64() + rng.next_f64() + rng.next_f64() - 2.0) * 1.5
        x.append(row)
        y.append(1 if z + noise > 0.0 else 0)
    return np.array(x, dtype=np.float64), np.array(y, dtype=np.int64)


def regression(rows: int, cols: int, seed: int):
    """greenbelt_train::synthetic::regression"""
    w = [LINEAR_W[j % 5] for j in range(cols)]
    rng = SplitMix64(seed)
    x, y = [], []
    for _ in range(rows):
        z = 0.25
        row = []
        for j in range(cols):
            s = rng.next_f64() * 4.0 - 2.0
            row.append(s * LINEAR_SCALE[j % 4] + LINEAR_OFFSET[j % 4])
            z += w[j] * s
        noise = (rng.next_f64() + rng.next_f64() + rng.next_f64() + rng.next_f64() - 2.0) * 1.5
        x.append(row)
        y.append(z + noise)
    return np.array(x, dtype=np.float64), np.array(y, dtype=np.float64)


def disc(rows: int, seed: int):
    """greenbelt_train::synthetic::disc"""
    rng = SplitMix64(seed)
    x, y = [], []
    for _ in range(rows):
        row = [rng.next_f64() * 2.0 - 1.0 for _ in range(4)]
        inside = row[0] * row[0] + row[1] * row[1] < 0.5
        flip = rng.next_f64() < 0.1
        x.append(row)
        y.append(1 if inside != flip else 0)
    return np.array(x, dtype=np.float64), np.array(y, dtype=np.int64)


def checksum(x: np.ndarray, y: np.ndarray) -> dict:
    # math.fsum: exactly rounded, so it does not depend on summation order.
    out = {
        "rows": int(x.shape[0]),
        "cols": int(x.shape[1]),
        "x_fsum": math.fsum(float(v) for v in x.ravel()),
        "first_row_bits": bits(x[0]),
    }
    if y.dtype == np.int64:
        out["positives"] = int(y.sum())
    else:
        out["y_fsum"] = math.fsum(float(v) for v in y)
    return out


# --- metrics ---------------------------------------------------------------


def bits(values) -> list[int]:
    return [struct.unpack("<Q", struct.pack("<d", float(v)))[0] for v in values]


def undefined_to_none(fn):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            v = float(fn())
        except ValueError:
            return None
    return None if math.isnan(v) else v


def metric_case(name: str, y, p) -> dict:
    y = np.asarray(y, dtype=np.int64)
    p = np.asarray(p, dtype=np.float64)
    y_pred = (p > 0.5).astype(np.int64)
    both = len(np.unique(y)) == 2
    return {
        "name": name,
        "y_true_bits": bits(y.astype(np.float64)),
        "y_prob_bits": bits(p),
        "roc_auc": undefined_to_none(lambda: roc_auc_score(y, p)) if both else None,
        # No positives: sklearn warns and returns 0; greenbelt returns an error.
        "pr_auc": float(average_precision_score(y, p)) if y.sum() > 0 else None,
        "log_loss": float(log_loss(y, p, labels=[0, 1])),
        "accuracy": float(accuracy_score(y, y_pred)),
        "precision": float(precision_score(y, y_pred, labels=[0, 1], zero_division=0)),
        "recall": float(recall_score(y, y_pred, labels=[0, 1], zero_division=0)),
        "f1": float(f1_score(y, y_pred, labels=[0, 1], zero_division=0)),
    }


def metric_cases() -> list[dict]:
    rng = np.random.default_rng(20240601)
    cases = []

    n = 300
    y = rng.integers(0, 2, n)
    p = np.round(rng.random(n), 2)  # about 100 distinct values: many ties
    cases.append(metric_case("random_with_ties", y, p))

    # Ties across classes that straddle the 0.5 threshold.
    y = rng.integers(0, 2, 60)
    p = rng.choice([0.1, 0.25, 0.5, 0.5, 0.75, 0.9], 60)
    cases.append(metric_case("few_levels_with_exact_half", y, p))

    y = rng.integers(0, 2, 50)
    y[0], y[1] = 0, 1
    cases.append(metric_case("all_equal_scores", y, np.full(50, 0.5)))
    cases.append(metric_case("all_equal_scores_high", y, np.full(50, 0.7)))

    y = np.array([0] * 20 + [1] * 30)
    p = np.concatenate([np.linspace(0.0, 0.4, 20), np.linspace(0.6, 1.0, 30)])
    cases.append(metric_case("perfect_separation", y, p))
    cases.append(metric_case("perfect_inversion", y, 1.0 - p))

    n = 600
    y = (rng.random(n) < 0.03).astype(np.int64)
    y[0] = 1
    p = np.where(y == 1, rng.beta(2, 5, n), rng.beta(1, 8, n))
    cases.append(metric_case("imbalanced_3pct", y, p))
    cases.append(metric_case("imbalanced_3pct_rounded", y, np.round(p, 2)))

    # Log-loss clipping: exact 0 and 1, values within eps of them, tiny values.
    eps = np.finfo(np.float64).eps
    p = np.array(
        [0.0, 1.0, 1e-300, 1e-20, eps / 2, eps, 2 * eps, 1 - eps, 1 - eps / 2,
         1 - 2 * eps, 0.5, 1e-10, 1 - 1e-10, 0.3, 0.999999, 0.000001]
    )
    y = np.array([1, 0, 1, 0, 1, 1, 0, 0, 0, 1, 1, 1, 0, 0, 1, 0])
    cases.append(metric_case("near_extremes_wrong_and_right", y, p))
    cases.append(metric_case("near_extremes_flipped", 1 - y, p))

    # Continuous, no ties, a logistic model's output.
    n = 500
    z = rng.normal(size=n) * 2.0
    p = 1.0 / (1.0 + np.exp(-z))
    y = (rng.random(n) < p).astype(np.int64)
    cases.append(metric_case("logistic_continuous", y, p))

    cases.append(metric_case("single_class_positive", np.ones(10, dtype=np.int64), rng.random(10)))
    cases.append(metric_case("single_class_negative", np.zeros(10, dtype=np.int64), rng.random(10)))
    cases.append(metric_case("two_rows_tied", [0, 1], [0.3, 0.3]))
    return cases


def regression_cases() -> list[dict]:
    rng = np.random.default_rng(7)
    out = []

    def case(name, t, p):
        t = np.asarray(t, dtype=np.float64)
        p = np.asarray(p, dtype=np.float64)
        out.append({
            "name": name,
            "y_true_bits": bits(t),
            "y_pred_bits": bits(p),
            "rmse": float(root_mean_squared_error(t, p)),
            "mae": float(mean_absolute_error(t, p)),
        })

    t = rng.normal(size=500) * 10 + 3
    case("normal_noise", t, t + rng.normal(size=500))
    t2 = rng.normal(size=200)
    p2 = t2.copy()
    p2[::50] += 1e6
    case("outliers", t2, p2)
    case("exact", [1.0, -2.5, 3.25], [1.0, -2.5, 3.25])
    case("single", [42.0], [40.5])
    case("large_magnitude", [1e12, -1e12, 3e11], [1e12 + 1.5, -1e12 - 2.0, 3e11])
    return out


# --- models ----------------------------------------------------------------


def logreg_case(name, x, y, x_test, y_test, c, standardize):
    if standardize:
        scaler = StandardScaler().fit(x)
        xs = scaler.transform(x)
    else:
        xs = x
    clf = LogisticRegression(C=c, solver="newton-cholesky", tol=1e-12, max_iter=1000)
    clf.fit(xs, y)
    w = clf.coef_[0]
    b = float(clf.intercept_[0])
    if standardize:
        coef = w / scaler.scale_
        intercept = b - float(np.dot(coef, scaler.mean_))
    else:
        coef, intercept = w, b

    def proba(xx):
        return 1.0 / (1.0 + np.exp(-(xx @ coef + intercept)))

    return {
        "name": name,
        "c": c,
        "standardize": standardize,
        "coefficients": [float(v) for v in coef],
        "intercept": intercept,
        "train_auc": float(roc_auc_score(y, proba(x))),
        "test_auc": float(roc_auc_score(y_test, proba(x_test))),
        "n_iter": int(clf.n_iter_[0]),
    }


def logreg_golden() -> dict:
    rows, cols, seed, test_rows, test_seed = 600, 5, 7, 400, 8
    x, y = linear(rows, cols, seed)
    xt, yt = linear(test_rows, cols, test_seed)
    return {
        "data": {"rows": rows, "cols": cols, "seed": seed,
                 "test_rows": test_rows, "test_seed": test_seed},
        "checksum": checksum(x, y),
        "test_checksum": checksum(xt, yt),
        "cases": [
            logreg_case("standardized_c1", x, y, xt, yt, 1.0, True),
            logreg_case("standardized_c0.01", x, y, xt, yt, 0.01, True),
            logreg_case("raw_c0.5", x, y, xt, yt, 0.5, False),
        ],
    }


def gbdt_golden() -> dict:
    rows, seed, test_rows, test_seed = 3000, 1, 2000, 2
    x, y = disc(rows, seed)
    xt, yt = disc(test_rows, test_seed)
    params = {"n_estimators": 100, "learning_rate": 0.1, "max_depth": 3,
              "min_samples_leaf": 20, "l2_regularization": 0.0, "max_bins": 255}
    clf = HistGradientBoostingClassifier(
        max_iter=params["n_estimators"], learning_rate=params["learning_rate"],
        max_depth=params["max_depth"], max_leaf_nodes=None,
        min_samples_leaf=params["min_samples_leaf"],
        l2_regularization=params["l2_regularization"], max_bins=params["max_bins"],
        early_stopping=False, random_state=0,
    ).fit(x, y)
    return {
        "data": {"rows": rows, "seed": seed, "test_rows": test_rows, "test_seed": test_seed},
        "checksum": checksum(x, y),
        "params": params,
        "sklearn_test_auc": float(roc_auc_score(yt, clf.predict_proba(xt)[:, 1])),
    }


def linreg_golden() -> dict:
    rows, cols, seed, test_rows, test_seed = 600, 5, 17, 400, 18
    x, y = regression(rows, cols, seed)
    xt, yt = regression(test_rows, cols, test_seed)
    cases = []
    for name, alpha, fit_intercept in [
        ("ols", 0.0, True), ("ridge_1", 1.0, True), ("ridge_1000", 1000.0, True),
        ("ridge_1_no_intercept", 1.0, False),
    ]:
        if alpha == 0.0:
            reg = LinearRegression(fit_intercept=fit_intercept).fit(x, y)
        else:
            reg = Ridge(alpha=alpha, fit_intercept=fit_intercept, solver="cholesky").fit(x, y)
        cases.append({
            "name": name,
            "alpha": alpha,
            "fit_intercept": fit_intercept,
            "coefficients": [float(v) for v in reg.coef_],
            "intercept": float(reg.intercept_),
            "test_rmse": float(root_mean_squared_error(yt, reg.predict(xt))),
        })
    return {
        "data": {"rows": rows, "cols": cols, "seed": seed,
                 "test_rows": test_rows, "test_seed": test_seed},
        "checksum": checksum(x, y),
        "test_checksum": checksum(xt, yt),
        "cases": cases,
    }


def gbdt_regression_golden() -> dict:
    """synthetic::regression's linear target, which trees fit piecewise."""
    rows, cols, seed, test_rows, test_seed = 3000, 4, 21, 2000, 22
    x, y = regression(rows, cols, seed)
    xt, yt = regression(test_rows, cols, test_seed)
    params = {"n_estimators": 100, "learning_rate": 0.1, "max_depth": 3,
              "min_samples_leaf": 20, "l2_regularization": 0.0, "max_bins": 255}
    reg = HistGradientBoostingRegressor(
        max_iter=params["n_estimators"], learning_rate=params["learning_rate"],
        max_depth=params["max_depth"], max_leaf_nodes=None,
        min_samples_leaf=params["min_samples_leaf"],
        l2_regularization=params["l2_regularization"], max_bins=params["max_bins"],
        early_stopping=False, random_state=0,
    ).fit(x, y)
    return {
        "data": {"rows": rows, "cols": cols, "seed": seed,
                 "test_rows": test_rows, "test_seed": test_seed},
        "checksum": checksum(x, y),
        "params": params,
        "sklearn_test_rmse": float(root_mean_squared_error(yt, reg.predict(xt))),
    }


# --- ONNX check ------------------------------------------------------------


def check_onnx(directory: Path) -> int:
    import onnx
    import onnxruntime as ort

    files = sorted(directory.glob("*.onnx"))
    if not files:
        print(f"no .onnx files in {directory}; run the Rust export tests first")
        return 1
    failed = 0
    for path in files:
        expected = json.loads(path.with_suffix(".json").read_text())
        model = onnx.load(str(path))
        onnx.checker.check_model(model, full_check=True)
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        x = np.asarray(expected["input"], dtype=np.float32)
        if "prediction" in expected:  # a regressor
            (pred,) = sess.run(["prediction"], {"input": x})
            want = np.asarray(expected["prediction"], dtype=np.float64)
            err = float(np.max(np.abs(pred[:, 0].astype(np.float64) - want)
                               / np.maximum(np.abs(want), 1.0)))
            ok = err <= 1e-5 and pred.shape == (len(want), 1) and pred.dtype == np.float32
            failed += not ok
            print(f"{'OK  ' if ok else 'FAIL'} {path.name}: max relative |prediction - predict| = "
                  f"{err:.2e}, onnxruntime {ort.__version__}")
            continue
        label, prob = sess.run(["label", "probabilities"], {"input": x})
        want = np.asarray(expected["predict_proba"], dtype=np.float64)
        err = float(np.max(np.abs(prob[:, 1].astype(np.float64) - want)))
        sums = float(np.max(np.abs(prob.sum(axis=1) - 1.0)))
        clear = np.abs(want - 0.5) > 1e-4
        labels_ok = bool(np.all(label[clear] == (want[clear] > 0.5)))
        ok = err <= 1e-5 and sums <= 1e-6 and labels_ok and label.dtype == np.int64
        failed += not ok
        print(f"{'OK  ' if ok else 'FAIL'} {path.name}: max |p - predict_proba| = {err:.2e}, "
              f"labels {'agree' if labels_ok else 'DIFFER'}, onnxruntime {ort.__version__}")
    return 1 if failed else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check-onnx", type=Path, metavar="DIR",
                    help="check exported ONNX files instead of writing golden.json")
    args = ap.parse_args()
    if args.check_onnx:
        return check_onnx(args.check_onnx)
    golden = {
        "generator": {"sklearn": sklearn.__version__, "numpy": np.__version__},
        "metrics": metric_cases(),
        "regression": regression_cases(),
        "logreg": logreg_golden(),
        "gbdt": gbdt_golden(),
        "linreg": linreg_golden(),
        "gbdt_regression": gbdt_regression_golden(),
    }
    OUT.write_text(json.dumps(golden, indent=1, sort_keys=True) + "\n")
    print(f"wrote {OUT.relative_to(Path.cwd()) if OUT.is_relative_to(Path.cwd()) else OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
