"""Greenbelt against the official Triton Python client (tritonclient 2.73).

Covers, against a real `greenbelt serve` process:
  * HTTP (binary tensors and JSON tensors) and gRPC: health, server and model
    metadata, model readiness, inference checked against the golden outputs
    that onnxruntime computed (fixtures/golden)
  * error mapping through the clients (404 / NOT_FOUND, 400 / INVALID_ARGUMENT)
  * the model repository extension (index, unload, load, failed load)
  * raw HTTP details: 413, malformed JSON, traceparent / x-request-id, /metrics
  * graceful drain on SIGTERM

Float outputs of real models are compared with rtol 1e-5 / atol 1e-6; ints,
bools and strings exactly. The `dtypes` model is an Identity per type, so its
outputs must be bit-for-bit the inputs (floats compared by bit pattern).
"""

from __future__ import annotations

import json
import re
import shutil
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

GOLDEN_DIR = Path(__file__).resolve().parents[2] / "fixtures" / "golden"

RTOL = 1e-5
ATOL = 1e-6

NP_DTYPES = {
    "BOOL": np.bool_,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
    "BYTES": np.object_,
}
FLOAT_BITS = {"FP16": np.uint16, "FP32": np.uint32, "FP64": np.uint64}

# (model, version) pairs that have golden files.
GOLDEN_MODELS = [
    ("logreg", "1"),
    ("logreg", "2"),
    ("mlp", "1"),
    ("multi_io", "1"),
    ("dtypes", "1"),
    ("forest", "1"),
    ("logreg_zipmap", "1"),
]
ALL_MODELS = sorted({m for m, _ in GOLDEN_MODELS})

HTTP_CODES = {"bad": "400", "not_found": "404", "too_large": "413"}
GRPC_CODES = {
    "bad": "StatusCode.INVALID_ARGUMENT",
    "not_found": "StatusCode.NOT_FOUND",
    "too_large": "StatusCode.RESOURCE_EXHAUSTED",
}


# ------------------------------------------------------------------ golden data


@dataclass
class Tensor:
    name: str
    datatype: str
    array: np.ndarray


@dataclass
class Golden:
    model: str
    version: str
    signature: dict
    inputs: list[Tensor]
    outputs: list[Tensor]

    def input(self, name) -> Tensor:
        return next(t for t in self.inputs if t.name == name)

    def rows(self, start, stop) -> "Golden":
        """The same golden case restricted to rows [start, stop)."""
        cut = lambda ts: [Tensor(t.name, t.datatype, t.array[start:stop]) for t in ts]  # noqa: E731
        return Golden(self.model, self.version, self.signature, cut(self.inputs), cut(self.outputs))


def to_numpy(t: dict) -> np.ndarray:
    if t["datatype"] == "BYTES":
        arr = np.array([s.encode("utf-8") for s in t["data"]], dtype=np.object_)
    else:
        arr = np.array(t["data"], dtype=NP_DTYPES[t["datatype"]])
    return arr.reshape(t["shape"])


@lru_cache(maxsize=None)
def golden(model: str, version: str = "1") -> Golden:
    g = json.loads((GOLDEN_DIR / f"{model}_v{version}.json").read_text())
    conv = lambda ts: [Tensor(t["name"], t["datatype"], to_numpy(t)) for t in ts]  # noqa: E731
    return Golden(model, version, g["signature"], conv(g["inputs"]), conv(g["outputs"]))


def expected_signature(model: str):
    """(inputs, outputs) as [(name, datatype, shape)], as the server should report
    them. The ZipMap output is served as a dense FP32 [-1, -1] tensor."""
    sig = golden(model).signature

    def conv(specs):
        out = []
        for s in specs:
            if s["datatype"] is None:  # seq(map(int64, float)) -> dense
                out.append((s["name"], "FP32", [-1, -1]))
            else:
                out.append((s["name"], s["datatype"], list(s["shape"])))
        return out

    return conv(sig["inputs"]), conv(sig["outputs"])


def assert_tensor(actual, expected: Tensor, exact: bool = False):
    name = expected.name
    assert actual is not None, f"output {name!r} missing from the response"
    exp = expected.array
    assert list(actual.shape) == list(exp.shape), f"{name}: shape {actual.shape} != {exp.shape}"
    dt = expected.datatype
    if dt == "BYTES":
        # Binary outputs decode to bytes, JSON outputs to str.
        got = [x if isinstance(x, bytes) else str(x).encode("utf-8") for x in actual.ravel()]
        assert got == list(exp.ravel()), f"{name}: BYTES differ"
        return
    assert actual.dtype == exp.dtype, f"{name}: dtype {actual.dtype} != {exp.dtype}"
    if dt in FLOAT_BITS and exact:
        bits = FLOAT_BITS[dt]
        a = np.ascontiguousarray(actual).view(bits)
        e = np.ascontiguousarray(exp).view(bits)
        bad = np.flatnonzero(a.ravel() != e.ravel())
        assert bad.size == 0, (
            f"{name}: {bad.size} elements differ bitwise, first at flat index {bad[0]}: "
            f"got {actual.ravel()[bad[0]]!r}, want {exp.ravel()[bad[0]]!r}")
    elif dt in FLOAT_BITS:
        np.testing.assert_allclose(actual, exp, rtol=RTOL, atol=ATOL, err_msg=name)
    else:
        np.testing.assert_array_equal(actual, exp, err_msg=name)


def assert_outputs(result, g: Golden, exact: bool | None = None):
    if exact is None:
        exact = g.model == "dtypes"
    for out in g.outputs:
        assert_tensor(result.as_numpy(out.name), out, exact=exact)


# ------------------------------------------------------------------ clients


def http_inputs(tensors, binary=True):
    out = []
    for t in tensors:
        i = httpclient.InferInput(t.name, list(t.array.shape), t.datatype)
        i.set_data_from_numpy(t.array, binary_data=binary)
        out.append(i)
    return out


def grpc_inputs(tensors):
    out = []
    for t in tensors:
        i = grpcclient.InferInput(t.name, list(t.array.shape), t.datatype)
        i.set_data_from_numpy(t.array)
        out.append(i)
    return out


def http_outputs(g: Golden, binary=True):
    return [httpclient.InferRequestedOutput(t.name, binary_data=binary) for t in g.outputs]


def grpc_outputs(g: Golden):
    return [grpcclient.InferRequestedOutput(t.name) for t in g.outputs]


@pytest.fixture(scope="module")
def http(server):
    c = httpclient.InferenceServerClient(server.http_url, network_timeout=30.0)
    yield c
    c.close()


@pytest.fixture(scope="module")
def grpc(server):
    c = grpcclient.InferenceServerClient(server.grpc_url)
    yield c
    c.close()


def infer_via(proto, server, model, tensors, version="", outputs=None):
    """One inference through tritonclient over `proto` ('http' or 'grpc')."""
    if proto == "http":
        c = httpclient.InferenceServerClient(server.http_url, network_timeout=30.0)
        try:
            outs = [httpclient.InferRequestedOutput(n) for n in outputs] if outputs else None
            return c.infer(model, http_inputs(tensors), model_version=version, outputs=outs)
        finally:
            c.close()
    c = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        outs = [grpcclient.InferRequestedOutput(n) for n in outputs] if outputs else None
        return c.infer(model, grpc_inputs(tensors), model_version=version, outputs=outs)
    finally:
        c.close()


def expect_error(proto, kind, fn, *args, **kwargs) -> str:
    """Call fn, expect an InferenceServerException with the status of `kind`."""
    with pytest.raises(InferenceServerException) as exc:
        fn(*args, **kwargs)
    e = exc.value
    want = (HTTP_CODES if proto == "http" else GRPC_CODES)[kind]
    assert e.status() == want, f"status {e.status()!r}, want {want!r}; message: {e.message()!r}"
    return e.message() or ""


# ------------------------------------------------------------------ raw HTTP


def http_request(base, method, path, body=None, headers=None, timeout=30):
    req = urllib.request.Request(base + path, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def json_infer_body(tensors) -> bytes:
    inputs = []
    for t in tensors:
        data = t.array.ravel().tolist()
        if t.datatype == "BYTES":
            data = [x.decode("utf-8") for x in data]
        inputs.append({"name": t.name, "datatype": t.datatype, "shape": list(t.array.shape), "data": data})
    return json.dumps({"inputs": inputs}).encode()


def metric_value(text: str, name: str, **labels) -> float | None:
    """The sample `name{...}` whose labels include `labels`, or None."""
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$", line)
        if not m or m.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        if all(got.get(k) == v for k, v in labels.items()):
            return float(m.group(3))
    return None


def get_metrics(server) -> str:
    status, headers, body = http_request(server.base_url, "GET", "/metrics")
    assert status == 200
    return body.decode()


# ================================================================== HTTP client


def test_http_health(http):
    assert http.is_server_live()
    assert http.is_server_ready()


def test_http_server_metadata(http):
    md = http.get_server_metadata()
    assert md["name"] == "greenbelt"
    assert isinstance(md["version"], str) and md["version"]
    assert "binary_tensor_data" in md["extensions"]
    assert "model_repository" in md["extensions"]


def expected_platform(model):
    """backend = auto: the native engine runs the tabular fixture graphs;
    multi_io (Greater) and the MLP (MatMul layers) go to ONNX Runtime."""
    return "onnxruntime_onnx" if model in ("multi_io", "mlp") else "greenbelt_native_onnx"


@pytest.mark.parametrize("model", ALL_MODELS)
def test_http_model_metadata(http, model):
    md = http.get_model_metadata(model)
    assert md["name"] == model
    assert md["platform"] == expected_platform(model), "native engine for tabular graphs, else ONNX Runtime (ORT_DYLIB_PATH)"
    assert md["versions"] == (["1", "2"] if model == "logreg" else ["1"])
    inputs, outputs = expected_signature(model)
    assert [(t["name"], t["datatype"], t["shape"]) for t in md["inputs"]] == inputs
    assert [(t["name"], t["datatype"], t["shape"]) for t in md["outputs"]] == outputs


def test_http_model_metadata_per_version(http):
    for v in ("1", "2"):
        md = http.get_model_metadata("logreg", model_version=v)
        assert md["name"] == "logreg"
        assert md["versions"] == [v]


def test_http_model_ready(http):
    assert http.is_model_ready("logreg")
    assert http.is_model_ready("logreg", "1")
    assert http.is_model_ready("logreg", "2")
    assert not http.is_model_ready("logreg", "3")
    assert not http.is_model_ready("no_such_model")


@pytest.mark.parametrize("model,version", GOLDEN_MODELS)
def test_http_golden_binary(http, model, version):
    """Every fixture model, tritonclient defaults: binary inputs and outputs."""
    g = golden(model, version)
    r = http.infer(model, http_inputs(g.inputs), model_version=version, outputs=http_outputs(g))
    assert r.get_response()["model_name"] == model
    assert r.get_response()["model_version"] == version
    assert_outputs(r, g)


def test_http_logreg_binary_unversioned_is_newest(http):
    g = golden("logreg", "2")
    r = http.infer("logreg", http_inputs(g.inputs), outputs=http_outputs(g))
    resp = r.get_response()
    assert resp["model_version"] == "2"
    for out in resp["outputs"]:
        assert "binary_data_size" in out.get("parameters", {}), out
    assert_outputs(r, g)


def test_http_logreg_json_inputs_and_outputs(http):
    g = golden("logreg", "2")
    r = http.infer("logreg", http_inputs(g.inputs, binary=False), outputs=http_outputs(g, binary=False))
    resp = r.get_response()
    assert [o["name"] for o in resp["outputs"]] == ["label", "probabilities"]
    for out in resp["outputs"]:
        assert "data" in out and "binary_data_size" not in (out.get("parameters") or {}), out
    assert_outputs(r, g)


@pytest.mark.parametrize("binary_inputs", [True, False], ids=["binary-in", "json-in"])
def test_http_logreg_outputs_none(http, binary_inputs):
    g = golden("logreg", "2")
    r = http.infer("logreg", http_inputs(g.inputs, binary=binary_inputs), outputs=None)
    names = [o["name"] for o in r.get_response()["outputs"]]
    assert sorted(names) == ["label", "probabilities"]
    assert_outputs(r, g)


def test_http_logreg_mixed_output_encodings(http):
    g = golden("logreg", "1")
    outs = [httpclient.InferRequestedOutput("probabilities", binary_data=True),
            httpclient.InferRequestedOutput("label", binary_data=False)]
    r = http.infer("logreg", http_inputs(g.inputs), model_version="1", outputs=outs)
    resp = {o["name"]: o for o in r.get_response()["outputs"]}
    assert "data" in resp["label"]
    assert resp["probabilities"]["parameters"]["binary_data_size"] == 8 * 2 * 4
    assert_outputs(r, g)


def test_http_single_output_requested(http):
    g = golden("logreg", "1")
    r = http.infer("logreg", http_inputs(g.inputs), model_version="1",
                   outputs=[httpclient.InferRequestedOutput("label")])
    assert [o["name"] for o in r.get_response()["outputs"]] == ["label"]
    assert_tensor(r.as_numpy("label"), g.outputs[0])


@pytest.mark.parametrize("version", ["1", "2"])
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_http_explicit_versions(http, version, binary):
    g1, g2 = golden("logreg", "1"), golden("logreg", "2")
    # The two versions really differ on this batch, so answering with the wrong
    # version cannot pass.
    assert not np.array_equal(g1.outputs[0].array, g2.outputs[0].array)
    g = golden("logreg", version)
    r = http.infer("logreg", http_inputs(g.inputs, binary=binary), model_version=version,
                   outputs=http_outputs(g, binary=binary))
    assert r.get_response()["model_version"] == version
    assert_outputs(r, g)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_http_multi_io_all_outputs(http, binary):
    g = golden("multi_io")
    assert [t.name for t in g.outputs] == ["sum", "prod", "count", "greater", "sum_f64"]
    r = http.infer("multi_io", http_inputs(g.inputs, binary=binary), outputs=http_outputs(g, binary=binary))
    resp = r.get_response()
    assert [(o["name"], o["datatype"], o["shape"]) for o in resp["outputs"]] == [
        (t.name, t.datatype, list(t.array.shape)) for t in g.outputs]
    assert_outputs(r, g)


@pytest.mark.parametrize("binary_out", [True, False], ids=["binary-out", "json-out"])
@pytest.mark.parametrize("binary_in", [True, False], ids=["binary-in", "json-in"])
def test_http_dtypes_round_trip(http, binary_in, binary_out):
    """All 13 V2 datatypes, incl. FP16, UINT64 max, INT64 min, subnormals, -0.0
    and UTF-8 strings, come back bit-exact."""
    g = golden("dtypes")
    u64 = g.input("in_uint64").array
    i64 = g.input("in_int64").array
    assert u64.max() == np.iinfo(np.uint64).max and i64.min() == np.iinfo(np.int64).min
    assert {t.datatype for t in g.inputs} == set(NP_DTYPES)
    r = http.infer("dtypes", http_inputs(g.inputs, binary=binary_in), outputs=http_outputs(g, binary=binary_out))
    got = {o["name"]: o["datatype"] for o in r.get_response()["outputs"]}
    assert got == {t.name: t.datatype for t in g.outputs}
    assert_outputs(r, g, exact=True)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_http_zipmap_dense_output(http, binary):
    g = golden("logreg_zipmap")
    r = http.infer("logreg_zipmap", http_inputs(g.inputs), outputs=http_outputs(g, binary=binary))
    out = {o["name"]: o for o in r.get_response()["outputs"]}
    assert out["output_probability"]["datatype"] == "FP32"
    assert out["output_probability"]["shape"] == [8, 2]
    assert_outputs(r, g)
    # Columns are in ascending class-label order, matching the raw ZipMap maps.
    raw = json.loads((GOLDEN_DIR / "logreg_zipmap_v1.json").read_text())["raw_zipmap"]
    dense = np.array([[row[k] for k in sorted(row, key=int)] for row in raw], dtype=np.float32)
    np.testing.assert_allclose(r.as_numpy("output_probability"), dense, rtol=RTOL, atol=ATOL)


# ================================================================== gRPC client


def test_grpc_health(grpc):
    assert grpc.is_server_live()
    assert grpc.is_server_ready()


def test_grpc_server_metadata(grpc):
    md = grpc.get_server_metadata()
    assert md.name == "greenbelt"
    assert md.version
    assert "model_repository" in md.extensions


@pytest.mark.parametrize("model", ALL_MODELS)
def test_grpc_model_metadata(grpc, model):
    md = grpc.get_model_metadata(model)
    assert md.name == model
    assert md.platform == expected_platform(model)
    assert list(md.versions) == (["1", "2"] if model == "logreg" else ["1"])
    inputs, outputs = expected_signature(model)
    assert [(t.name, t.datatype, list(t.shape)) for t in md.inputs] == inputs
    assert [(t.name, t.datatype, list(t.shape)) for t in md.outputs] == outputs


def test_grpc_model_metadata_per_version(grpc):
    for v in ("1", "2"):
        md = grpc.get_model_metadata("logreg", model_version=v)
        assert list(md.versions) == [v]


def test_grpc_model_ready(grpc):
    assert grpc.is_model_ready("logreg")
    assert grpc.is_model_ready("logreg", "1")
    assert grpc.is_model_ready("logreg", "2")


@pytest.mark.parametrize("model,version", GOLDEN_MODELS)
def test_grpc_golden(grpc, model, version):
    """Every fixture model over gRPC (raw contents), incl. all 13 dtypes bit-exact."""
    g = golden(model, version)
    r = grpc.infer(model, grpc_inputs(g.inputs), model_version=version, outputs=grpc_outputs(g))
    resp = r.get_response()
    assert resp.model_name == model
    assert resp.model_version == version
    assert [(o.name, o.datatype, list(o.shape)) for o in resp.outputs] == [
        (t.name, t.datatype, list(t.array.shape)) for t in g.outputs]
    assert_outputs(r, g)


def test_grpc_unversioned_and_outputs_none(grpc):
    g = golden("logreg", "2")
    r = grpc.infer("logreg", grpc_inputs(g.inputs))
    assert r.get_response().model_version == "2"
    assert sorted(o.name for o in r.get_response().outputs) == ["label", "probabilities"]
    assert_outputs(r, g)


def test_grpc_explicit_versions(grpc):
    for v in ("1", "2"):
        g = golden("logreg", v)
        r = grpc.infer("logreg", grpc_inputs(g.inputs), model_version=v, outputs=grpc_outputs(g))
        assert r.get_response().model_version == v
        assert_outputs(r, g)


def test_grpc_request_id_round_trips(grpc):
    g = golden("logreg", "1")
    r = grpc.infer("logreg", grpc_inputs(g.inputs), model_version="1", request_id="req-42")
    assert r.get_response().id == "req-42"


def test_http_request_id_round_trips(http):
    g = golden("logreg", "1")
    r = http.infer("logreg", http_inputs(g.inputs), model_version="1", request_id="req-42")
    assert r.get_response()["id"] == "req-42"


# ================================================================== errors


PROTOS = ["http", "grpc"]


@pytest.mark.parametrize("proto", PROTOS)
def test_error_unknown_model(server, proto):
    g = golden("logreg", "1")
    msg = expect_error(proto, "not_found", infer_via, proto, server, "no_such_model", g.inputs)
    assert "no_such_model" in msg


@pytest.mark.parametrize("proto", PROTOS)
def test_error_unknown_model_metadata(http, grpc, proto):
    client = http if proto == "http" else grpc
    msg = expect_error(proto, "not_found", client.get_model_metadata, "no_such_model")
    assert "no_such_model" in msg


@pytest.mark.parametrize("version", ["3", "0", "abc"])
@pytest.mark.parametrize("proto", PROTOS)
def test_error_unknown_version(server, proto, version):
    g = golden("logreg", "1")
    msg = expect_error(proto, "not_found", infer_via, proto, server, "logreg", g.inputs, version=version)
    assert "logreg" in msg


@pytest.mark.parametrize("proto", PROTOS)
def test_error_unknown_version_metadata(http, grpc, proto):
    client = http if proto == "http" else grpc
    expect_error(proto, "not_found", client.get_model_metadata, "logreg", model_version="9")


@pytest.mark.parametrize("proto", PROTOS)
def test_error_wrong_input_name(server, proto):
    x = golden("logreg", "1").inputs[0].array
    msg = expect_error(proto, "bad", infer_via, proto, server, "logreg",
                       [Tensor("wrong_name", "FP32", x)], version="1")
    assert "wrong_name" in msg


@pytest.mark.parametrize("proto", PROTOS)
def test_error_wrong_datatype(server, proto):
    x = golden("logreg", "1").inputs[0].array.astype(np.float64)
    msg = expect_error(proto, "bad", infer_via, proto, server, "logreg",
                       [Tensor("input", "FP64", x)], version="1")
    assert '"input"' in msg and "FP64" in msg and "FP32" in msg


@pytest.mark.parametrize("proto", PROTOS)
def test_error_wrong_shape(server, proto):
    x = golden("logreg", "1").inputs[0].array[:, :19].copy()
    msg = expect_error(proto, "bad", infer_via, proto, server, "logreg",
                       [Tensor("input", "FP32", x)], version="1")
    assert '"input"' in msg and "19" in msg


@pytest.mark.parametrize("proto", PROTOS)
def test_error_wrong_rank(server, proto):
    x = golden("logreg", "1").inputs[0].array.reshape(-1)
    msg = expect_error(proto, "bad", infer_via, proto, server, "logreg",
                       [Tensor("input", "FP32", x)], version="1")
    assert '"input"' in msg


@pytest.mark.parametrize("proto", PROTOS)
def test_error_missing_input(server, proto):
    g = golden("multi_io")
    msg = expect_error(proto, "bad", infer_via, proto, server, "multi_io", g.inputs[:2])
    assert '"c"' in msg


@pytest.mark.parametrize("proto", PROTOS)
def test_error_unknown_output(server, proto):
    g = golden("logreg", "1")
    msg = expect_error(proto, "bad", infer_via, proto, server, "logreg", g.inputs,
                       version="1", outputs=["no_such_output"])
    assert "no_such_output" in msg


# ================================================================== repository extension


def test_repository_index(http):
    index = http.get_model_repository_index()
    rows = {(e["name"], e.get("version")): e["state"] for e in index}
    for model, version in GOLDEN_MODELS:
        assert rows.get((model, version)) == "READY", index


def test_repository_unload_then_load(http):
    g = golden("mlp")
    assert http.is_model_ready("mlp")
    http.unload_model("mlp")
    try:
        assert not http.is_model_ready("mlp")
        msg = expect_error("http", "not_found", http.infer, "mlp", http_inputs(g.inputs))
        assert "mlp" in msg
        states = {e["name"]: e["state"] for e in http.get_model_repository_index()}
        assert states["mlp"] == "UNAVAILABLE"
        # Other models are untouched.
        r = http.infer("logreg", http_inputs(golden("logreg", "2").inputs))
        assert_outputs(r, golden("logreg", "2"))
    finally:
        http.load_model("mlp")
    assert http.is_model_ready("mlp")
    r = http.infer("mlp", http_inputs(g.inputs), outputs=http_outputs(g))
    assert_outputs(r, g)


def test_repository_load_corrupt_version_keeps_serving(make_repo, start_server):
    repo = make_repo(models=["logreg"])  # default policy: latest 1 -> serves version 2
    srv = start_server(repo, grpc=False)
    c = httpclient.InferenceServerClient(srv.http_url, network_timeout=30.0)
    try:
        g2 = golden("logreg", "2")
        r = c.infer("logreg", http_inputs(g2.inputs), outputs=http_outputs(g2))
        assert r.get_response()["model_version"] == "2"

        (repo / "logreg" / "3").mkdir()
        (repo / "logreg" / "3" / "model.onnx").write_bytes(b"this is not an ONNX model \x00\xff" * 64)
        with pytest.raises(InferenceServerException) as exc:
            c.load_model("logreg")
        e = exc.value
        assert e.status() is not None and e.status().startswith(("4", "5")), e.status()
        assert "logreg" in (e.message() or "") and "3" in (e.message() or ""), e.message()

        # Version 2 keeps serving, and is still what an unversioned request gets.
        assert c.is_model_ready("logreg")
        assert c.is_model_ready("logreg", "2")
        assert not c.is_model_ready("logreg", "3")
        r = c.infer("logreg", http_inputs(g2.inputs), outputs=http_outputs(g2))
        assert r.get_response()["model_version"] == "2"
        assert_outputs(r, g2)
        expect_error("http", "not_found", c.infer, "logreg", http_inputs(g2.inputs), model_version="3")

        # Once the bad version is gone, a load succeeds again.
        shutil.rmtree(repo / "logreg" / "3")
        c.load_model("logreg")
        r = c.infer("logreg", http_inputs(g2.inputs), outputs=http_outputs(g2))
        assert r.get_response()["model_version"] == "2"
        assert_outputs(r, g2)
    finally:
        c.close()


def test_model_control_is_off_by_default_and_needs_a_token_when_on(make_repo, start_server, tmp_path):
    repo = make_repo(models=["logreg"])
    # Off (Triton's --model-control-mode=none): refused, whoever asks.
    srv = start_server(repo, grpc=True, env={"GREENBELT__AUTH__MODEL_CONTROL": "none"})
    c = httpclient.InferenceServerClient(srv.http_url, network_timeout=30.0)
    g = grpcclient.InferenceServerClient(srv.grpc_url)
    try:
        for client in (c, g):
            with pytest.raises(InferenceServerException) as exc:
                client.unload_model("logreg")
            assert "model_control" in (exc.value.message() or ""), exc.value.message()
        assert c.is_model_ready("logreg")
    finally:
        c.close()
        g.close()
    # On, with tokens: a deployer token may, no token may not.
    tokens = tmp_path / "tokens.toml"
    tokens.write_text('[[tokens]]\nname = "ci"\nrole = "deployer"\ntoken = "tok-ci"\n')
    srv = start_server(repo, grpc=True, env={"GREENBELT__AUTH__TOKENS_FILE": str(tokens)})
    c = httpclient.InferenceServerClient(srv.http_url, network_timeout=30.0)
    g = grpcclient.InferenceServerClient(srv.grpc_url)
    try:
        for client in (c, g):
            with pytest.raises(InferenceServerException) as exc:
                client.unload_model("logreg")
            assert "Bearer" in (exc.value.message() or ""), exc.value.message()
        assert c.is_model_ready("logreg")
        g.unload_model("logreg", headers={"authorization": "Bearer tok-ci"})
        assert not c.is_model_ready("logreg")
        c.load_model("logreg", headers={"Authorization": "Bearer tok-ci"})
        assert c.is_model_ready("logreg")
        # Inference stays open to every client.
        g2 = golden("logreg", "2")
        r = c.infer("logreg", http_inputs(g2.inputs), outputs=http_outputs(g2))
        assert_outputs(r, g2)
    finally:
        c.close()
        g.close()


def test_repository_load_corrupt_new_model_fails(make_repo, start_server):
    repo = make_repo(models=["logreg"])
    srv = start_server(repo, grpc=False)
    c = httpclient.InferenceServerClient(srv.http_url, network_timeout=30.0)
    try:
        (repo / "broken" / "1").mkdir(parents=True)
        (repo / "broken" / "1" / "model.onnx").write_bytes(b"\x00garbage" * 100)
        with pytest.raises(InferenceServerException) as exc:
            c.load_model("broken")
        assert "broken" in (exc.value.message() or "")
        assert not c.is_model_ready("broken")
        states = {e["name"]: e for e in c.get_model_repository_index()}
        assert states["broken"]["state"] == "UNAVAILABLE"
        assert states["broken"]["reason"], states["broken"]
        assert c.is_model_ready("logreg")
    finally:
        c.close()


# ================================================================== raw HTTP


SMALL_LIMIT = 4096


@pytest.mark.parametrize("how", ["config-file", "env"])
def test_body_too_large_413(make_repo, start_server, how):
    repo = make_repo(models=["logreg"])
    if how == "config-file":
        srv = start_server(repo, config_text=f"[server]\nmax_request_bytes = {SMALL_LIMIT}\n")
    else:
        srv = start_server(repo, env={"GREENBELT__SERVER__MAX_REQUEST_BYTES": str(SMALL_LIMIT)})
    x = golden("logreg", "2").inputs[0]
    small = json_infer_body([Tensor("input", "FP32", x.array[:1])])
    assert len(small) < SMALL_LIMIT
    status, _, body = http_request(srv.base_url, "POST", "/v2/models/logreg/infer", small,
                                   {"Content-Type": "application/json"})
    assert status == 200, body

    big_rows = np.tile(x.array, (8, 1))  # 64 rows, ~25 KB of JSON
    big = json_infer_body([Tensor("input", "FP32", big_rows)])
    assert len(big) > SMALL_LIMIT
    status, headers, body = http_request(srv.base_url, "POST", "/v2/models/logreg/infer", big,
                                         {"Content-Type": "application/json"})
    assert status == 413, body
    assert headers.get_content_type() == "application/json"
    err = json.loads(body)["error"]
    assert str(SMALL_LIMIT) in err, err

    # The same limit through tritonclient (binary tensors).
    c = httpclient.InferenceServerClient(srv.http_url, network_timeout=30.0)
    try:
        msg = expect_error("http", "too_large", c.infer, "logreg",
                           http_inputs([Tensor("input", "FP32", big_rows)]))
        assert str(SMALL_LIMIT) in msg
    finally:
        c.close()


def test_grpc_message_too_large(make_repo, start_server):
    """[server] max_request_bytes also bounds gRPC messages; the server maps a
    too-large payload to RESOURCE_EXHAUSTED (ServeError::PayloadTooLarge), which
    is also what gRPC itself uses for an over-limit message."""
    repo = make_repo(models=["logreg"])
    srv = start_server(repo, config_text=f"[server]\nmax_request_bytes = {SMALL_LIMIT}\n")
    x = golden("logreg", "2").inputs[0].array
    g = grpcclient.InferenceServerClient(srv.grpc_url)
    try:
        r = g.infer("logreg", grpc_inputs([Tensor("input", "FP32", x[:1])]))
        assert r.as_numpy("label").tolist() == golden("logreg", "2").outputs[0].array[:1].tolist()
        expect_error("grpc", "too_large", g.infer, "logreg",
                     grpc_inputs([Tensor("input", "FP32", np.tile(x, (8, 1)))]))
    finally:
        g.close()


@pytest.mark.parametrize("body", [
    b'{"inputs": [',
    b"not json at all",
    b'{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 20], "data": "nope"}]}',
    b'{"inputs": [{"name": "input", "datatype": "FLOAT", "shape": [1, 20], "data": [0]}]}',
], ids=["truncated", "not-json", "data-not-array", "bad-datatype"])
def test_malformed_json_400(server, body):
    status, headers, resp = http_request(server.base_url, "POST", "/v2/models/logreg/infer", body,
                                         {"Content-Type": "application/json"})
    assert status == 400, resp
    assert headers.get_content_type() == "application/json"
    assert isinstance(json.loads(resp)["error"], str) and json.loads(resp)["error"]


def test_traceparent_echoed(server):
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    parent = "00f067aa0ba902b7"
    body = json_infer_body(golden("logreg", "2").inputs)
    status, headers, resp = http_request(server.base_url, "POST", "/v2/models/logreg/infer", body, {
        "Content-Type": "application/json", "traceparent": f"00-{trace_id}-{parent}-01"})
    assert status == 200, resp
    tp = headers.get("traceparent")
    assert tp is not None
    m = re.fullmatch(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})", tp)
    assert m, tp
    assert m.group(1) == trace_id
    assert m.group(3) == "01"


def test_request_id_echoed(server):
    body = json_infer_body(golden("logreg", "2").inputs)
    status, headers, resp = http_request(server.base_url, "POST", "/v2/models/logreg/infer", body, {
        "Content-Type": "application/json", "x-request-id": "my-request-123"})
    assert status == 200, resp
    assert headers.get("x-request-id") == "my-request-123"
    # Echoed on errors too.
    status, headers, _ = http_request(server.base_url, "POST", "/v2/models/logreg/infer", b"{",
                                      {"x-request-id": "bad-request-7"})
    assert status == 400
    assert headers.get("x-request-id") == "bad-request-7"


def request_log_lines(srv, want: int, timeout: float = 10.0) -> list[dict]:
    """The server's `greenbelt::request` lines, once there are `want` of them
    (the writer thread writes them just after the answers)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = [r for r in srv.log_records() if r.get("target") == "greenbelt::request"]
        if len(lines) >= want or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


def test_request_log_lines_and_sampling(make_repo, start_server):
    """The request log through the real binary: one JSON line per request with
    its fields, failures always, successes sampled by trace id (the rule of
    OpenTelemetry's ratio sampler), and the lines counted in /metrics."""
    srv = start_server(make_repo(models=["logreg"]), config_text="[telemetry]\nlog_sample = 0.5\n")
    body = json_infer_body(golden("logreg", "1").inputs)
    hdr = {"Content-Type": "application/json"}
    # Low 64 bits of the trace id 0 (under the ratio: logged), then all ones (over it: not logged).
    kept = "00-" + "ab" * 8 + "0" * 16 + "-00f067aa0ba902b7-01"
    skipped = "00-" + "ab" * 8 + "f" * 16 + "-00f067aa0ba902b7-01"
    for rid, tp in (("kept-1", kept), ("skipped-1", skipped)):
        status, _, resp = http_request(srv.base_url, "POST", "/v2/models/logreg/infer", body,
                                       {**hdr, "x-request-id": rid, "traceparent": tp})
        assert status == 200, resp
    # A failure is logged whatever its trace id.
    status, _, _ = http_request(srv.base_url, "POST", "/v2/models/logreg/infer", b"{",
                                {**hdr, "x-request-id": "bad-\"1\"", "traceparent": skipped})
    assert status == 400
    lines = request_log_lines(srv, 2)
    by_id = {r["request_id"]: r for r in lines}
    assert set(by_id) == {"kept-1", 'bad-"1"'}, lines
    ok = by_id["kept-1"]
    assert ok["trace_id"] == "ab" * 8 + "0" * 16
    assert (ok["protocol"], ok["model"], ok["outcome"]) == ("rest", "logreg", "success")
    assert ok["version"] in ("1", "2") and ok["track"] == "stable"
    assert ok["level"] == "INFO" and ok["message"] == "infer"
    rows = golden("logreg", "1").inputs[0].array.shape[0]
    assert ok["rows"] == rows and ok["request_bytes"] == rows * 20 * 4 and ok["latency_ms"] > 0
    bad = by_id['bad-"1"']
    assert (bad["outcome"], bad["status"]) == ("client_error", 400)
    assert bad["error"]
    text = get_metrics(srv)
    assert metric_value(text, "greenbelt_request_log_lines_total") == 2
    assert metric_value(text, "greenbelt_request_log_dropped_total") == 0


def test_request_log_off(make_repo, start_server):
    srv = start_server(make_repo(models=["logreg"]), config_text="[telemetry]\nlog_requests = false\n")
    body = json_infer_body(golden("logreg", "1").inputs)
    status, _, _ = http_request(srv.base_url, "POST", "/v2/models/logreg/infer", body,
                                {"Content-Type": "application/json"})
    assert status == 200
    time.sleep(0.3)
    assert request_log_lines(srv, 1, timeout=0.5) == []
    assert metric_value(get_metrics(srv), "greenbelt_request_log_lines_total") == 0


@pytest.mark.parametrize("path,version", [
    ("/v2/models/logreg/infer", "2"),
    ("/v2/models/logreg/versions/1/infer", "1"),
    ("/v2/models/logreg/versions/2/infer", "2"),
])
def test_model_version_header(server, path, version):
    g = golden("logreg", version)
    status, headers, resp = http_request(server.base_url, "POST", path, json_infer_body(g.inputs),
                                         {"Content-Type": "application/json"})
    assert status == 200, resp
    assert headers.get("x-greenbelt-model-version") == version
    out = {o["name"]: o for o in json.loads(resp)["outputs"]}
    assert out["label"]["data"] == g.outputs[0].array.tolist()


def test_metrics(server, http, grpc):
    labels = dict(model="logreg", version="2", outcome="success")
    before = get_metrics(server)
    rest0 = metric_value(before, "greenbelt_requests_total", protocol="rest", **labels) or 0.0
    grpc0 = metric_value(before, "greenbelt_requests_total", protocol="grpc", **labels) or 0.0
    g = golden("logreg", "2")
    http.infer("logreg", http_inputs(g.inputs))
    grpc.infer("logreg", grpc_inputs(g.inputs))
    after = get_metrics(server)
    assert metric_value(after, "greenbelt_requests_total", protocol="rest", **labels) == rest0 + 1
    assert metric_value(after, "greenbelt_requests_total", protocol="grpc", **labels) == grpc0 + 1
    assert metric_value(after, "greenbelt_requests_total", model="logreg") is not None
    count = metric_value(after, "greenbelt_request_duration_seconds_count", model="logreg", version="2")
    assert count is not None and count >= 2
    assert metric_value(after, "greenbelt_request_duration_seconds_bucket",
                        model="logreg", version="2", le="+Inf") == count
    assert metric_value(after, "greenbelt_model_ready", model="logreg", version="1") == 1


# ================================================================== graceful drain


DRAIN_TIMEOUT_MS = 15_000
QUEUE_DELAY_S = 3.0
N_REST = 12
N_GRPC = 4


def test_graceful_drain(make_repo, start_server):
    """SIGTERM while requests sit in the batcher: every request already received
    is answered with success, then the process exits 0 well within the drain
    timeout. The batcher's long queue delay keeps the requests in flight."""
    repo = make_repo(models=["logreg"], configs={"logreg": (
        "[batching]\n"
        "max_batch_size = 64\n"
        f"max_queue_delay_us = {int(QUEUE_DELAY_S * 1e6)}\n")})
    srv = start_server(repo, config_text=f"[server]\ndrain_timeout_ms = {DRAIN_TIMEOUT_MS}\n")
    g = golden("logreg", "2")
    cases = [g.rows(i % 8, i % 8 + 1 + i % 3) for i in range(N_REST + N_GRPC)]

    rest_results: list = [None] * N_REST

    def rest_call(i):
        try:
            rest_results[i] = http_request(
                srv.base_url, "POST", "/v2/models/logreg/infer", json_infer_body(cases[i].inputs),
                {"Content-Type": "application/json", "Connection": "close"}, timeout=30)
        except Exception as e:  # connection reset / refused: a drain failure
            rest_results[i] = e

    grpc_client = grpcclient.InferenceServerClient(srv.grpc_url)
    grpc_results: list = [None] * N_GRPC
    grpc_done = threading.Event()
    lock = threading.Lock()
    pending = [N_GRPC]

    def grpc_callback(i, result, error):
        grpc_results[i] = error if error is not None else result
        with lock:
            pending[0] -= 1
            if pending[0] == 0:
                grpc_done.set()

    try:
        threads = [threading.Thread(target=rest_call, args=(i,), daemon=True) for i in range(N_REST)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for j in range(N_GRPC):
            c = cases[N_REST + j]
            grpc_client.async_infer("logreg", grpc_inputs(c.inputs),
                                    lambda result, error, j=j: grpc_callback(j, result, error),
                                    outputs=grpc_outputs(c))

        # Wait until the server holds every request (all queued in the batcher).
        total = N_REST + N_GRPC
        inflight = None
        while time.monotonic() - t0 < QUEUE_DELAY_S * 0.75:
            inflight = metric_value(get_metrics(srv), "greenbelt_inflight_requests", model="logreg")
            if inflight == total:
                break
            time.sleep(0.02)
        assert inflight == total, (
            f"only {inflight} of {total} requests reached the server within "
            f"{QUEUE_DELAY_S * 0.75:.1f} s; cannot test the drain")

        srv.terminate()
        t_term = time.monotonic()
        try:
            rc = srv.wait(timeout=DRAIN_TIMEOUT_MS / 1000 + 10)
        except Exception:
            rc = None
        exit_after = time.monotonic() - t_term
        for t in threads:
            t.join(timeout=15)
        assert grpc_done.wait(timeout=15), "gRPC callbacks did not all arrive"
    finally:
        grpc_client.close()

    failures = []
    for i, res in enumerate(rest_results):
        if not (isinstance(res, tuple) and res[0] == 200):
            failures.append(f"REST #{i}: {res!r}")
            continue
        out = {o["name"]: o for o in json.loads(res[2])["outputs"]}
        exp = cases[i].outputs
        assert out["label"]["data"] == exp[0].array.tolist()
        np.testing.assert_allclose(np.array(out["probabilities"]["data"], dtype=np.float32),
                                   exp[1].array.ravel(), rtol=RTOL, atol=ATOL)
    for j, res in enumerate(grpc_results):
        if isinstance(res, InferenceServerException) or res is None:
            failures.append(f"gRPC #{j}: {res!r}")
            continue
        assert_outputs(res, cases[N_REST + j])
    assert not failures, "requests in flight at SIGTERM failed:\n" + "\n".join(failures)

    assert rc == 0, f"exit code {rc} after SIGTERM"
    assert exit_after < DRAIN_TIMEOUT_MS / 1000, f"exited {exit_after:.1f} s after SIGTERM"
    assert not any("drain timed out" in str(r.get("message")) for r in srv.log_records()), srv.log_tail()


# ------------------------------------------------------------------ statistics and config


def test_statistics_extension_over_http_and_grpc(make_repo, start_server):
    """Triton's statistics extension, read by tritonclient over both
    protocols: per-version success/fail counts and times, inference vs
    execution counts (a dynamic batch executes once), per-batch-size table."""
    repo = make_repo(models=["logreg"], configs={"logreg": (
        "[batching]\nmax_batch_size = 64\nmax_queue_delay_us = 200000\n")})
    srv = start_server(repo)
    g = golden("logreg", "2")
    # 4 requests of 2 rows each, sent together: the batcher merges them.
    threads = [threading.Thread(target=infer_via, args=("http", srv, "logreg", g.rows(0, 2).inputs))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    # One failure: wrong shape.
    status, _, _ = http_request(srv.base_url, "POST", "/v2/models/logreg/infer",
                                json.dumps({"inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP32",
                                                        "data": [1, 2, 3]}]}).encode(),
                                {"Content-Type": "application/json"})
    assert status == 400
    h = httpclient.InferenceServerClient(srv.http_url)
    gc = grpcclient.InferenceServerClient(srv.grpc_url)
    try:
        hs = h.get_inference_statistics("logreg")["model_stats"]
        gs = gc.get_inference_statistics("logreg", as_json=True)["model_stats"]
        every = h.get_inference_statistics()["model_stats"]
        one = gc.get_inference_statistics("logreg", "2", as_json=True)["model_stats"]
        with pytest.raises(InferenceServerException):
            h.get_inference_statistics("nope")
        with pytest.raises(InferenceServerException):
            gc.get_inference_statistics("nope")
    finally:
        h.close()
        gc.close()
    assert [s["version"] for s in hs] == ["2"] and [s["name"] for s in every] == ["logreg"]
    s = hs[0]
    st = s["inference_stats"]
    assert st["success"]["count"] == 4 and st["success"]["ns"] > 0
    assert st["fail"]["count"] == 1
    assert st["queue"]["count"] == 4 and st["compute_infer"]["count"] == 4
    assert s["inference_count"] == 8
    assert 1 <= s["execution_count"] < 4, s  # batched: fewer runtime calls than requests
    assert sum(b["compute_infer"]["count"] for b in s["batch_stats"]) == s["execution_count"]
    assert sum(b["batch_size"] * b["compute_infer"]["count"] for b in s["batch_stats"]) == 8
    assert s["last_inference"] > 1_700_000_000_000
    # gRPC (protobuf JSON: uint64 as strings) says the same.
    gst = gs[0]["inference_stats"]
    assert int(gst["success"]["count"]) == 4 and int(gst["fail"]["count"]) == 1
    assert int(gs[0]["inference_count"]) == 8 and int(gs[0]["execution_count"]) == s["execution_count"]
    assert one[0]["version"] == "2"


def test_model_config_endpoint(make_repo, start_server):
    repo = make_repo(models=["logreg"], configs={"logreg": (
        "[batching]\nmax_batch_size = 16\nmax_queue_delay_us = 500\n")})
    srv = start_server(repo)
    h = httpclient.InferenceServerClient(srv.http_url)
    try:
        c = h.get_model_config("logreg")
        cv = h.get_model_config("logreg", "2")
    finally:
        h.close()
    assert c["name"] == "logreg" and c["version"] == "2" and cv["version"] == "2"
    assert c["max_batch_size"] == 16
    assert c["dynamic_batching"]["max_queue_delay_microseconds"] == 500
    assert [i["name"] for i in c["input"]] == ["input"] and c["input"][0]["data_type"] == "TYPE_FP32"
    assert {o["name"] for o in c["output"]} == {"label", "probabilities"}
    # the effective config.toml, defaults filled in
    assert c["greenbelt"]["filename"] == "model.onnx" and c["greenbelt"]["batching"]["max_batch_size"] == 16
    status, _, body = http_request(srv.base_url, "GET", "/v2/models/nope/config")
    assert status == 404 and b"nope" in body


def test_a_triton_repository_with_config_pbtxt_serves(make_repo, start_server):
    """A Triton model repository as it is: config.pbtxt's batching,
    instance group and version policy honoured, and what Greenbelt does not
    have named in a warning at load."""
    repo = make_repo(models=["logreg"])
    (repo / "logreg" / "config.pbtxt").write_text(
        'name: "logreg"\n'
        'platform: "onnxruntime_onnx"\n'
        "max_batch_size: 8\n"
        'input [ { name: "input", data_type: TYPE_FP32, dims: [ 20 ] } ]\n'
        'output [ { name: "probabilities", data_type: TYPE_FP32, dims: [ 2 ] } ]\n'
        "dynamic_batching { max_queue_delay_microseconds: 300 preferred_batch_size: [ 4 ] }\n"
        "instance_group [ { count: 2, kind: KIND_CPU } ]\n"
        "version_policy: { all: {} }\n"
        'model_warmup [ { name: "zeros", batch_size: 1 } ]\n'
    )
    srv = start_server(repo)
    h = httpclient.InferenceServerClient(srv.http_url)
    try:
        c = h.get_model_config("logreg")
        assert h.is_model_ready("logreg", "1") and h.is_model_ready("logreg", "2")
        g = golden("logreg", "1")
        r = h.infer("logreg", http_inputs(g.inputs), model_version="1", outputs=http_outputs(g))
        assert_outputs(r, g)
    finally:
        h.close()
    assert c["max_batch_size"] == 8
    assert c["dynamic_batching"]["max_queue_delay_microseconds"] == 300
    assert c["dynamic_batching"]["preferred_batch_size"] == [4]
    assert c["instance_group"][0]["count"] == 2
    assert c["version_policy"] == "all"
    assert c["input"][0]["dims"] == [-1, 20]
    warned = [r for r in srv.log_records() if "Triton settings" in r.get("message", "")]
    assert warned and "model_warmup" in str(warned[0]), srv.log_tail()
