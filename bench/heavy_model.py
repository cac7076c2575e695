"""A compute-bound model for the overload benchmark.

The logreg fixture costs ~6 us of compute against ~40 us of HTTP work, so
on a 2-core machine its capacity is set by the HTTP layer and the load
generator, not by the model: admission control cannot protect anything
there. This MLP (input [N, 64] fp32 -> `layers` dense ReLU layers of
`hidden` units -> 2 scores) reads ~16 MB of weights per hidden-to-hidden
layer per call, so one row costs about a millisecond on one core (measured
here with ONNX Runtime, one intra-op thread), as a real model would, and
overload is decided at the model.

    python bench/heavy_model.py OUT.onnx [--hidden 2048] [--layers 3]
"""

import argparse

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def build(hidden: int, layers: int, features: int = 64) -> onnx.ModelProto:
    rng = np.random.default_rng(7)
    nodes, inits = [], []
    prev, width = "input", features
    for i in range(layers):
        w = (rng.standard_normal((width, hidden)) / np.sqrt(width)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [f"m{i}"]))
        nodes.append(helper.make_node("Relu", [f"m{i}"], [f"h{i}"]))
        prev, width = f"h{i}", hidden
    out = (rng.standard_normal((width, 2)) / np.sqrt(width)).astype(np.float32)
    inits.append(numpy_helper.from_array(out, "w_out"))
    nodes.append(helper.make_node("MatMul", [prev, "w_out"], ["scores"]))
    graph = helper.make_graph(
        nodes,
        "heavy_mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", features])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 2])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--layers", type=int, default=3)
    a = ap.parse_args()
    onnx.save(build(a.hidden, a.layers), a.out)


if __name__ == "__main__":
    main()
