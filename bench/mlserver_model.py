"""Prepare MLServer's copy of the `logreg/1` fixture model.

Run with bench/.venv-mlserver's Python (pinned scikit-learn/numpy, the same
versions as fixtures/requirements.txt):

    bench/.venv-mlserver/bin/python bench/mlserver_model.py OUT_DIR

Retrains the exact scikit-learn estimator behind
fixtures/models/logreg/1/model.onnx with fixtures/datagen.py:train_logreg(),
checks it against the ONNX golden outputs (labels equal, probabilities within
1e-4 on all 8 golden rows), and writes OUT_DIR/model.joblib plus
OUT_DIR/model-settings.json (mlserver_sklearn.SKLearnModel, predict_proba).
Prints one JSON line with what it checked.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "fixtures"))

TOLERANCE = 1e-4


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)

    import joblib
    import numpy as np
    import sklearn
    from datagen import train_logreg

    model = train_logreg()
    golden = json.loads((ROOT / "fixtures/golden/logreg_v1.json").read_text())
    inp = golden["inputs"][0]
    X = np.array(inp["data"], dtype=np.float32).reshape(inp["shape"])
    outs = {o["name"]: o for o in golden["outputs"]}
    want_p = np.array(outs["probabilities"]["data"], dtype=np.float64).reshape(
        outs["probabilities"]["shape"]
    )
    want_l = np.array(outs["label"]["data"], dtype=np.int64)
    got_p = model.predict_proba(X)
    got_l = model.predict(X)
    diff = float(np.abs(got_p - want_p).max())
    if diff > TOLERANCE or not np.array_equal(got_l, want_l):
        print(
            f"mlserver_model.py: the retrained estimator does not match the ONNX golden "
            f"outputs (max |dp| = {diff:.3g}, labels {got_l.tolist()} vs {want_l.tolist()}); "
            f"check that scikit-learn/numpy match fixtures/requirements.txt",
            file=sys.stderr,
        )
        return 1

    joblib.dump(model, out / "model.joblib")
    settings = {
        "name": "logreg",
        "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {
            "uri": "./model.joblib",
            "extra": {"predict_fn": "predict_proba"},
        },
    }
    (out / "model-settings.json").write_text(json.dumps(settings, indent=2) + "\n")
    print(
        json.dumps(
            {
                "scikit_learn": sklearn.__version__,
                "numpy": np.__version__,
                "golden_rows": int(X.shape[0]),
                "max_abs_diff_vs_onnx_golden": diff,
                "joblib": str(out / "model.joblib"),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
