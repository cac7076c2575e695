"""External training command for the fraud demo (pipeline-python.toml).

Greenbelt writes the training split as CSV (features, then the label), runs
this script, and evaluates the ONNX file it writes itself. Any language works;
the contract is: read {train}, write an ONNX model with one FP32 input
[N, features] and a probability output.

Needs scikit-learn, skl2onnx and onnx (tests/python/requirements.txt).
"""

import argparse

import numpy as np
from skl2onnx import to_onnx
from sklearn.ensemble import GradientBoostingClassifier


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", required=True)
    ap.add_argument("--label", required=True)
    ap.add_argument("--output", required=True)
    ap.add_argument("--n-estimators", type=int, default=100)
    args = ap.parse_args()

    with open(args.train) as f:
        header = f.readline().strip().split(",")
    data = np.loadtxt(args.train, delimiter=",", skiprows=1, dtype=np.float64)
    label_index = header.index(args.label)
    y = data[:, label_index].astype(np.int64)
    x = np.delete(data, label_index, axis=1).astype(np.float32)

    model = GradientBoostingClassifier(n_estimators=args.n_estimators, max_depth=3, random_state=0)
    model.fit(x, y)
    onx = to_onnx(
        model,
        x[:1],
        options={id(model): {"zipmap": False}},
        target_opset={"": 17, "ai.onnx.ml": 3},
        name="fraud_sklearn",
    )
    with open(args.output, "wb") as f:
        f.write(onx.SerializeToString())
    print(f"trained on {len(y)} rows, wrote {args.output}")


if __name__ == "__main__":
    main()
