#!/usr/bin/env python3
"""Models, holdout sets and Python-side timings for the quantization report
(bench/efficiency-quantize.sh, docs/efficiency.md "Quantization").

    efficiency-models.py models OUT       write OUT/<model>/{model.onnx,holdout.csv}
    efficiency-models.py time OUT         time every OUT/<model>/{model,int8,fp16,distill-*}.onnx
                                          with Python onnxruntime -> OUT/ort-times.json
    efficiency-models.py report OUT       the Markdown section from OUT/*.json

Models (nothing is committed; everything is made here, deterministically):

- ``mlp``: ``fixtures/models/mlp/1/model.onnx`` (scikit-learn MLPClassifier,
  hidden (16,), 30 features, 3 classes); its holdout is 2,000 fresh rows of
  the fixture's own distribution, ``fixtures/datagen.make_tabular(seed=1)``.
- ``mlp256``: scikit-learn ``MLPClassifier(hidden_layer_sizes=(256, 256))``
  trained on 10,000 rows of ``make_classification(n_features=200,
  n_informative=40, random_state=0)`` (binary), exported with skl2onnx
  (``zipmap=False``, input ``input`` FP32 [N, 200]); its holdout is the other
  2,000 rows, and ``train.csv`` the 10,000 training rows (the distilled
  students learn the teacher's probabilities on them). The export is checked
  against ``predict_proba`` (1e-4).

Needs numpy, scikit-learn, skl2onnx and onnxruntime (the repository's
``.venv`` has them).
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = ("model", "int8", "fp16", "distill-gbdt", "distill-logreg")
MODES = VARIANTS[1:]


def write_csv(path: Path, X: np.ndarray, y: np.ndarray, width: int) -> None:
    names = [f"f{i:0{width}d}" for i in range(X.shape[1])]
    with path.open("w") as f:
        f.write(",".join(names + ["y"]) + "\n")
        for row, label in zip(X, y):
            f.write(",".join(repr(float(v)) for v in row) + f",{int(label)}\n")


def models(out: Path) -> None:
    sys.path.insert(0, str(ROOT / "fixtures"))
    from datagen import MLP_CLASSES, MLP_FEATURES, make_tabular

    d = out / "mlp"
    d.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "fixtures/models/mlp/1/model.onnx", d / "model.onnx")
    X, y = make_tabular(2000, MLP_FEATURES, seed=1, n_classes=MLP_CLASSES)
    write_csv(d / "holdout.csv", X, y, 2)
    print(f"mlp: fixture copied, holdout {X.shape}", file=sys.stderr)

    import warnings

    from onnxruntime import InferenceSession
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.datasets import make_classification
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    X, y = make_classification(
        n_samples=12000, n_features=200, n_informative=40, n_redundant=20,
        n_classes=2, random_state=0,
    )
    X = X.astype(np.float32)
    Xtr, ytr, Xho, yho = X[:10000], y[:10000], X[10000:], y[10000:]
    started = time.time()
    model = MLPClassifier(hidden_layer_sizes=(256, 256), max_iter=30, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(Xtr, ytr)
    onx = to_onnx(
        model,
        initial_types=[("input", FloatTensorType([None, 200]))],
        target_opset={"": 13, "ai.onnx.ml": 3},
        options={id(model): {"zipmap": False}},
    )
    d = out / "mlp256"
    d.mkdir(parents=True, exist_ok=True)
    (d / "model.onnx").write_bytes(onx.SerializeToString())
    sess = InferenceSession(str(d / "model.onnx"), providers=["CPUExecutionProvider"])
    _, proba = sess.run(None, {"input": Xho})
    err = float(np.abs(proba - model.predict_proba(Xho)).max())
    if err > 1e-4:
        raise SystemExit(f"mlp256: ONNX export differs from predict_proba by {err}")
    write_csv(d / "holdout.csv", Xho, yho, 3)
    # The student's training rows (distillation): the teacher's own training set.
    write_csv(d / "train.csv", Xtr, ytr, 3)
    print(
        f"mlp256: trained in {time.time() - started:.0f} s, holdout accuracy "
        f"{model.score(Xho, yho):.4f}, export max |diff| {err:.1e}",
        file=sys.stderr,
    )


def time_models(out: Path, requests: int = 2000, warmup: int = 200) -> None:
    import onnxruntime as ort

    results = {}
    for d in sorted(p for p in out.iterdir() if (p / "holdout.csv").exists()):
        X = np.loadtxt(d / "holdout.csv", delimiter=",", skiprows=1, dtype=np.float32)[:, :-1]
        for variant in VARIANTS:
            path = d / f"{variant}.onnx"
            if not path.exists():
                continue
            so = ort.SessionOptions()
            so.intra_op_num_threads = 1
            so.inter_op_num_threads = 1
            sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
            row = {}
            for batch in (1, 64):
                feeds = [X[(k * batch) % len(X):][:batch] for k in range(64)]
                feeds = [f for f in feeds if len(f) == batch] or [X[:batch]]
                for i in range(warmup):
                    sess.run(None, {"input": feeds[i % len(feeds)]})
                lat = []
                for i in range(requests):
                    t = time.perf_counter()
                    sess.run(None, {"input": feeds[i % len(feeds)]})
                    lat.append((time.perf_counter() - t) * 1000)
                lat.sort()
                row[f"b{batch}"] = {
                    "p50_ms": lat[int(np.ceil(0.5 * len(lat))) - 1],
                    "p99_ms": lat[int(np.ceil(0.99 * len(lat))) - 1],
                }
            results[f"{d.name}/{variant}"] = row
            print(f"timed {d.name}/{variant}: {row}", file=sys.stderr)
    (out / "ort-times.json").write_text(json.dumps(results, indent=1))


def fmt_ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def report(out: Path) -> None:
    times = json.loads((out / "ort-times.json").read_text()) if (out / "ort-times.json").exists() else {}
    lines = []
    lines.append(
        "| model | variant | size (bytes) | size vs fp32 | quality (holdout) | Δ vs fp32 | agreement | "
        "p50 / p99 ms, batch 1 | p50 / p99 ms, batch 64 | ORT (Python) p50 ms, batch 1 / 64 | gates |"
    )
    lines.append("| --- | --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for d in sorted(p for p in out.iterdir() if (p / "holdout.csv").exists()):
        reports = {}
        for mode in MODES:
            f = out / f"{d.name}-{mode}.json"
            if f.exists() and f.stat().st_size > 0:
                reports[mode] = json.loads(f.read_text())
        if not reports:
            continue
        any_report = next(iter(reports.values()))
        pm = any_report["parent_metrics"]
        quality = "roc_auc" if "roc_auc" in pm else "accuracy"
        rows = [("fp32", "model", pm, None, None)]
        for mode, r in reports.items():
            rows.append((mode, mode, r["derived_metrics"], r, pm))
        for label, variant, m, r, parent in rows:
            size = m["size_bytes"]
            size_ratio = "1.00" if parent is None else f"{size / parent['size_bytes']:.2f}"
            q = m.get(quality)
            delta = "" if parent is None else f"{q - parent[quality]:+.4f}"
            agreement = "" if r is None else f"{m.get('agreement', float('nan')):.4f}"
            ort_t = times.get(f"{d.name}/{variant}", {})
            gates = ""
            if r is not None:
                gates = ", ".join(
                    f"{g['rule']}: {g['outcome'].upper()}" for g in r["gates"]
                )
            lines.append(
                f"| {d.name} | {label} | {size:.0f} | {size_ratio} | {quality} {q:.4f} | {delta} | {agreement} | "
                f"{fmt_ms(m.get('p50_ms'))} / {fmt_ms(m.get('p99_ms'))} | "
                f"{fmt_ms(m.get('p50_ms_batch64'))} / {fmt_ms(m.get('p99_ms_batch64'))} | "
                f"{fmt_ms(ort_t.get('b1', {}).get('p50_ms'))} / {fmt_ms(ort_t.get('b64', {}).get('p50_ms'))} | {gates} |"
            )
    print("\n".join(lines))


def main() -> None:
    if len(sys.argv) != 3 or sys.argv[1] not in ("models", "time", "report"):
        raise SystemExit(__doc__)
    out = Path(sys.argv[2])
    {"models": models, "time": time_models, "report": report}[sys.argv[1]](out)


if __name__ == "__main__":
    main()
