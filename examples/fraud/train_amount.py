"""External regression trainer for the demo (pipeline-amount.toml): predicts a
transaction's amount from the other features with scikit-learn's
LinearRegression, exported with skl2onnx. Same contract as train.py: read
{train} (features, then the label), write an ONNX model to {output}.
"""

import argparse

import numpy as np
from skl2onnx import to_onnx
from sklearn.linear_model import LinearRegression


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", required=True)
    ap.add_argument("--label", required=True)
    ap.add_argument("--output", required=True)
    args = ap.parse_args()
    with open(args.train) as f:
        header = f.readline().strip().split(",")
    data = np.loadtxt(args.train, delimiter=",", skiprows=1, dtype=np.float64, ndmin=2)
    label_index = header.index(args.label)
    y = data[:, label_index]
    x = np.delete(data, label_index, axis=1).astype(np.float32)
    model = LinearRegression().fit(x, y)
    onx = to_onnx(model, x[:1], target_opset={"": 17, "ai.onnx.ml": 3}, name="amount_linear")
    with open(args.output, "wb") as f:
        f.write(onx.SerializeToString())
    print(f"trained on {len(y)} rows, wrote {args.output}")


if __name__ == "__main__":
    main()
