#!/usr/bin/env python3
"""Offline checks of deploy/kubernetes. Run through scripts/k8s-check.sh,
which provides kubectl and a virtual environment with kubernetes-validate.

1. Renders with `kubectl kustomize`: base, every overlay, every component on
   top of the production overlay, and the KServe runtime.
2. Validates every rendered document:
   - built-in kinds against the Kubernetes OpenAPI schemas bundled in
     kubernetes-validate, strict (unknown fields are errors), for each
     version in K8S_VERSIONS;
   - CRD kinds (ServiceMonitor, ScaledObject, ServingRuntime), which
     kubernetes-validate has no schema for, against the hand-written subsets
     in deploy/kubernetes/schemas/; their core/v1 parts (a ServingRuntime's
     containers and volumes, a ScaledObject's HPA behavior) again against
     the Kubernetes schemas;
   - a kind with no schema at all is an error, not a warning.
3. Checks that the pieces agree with each other and with the server's
   source: every greenbelt.toml / features.toml / tokens.toml key and every
   GREENBELT__SECTION__KEY variable exists in the Rust config structs,
   ports and probe paths match the server's defaults and routes, the grace
   period covers shutdown_delay + drain_timeout + the task wait,
   selectors and port names line up, paths the server writes are on
   writable volumes, referenced Secrets exist as templates, and the Secret
   templates hold placeholders only.
4. Self-test: broken documents must be rejected, so a validator that lets
   everything through fails the run.

Nothing here talks to a cluster.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib  # type: ignore[no-redef]

import jsonschema
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "kubernetes"
CRATES = ROOT / "crates"
# The oldest Kubernetes release the manifests target, and the newest schema
# kubernetes-validate bundles.
K8S_VERSIONS = ["1.30", kubernetes_validate.latest_version()]
PLACEHOLDER = "CHANGE_ME"
AUTOSCALER_METRIC = "greenbelt_autoscaler_desired_replicas"
LIVE, READY, METRICS = "/v2/health/live", "/v2/health/ready", "/metrics"
# Kubernetes' default when a pod spec does not set it.
DEFAULT_GRACE_S = 30


class Failures:
    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, where: str, msg: str) -> None:
        self.items.append(f"{where}: {msg}")


# ----------------------------------------------------------------- rendering --


def kustomize(path: Path) -> list[dict]:
    out = subprocess.run(
        ["kubectl", "kustomize", str(path)], capture_output=True, text=True
    )
    if out.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {path}: {out.stderr.strip()}")
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def render_with_components(overlay: Path, components: list[Path]) -> list[dict]:
    """An overlay plus components, through a throwaway kustomization."""
    with tempfile.TemporaryDirectory(prefix="k8s-check-") as tmp:
        rel = lambda p: os.path.relpath(p, tmp)  # noqa: E731
        (Path(tmp) / "kustomization.yaml").write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "kustomize.config.k8s.io/v1beta1",
                    "kind": "Kustomization",
                    "resources": [rel(overlay)],
                    "components": [rel(c) for c in components],
                }
            )
        )
        return kustomize(Path(tmp))


def renders(fail: Failures) -> list[tuple[str, list[dict]]]:
    """Base, every overlay, every component on the production overlay, and
    the KServe runtime. New overlays and components are picked up here."""
    production = K8S / "overlays" / "production"
    jobs = [("base", lambda: kustomize(K8S / "base"))]
    for o in sorted(p for p in (K8S / "overlays").iterdir() if p.is_dir()):
        jobs.append((f"overlays/{o.name}", lambda o=o: kustomize(o)))
    for c in sorted(p for p in (K8S / "components").iterdir() if p.is_dir()):
        jobs.append(
            (
                f"overlays/production + components/{c.name}",
                lambda c=c: render_with_components(production, [c]),
            )
        )
    jobs.append(("kserve", lambda: kustomize(K8S / "kserve")))
    out = []
    for name, job in jobs:
        try:
            out.append((name, job()))
        except (RuntimeError, yaml.YAMLError) as e:
            fail.add(name, f"does not render: {e}")
    return out


# ---------------------------------------------------------------- validation --


def load_crd_schemas() -> dict[tuple[str, str], dict]:
    schemas = {}
    for f in sorted((K8S / "schemas").glob("*.json")):
        s = json.loads(f.read_text())
        jsonschema.Draft202012Validator.check_schema(s)
        key = (s["properties"]["apiVersion"]["const"], s["properties"]["kind"]["const"])
        schemas[key] = s
    return schemas


CRD_SCHEMAS: dict[tuple[str, str], dict] = {}


def k8s_errors(doc: dict) -> list[str]:
    errs = []
    for v in K8S_VERSIONS:
        try:
            kubernetes_validate.validate(doc, v, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            errs.append(f"Kubernetes {v} schema: {path}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError as e:
            errs.append(
                f"{e.message}; add a schema under deploy/kubernetes/schemas/ if it is a CRD"
            )
    return errs


def fake_pod(spec_part: dict) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}, "spec": spec_part}


def validate_doc(doc: dict) -> list[str]:
    if not isinstance(doc, dict) or "apiVersion" not in doc or "kind" not in doc:
        return ["not a Kubernetes object (apiVersion and kind are required)"]
    key = (doc["apiVersion"], doc["kind"])
    if key not in CRD_SCHEMAS:
        return k8s_errors(doc)
    v = jsonschema.Draft202012Validator(CRD_SCHEMAS[key])
    errs = [
        f"{doc['kind']} schema: {'.'.join(str(p) for p in e.path)}: {e.message}"
        for e in v.iter_errors(doc)
    ]
    if errs:
        return errs
    spec = doc["spec"]
    # The core/v1 parts of CRDs, against the Kubernetes schemas.
    if doc["kind"] == "ServingRuntime":
        pod_spec = {
            k: spec[k]
            for k in ("containers", "volumes", "nodeSelector", "affinity", "tolerations", "imagePullSecrets")
            if k in spec
        }
        errs += [f"spec (as a Pod): {e}" for e in k8s_errors(fake_pod(pod_spec))]
    if doc["kind"] == "ScaledObject":
        behavior = (
            spec.get("advanced", {}).get("horizontalPodAutoscalerConfig", {}).get("behavior")
        )
        if behavior is not None:
            hpa = {
                "apiVersion": "autoscaling/v2",
                "kind": "HorizontalPodAutoscaler",
                "metadata": {"name": "x"},
                "spec": {
                    "scaleTargetRef": {"kind": "Deployment", "name": "x"},
                    "maxReplicas": 1,
                    "behavior": behavior,
                },
            }
            errs += [f"advanced.horizontalPodAutoscalerConfig.behavior: {e}" for e in k8s_errors(hpa)]
    return errs


# ------------------------------------------------------- the server's source --


def rust_sources() -> list[Path]:
    return sorted(CRATES.glob("*/src/**/*.rs"))


_STRUCTS: dict[str, list[tuple[Path, str]]] = {}
_ENUMS: set[str] = set()


def index_rust() -> None:
    for f in rust_sources():
        text = f.read_text()
        for m in re.finditer(r"((?:^#\[[^\n]*\n)*)^pub struct (\w+)\b[^\n]*\{\n(.*?)^\}", text, re.S | re.M):
            _STRUCTS.setdefault(m.group(2), []).append((f, m.group(3), m.group(1)))
        for m in re.finditer(r"^pub enum (\w+)", text, re.M):
            _ENUMS.add(m.group(1))


def struct_fields(name: str) -> dict[str, str]:
    """Field name (and serde rename/alias) -> Rust type, for `pub struct name`."""
    found = _STRUCTS.get(name)
    if not found:
        raise KeyError(f"no `pub struct {name}` under crates/")
    if len(found) > 1:
        raise KeyError(f"`pub struct {name}` is defined {len(found)} times; the check cannot tell which")
    _, body, struct_attrs = found[0]
    if "rename_all" in struct_attrs:
        raise KeyError(f"`{name}` has #[serde(rename_all)]; the check does not model it")
    fields: dict[str, str] = {}
    attrs: list[str] = []
    open_attr = ""  # an attribute rustfmt split over lines, so far
    for line in body.splitlines():
        s = line.strip()
        if open_attr or s.startswith("#["):
            open_attr += s
            if open_attr.count("[") == open_attr.count("]"):
                attrs.append(open_attr)
                open_attr = ""
            continue
        m = re.match(r"pub (\w+): (.+),$", s)
        if not m:
            if not s.startswith("//"):
                attrs = []
            continue
        names = [m.group(1)]
        rust_type = m.group(2)
        for a in attrs:
            if "greenbelt_core::duration::" in a:
                rust_type = "Duration"  # humantime text, or an integer in the old unit
            if "flatten" in a:
                raise KeyError(f"{name}.{m.group(1)} is #[serde(flatten)]; the check does not follow it")
            renamed = re.findall(r'rename\s*=\s*"([^"]+)"', a)
            if renamed:
                names = renamed
            names += re.findall(r'alias\s*=\s*"([^"]+)"', a)
        for n in names:
            fields[n] = rust_type
        attrs = []
    return fields


def inner_type(t: str) -> str:
    t = t.strip()
    for wrapper in ("Option<", "Vec<", "Box<"):
        if t.startswith(wrapper) and t.endswith(">"):
            return inner_type(t[len(wrapper) : -1])
    return t.split("::")[-1]


def type_ok(value, rust_type: str) -> bool:
    t = inner_type(rust_type)
    if t == "bool":
        return isinstance(value, bool)
    if t == "Duration":
        return (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, str) and duration_ms(value) is not None
        )
    if re.fullmatch(r"[ui](8|16|32|64|128|size)", t):
        return isinstance(value, int) and not isinstance(value, bool)
    if t in ("f32", "f64"):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if t in ("String", "PathBuf"):
        return isinstance(value, str)
    if t in _ENUMS:
        return isinstance(value, str)
    return True  # a map or something the check does not model


def check_table(table: dict, struct: str, where: str, fail: Failures) -> None:
    try:
        fields = struct_fields(struct)
    except KeyError as e:
        fail.add(where, str(e))
        return
    for key, value in table.items():
        if key not in fields:
            fail.add(where, f'unknown key "{key}": `{struct}` has {sorted(fields)}')
            continue
        rust_type = fields[key]
        inner = inner_type(rust_type)
        if isinstance(value, dict) and rust_type.strip().startswith("Vec<") and inner in _STRUCTS:
            # From the environment: GREENBELT__DEPLOYMENTS__<NAME>__KEY
            # names an element (by name or index) before its keys.
            for selector, sub in value.items():
                if isinstance(sub, dict):
                    check_table(sub, inner, f"{where}.{key}[{selector}]", fail)
                else:
                    fail.add(where, f"{key}: an array of tables; name an element before the key ({key}__<NAME>__KEY)")
        elif isinstance(value, dict):
            if inner in _STRUCTS:
                check_table(value, inner, f"{where}.{key}", fail)
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            if inner in _STRUCTS:
                for i, v in enumerate(value):
                    check_table(v, inner, f"{where}.{key}[{i}]", fail)
        elif not type_ok(value, rust_type):
            fail.add(where, f"{key} = {value!r} does not fit the Rust type {rust_type}")


def rust_default(struct: str, field: str) -> str:
    for f, _, _ in _STRUCTS.get(struct, []):
        m = re.search(
            rf"impl Default for {struct} \{{.*?\n\s+{field}: ([^,\n]+),", f.read_text(), re.S
        )
        if m:
            return m.group(1).strip()
    raise KeyError(f"no default for {struct}.{field}")


def rust_int(expr: str) -> int:
    expr = expr.replace("_", "")
    if not re.fullmatch(r"[0-9 *+]+", expr):
        raise ValueError(f"not a plain integer expression: {expr}")
    return int(eval(expr, {"__builtins__": {}}))  # digits, * and + only


_UNITS_MS = {"us": 0.001, "ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000}


def duration_ms(text: str) -> float | None:
    """Milliseconds of a humantime duration ("5s", "1m 30s", "250ms"), or
    None when it is not one (the server's parser accepts more units; the
    manifests use these)."""
    parts = re.findall(r"(\d+)\s*(us|ms|s|m|h)\b", text)
    if not parts or re.sub(r"(\d+)\s*(us|ms|s|m|h)\b|\s", "", text):
        return None
    return sum(int(n) * _UNITS_MS[u] for n, u in parts)


def server_ms(server: dict, key: str, default: float) -> float:
    """A [server] duration in ms under its key (`shutdown_delay = "5s"`) or
    its old integer key (`shutdown_delay_ms = 5000`)."""
    for k in (key, f"{key}_ms"):
        if k in server:
            v = server[k]
            ms = duration_ms(v) if isinstance(v, str) else v
            if ms is None:
                raise ValueError(f"[server] {k} = {v!r} is not a duration")
            return ms
    return default


def server_defaults() -> dict:
    d = {}
    for k in ("drain_timeout_ms", "shutdown_delay_ms", "compute_threads", "max_inflight_bytes"):
        d[k] = rust_int(rust_default("ServerConfig", k))
    for k in ("http_addr", "grpc_addr"):
        d[k] = rust_default("ServerConfig", k).split('"')[1]
    wait = re.search(
        r"SHUTDOWN_WAIT: Duration = Duration::from_secs\((\d+)\)",
        (CRATES / "greenbelt-app" / "src" / "tasks.rs").read_text(),
    )
    if not wait:
        raise KeyError("SHUTDOWN_WAIT in crates/greenbelt-app/src/tasks.rs")
    d["task_wait_s"] = int(wait.group(1))
    return d


def server_routes() -> set[str]:
    text = (CRATES / "greenbelt-serve" / "src" / "http" / "mod.rs").read_text()
    return set(re.findall(r'\.route\(\s*"([^"]+)"', text))


def token_roles() -> set[str]:
    text = (CRATES / "greenbelt-auth" / "src" / "lib.rs").read_text()
    m = re.search(r"fn parse\(.*?\{(.*?)\n    \}", text, re.S)
    return set(re.findall(r'"([a-z-]+)" =>', m.group(1))) if m else set()


# ------------------------------------------------------------ secret templates --


def secret_templates(fail: Failures) -> dict[str, dict]:
    out = {}
    for f in sorted((K8S / "secrets").glob("*.yaml")):
        where = f"deploy/kubernetes/secrets/{f.name}"
        for doc in [d for d in yaml.safe_load_all(f.read_text()) if d]:
            for e in validate_doc(doc):
                fail.add(where, e)
            if doc.get("kind") != "Secret":
                fail.add(where, f"{doc.get('kind')}: only Secret templates belong here")
                continue
            name = doc["metadata"]["name"]
            if "data" in doc:
                fail.add(where, "use stringData with placeholders; `data` could hide a real secret")
            for key, value in (doc.get("stringData") or {}).items():
                if PLACEHOLDER not in str(value):
                    fail.add(where, f"{name}/{key} has no {PLACEHOLDER} placeholder: templates hold placeholders only")
                if key.endswith(".toml"):
                    try:
                        parsed = tomllib.loads(value)
                    except tomllib.TOMLDecodeError as e:
                        fail.add(where, f"{name}/{key} is not TOML: {e}")
                        continue
                    if key == "tokens.toml":
                        check_table(parsed, "TokensFile", f"{where} {key}", fail)
                        roles = token_roles()
                        for t in parsed.get("tokens", []):
                            if t.get("role") not in roles:
                                fail.add(where, f"token {t.get('name')}: role {t.get('role')!r} is not one of {sorted(roles)}")
                    elif key == "features.toml":
                        check_table(parsed, "DefinitionsFile", f"{where} {key}", fail)
                        online = parsed.get("store", {}).get("online", "")
                        if not online.startswith("redis://"):
                            fail.add(where, f"{key}: [store] online should be a redis:// URL for several replicas")
            out[name] = doc
    return out


# ---------------------------------------------------------------- consistency --


def labels_match(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in (selector or {}).items())


def under(path: str, mount: str) -> bool:
    return path == mount or path.startswith(mount.rstrip("/") + "/")


def quantity_bytes(q: str) -> int:
    m = re.fullmatch(r"(\d+)(Ki|Mi|Gi|Ti|k|M|G|T)?", str(q))
    if not m:
        raise ValueError(f"quantity {q}")
    mult = {None: 1, "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40,
            "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}[m.group(2)]
    return int(m.group(1)) * mult


def env_overrides(container: dict) -> tuple[dict, set[str]]:
    """GREENBELT__SECTION__KEY values (literal ones) and the set of keys that
    come from somewhere else (a Secret)."""
    literal: dict = {}
    sourced: set[str] = set()
    for e in container.get("env", []):
        name = e["name"]
        if not name.startswith("GREENBELT__"):
            continue
        path = [p.lower() for p in name[len("GREENBELT__"):].split("__")]
        if len(path) >= 3 and path[-1] == "file":
            path.pop()  # GREENBELT__SECTION__KEY__FILE: the value is read from a file
            sourced.add(".".join(path))
            continue
        if len(path) < 2 or "" in path:
            continue
        if "value" in e:
            try:  # typed the way the server types it: a TOML value, else a string
                value = tomllib.loads(f"v = {e['value']}")["v"]
            except tomllib.TOMLDecodeError:
                value = e["value"]
            table = literal
            for seg in path[:-1]:  # nested tables, and elements of arrays of tables
                table = table.setdefault(seg, {})
            table[path[-1]] = value
        else:
            sourced.add(".".join(path))
    return literal, sourced


def check_pod(
    where: str,
    pod: dict,
    docs: list[dict],
    config: dict,
    grace_default: int,
    secrets: dict[str, dict],
    fail: Failures,
    http_port_name: str | None = "http",
) -> None:
    """Checks shared by the Deployment and the KServe runtime's pod."""
    d = server_defaults()
    containers = pod.get("containers", [])
    if len(containers) != 1:
        fail.add(where, f"expected one container, found {len(containers)}")
        return
    c = containers[0]
    literal, sourced = env_overrides(c)
    for section, keys in literal.items():
        check_table({section: keys}, "Config", f"{where} env GREENBELT__*", fail)
    for sk in sourced:
        nested: dict = {}
        table = nested
        *walk, key = sk.split(".")
        for seg in walk:
            table = table.setdefault(seg, {})
        table[key] = "x"
        check_table(nested, "Config", f"{where} env GREENBELT__* (from a Secret)", fail)
    server = {**config.get("server", {}), **literal.get("server", {})}

    # Probes on the server's real health routes.
    routes = server_routes()
    for probe, path in (("startupProbe", LIVE), ("livenessProbe", LIVE), ("readinessProbe", READY)):
        if probe not in c:
            if probe != "readinessProbe" and http_port_name is None:
                continue  # KServe: the runtime adds its own liveness handling
            fail.add(where, f"{probe} is missing")
            continue
        got = c[probe].get("httpGet", {}).get("path")
        if got != path:
            fail.add(where, f"{probe} path {got!r}: the server answers {path}")
        if got not in routes:
            fail.add(where, f"{probe} path {got!r} is not a route in greenbelt-serve/src/http/mod.rs")

    # Ports: config, container ports, server defaults.
    ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
    http_addr = server.get("http_addr", d["http_addr"])
    grpc_addr = server.get("grpc_addr", d["grpc_addr"])
    if http_port_name is not None:
        for name, addr, default in (("http", http_addr, d["http_addr"]), ("grpc", grpc_addr, d["grpc_addr"])):
            port = int(addr.rsplit(":", 1)[1])
            if ports.get(name) != port:
                fail.add(where, f"containerPort {name} = {ports.get(name)}, but [server] {name}_addr listens on {port}")
            if port != int(default.rsplit(":", 1)[1]):
                fail.add(where, f"[server] {name}_addr port {port} differs from the server's default {default}")
            if not addr.startswith("0.0.0.0:"):
                fail.add(where, f"[server] {name}_addr = {addr}: a pod must listen on 0.0.0.0")
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            if probe not in c:
                continue
            port = c[probe].get("httpGet", {}).get("port")
            if port not in (http_port_name, ports.get("http")):
                fail.add(where, f"{probe} port {port!r} is not the http port")
    else:
        args = c.get("args", [])
        if "--http-addr" in args:
            http_addr = args[args.index("--http-addr") + 1]
        port = int(http_addr.rsplit(":", 1)[1])
        got = c.get("readinessProbe", {}).get("httpGet", {}).get("port")
        if got != port:
            fail.add(where, f"readinessProbe port {got} but --http-addr listens on {port}")

    # Shutdown: the grace period covers delay + drain + the task wait.
    delay_ms = server_ms(server, "shutdown_delay", d["shutdown_delay_ms"])
    drain_ms = server_ms(server, "drain_timeout", d["drain_timeout_ms"])
    pre_stop = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    if delay_ms == 0 and not pre_stop:
        fail.add(where, "neither [server] shutdown_delay nor a preStop sleep: requests would be refused before the endpoints are updated")
    grace = pod.get("terminationGracePeriodSeconds", grace_default)
    need = pre_stop + (delay_ms + drain_ms) / 1000 + d["task_wait_s"]
    if grace <= need:
        fail.add(where, f"terminationGracePeriodSeconds {grace} <= preStop {pre_stop} s + shutdown_delay {delay_ms:g} ms + drain_timeout {drain_ms:g} ms + task wait {d['task_wait_s']} s = {need:g} s")

    # Resources and the compute pool.
    res = c.get("resources", {})
    for kind in ("requests", "limits"):
        for r in ("cpu", "memory"):
            if r not in res.get(kind, {}):
                fail.add(where, f"resources.{kind}.{r} is missing")
    threads = server.get("compute_threads", d["compute_threads"])
    if threads == 0 and "cpu" not in res.get("limits", {}):
        fail.add(where, "[server] compute_threads = 0 starts one thread per CPU it may use: set a CPU limit")
    mem = res.get("limits", {}).get("memory")
    inflight = server.get("max_inflight_bytes", d["max_inflight_bytes"])
    if mem and quantity_bytes(mem) <= inflight:
        fail.add(where, f"memory limit {mem} is not above [server] max_inflight_bytes ({inflight} bytes of request bodies in flight)")

    # Non-root, read-only, no privileges.
    psc, csc = pod.get("securityContext", {}), c.get("securityContext", {})
    if not (csc.get("runAsNonRoot") or psc.get("runAsNonRoot")):
        fail.add(where, "runAsNonRoot is not set")
    if csc.get("allowPrivilegeEscalation") is not False:
        fail.add(where, "allowPrivilegeEscalation must be false")
    if csc.get("readOnlyRootFilesystem") is not True:
        fail.add(where, "readOnlyRootFilesystem must be true")
    if "ALL" not in csc.get("capabilities", {}).get("drop", []):
        fail.add(where, "capabilities must drop ALL")

    # Paths the server reads and writes must be on the right volumes.
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    mounts = []
    for m in c.get("volumeMounts", []):
        if m["name"] not in volumes:
            fail.add(where, f"volumeMount {m['name']} has no volume")
            continue
        mounts.append((m["mountPath"], m, volumes[m["name"]]))

    def mount_of(path: str):
        best = None
        for mp, m, v in mounts:
            if under(path, mp) and (best is None or len(mp) > len(best[0])):
                best = (mp, m, v)
        return best

    def file_in_volume(label: str, path: str) -> None:
        found = mount_of(path)
        if not found:
            fail.add(where, f"{label} {path} is on no volume (the root filesystem is read-only and the image has no such file)")
            return
        mp, _, v = found
        key = os.path.relpath(path, mp)
        if "configMap" in v:
            cm = next((x for x in docs if x["kind"] == "ConfigMap" and x["metadata"]["name"] == v["configMap"]["name"]), None)
            if cm is None or key not in cm.get("data", {}):
                fail.add(where, f"{label} {path}: ConfigMap {v['configMap']['name']} has no key {key}")
        elif "secret" in v:
            s = secrets.get(v["secret"]["secretName"])
            if s is None or key not in (s.get("stringData") or {}):
                fail.add(where, f"{label} {path}: no Secret template {v['secret']['secretName']} with key {key} in deploy/kubernetes/secrets/")
        else:
            fail.add(where, f"{label} {path} is on a {list(v)} volume, expected a ConfigMap or Secret")

    def writable(label: str, path: str, emptydir_only: bool = False) -> None:
        found = mount_of(path)
        if not found:
            fail.add(where, f"{label} {path} is on no volume, and the root filesystem is read-only")
            return
        _, m, v = found
        if m.get("readOnly"):
            fail.add(where, f"{label} {path} is on a read-only mount")
        if emptydir_only and "emptyDir" not in v:
            fail.add(where, f"{label} {path} should be an emptyDir (it is {[k for k in v if k != 'name']})")
        elif not ({"emptyDir", "persistentVolumeClaim"} & set(v)):
            fail.add(where, f"{label} {path} is not on an emptyDir or a PersistentVolumeClaim")

    registry = config.get("registry", {})
    uses_registry = "registry.url" in sourced or "url" in registry or config.get("deployments")
    if uses_registry or http_port_name is not None:
        writable("[registry] cache_dir", registry.get("cache_dir", "/tmp/.greenbelt/cache"), emptydir_only=True)
    url = registry.get("url", "")
    if url.startswith("sqlite://"):
        writable("[registry] url", url[len("sqlite://"):])
    artifacts = registry.get("artifacts", "")
    if uses_registry and artifacts and not artifacts.startswith("s3://"):
        writable("[registry] artifacts", artifacts.removeprefix("file://"))
    tokens_file = config.get("auth", {}).get("tokens_file") or literal.get("auth", {}).get("tokens_file")
    if not tokens_file:
        fail.add(where, "no [auth] tokens_file: a server on 0.0.0.0 refuses to start without tokens")
    else:
        file_in_volume("[auth] tokens_file", tokens_file)
    definitions = config.get("features", {}).get("definitions")
    if definitions:
        file_in_volume("[features] definitions", definitions)
        found = mount_of(definitions)
        if found and "configMap" in found[2]:
            cm = next(x for x in docs if x["kind"] == "ConfigMap" and x["metadata"]["name"] == found[2]["configMap"]["name"])
            text = cm["data"].get(os.path.relpath(definitions, found[0]))
            if text is not None:
                feats = tomllib.loads(text)
                check_table(feats, "DefinitionsFile", f"{where} {definitions}", fail)
                store = feats.get("store", {})
                if not store.get("online", "").startswith("redis://"):
                    writable("[store] online", store.get("online", ""))
                if not store.get("offline", "").startswith("s3://"):
                    writable("[store] offline", store.get("offline", ""))

    # Every Secret the pod reads exists as a template, with the keys it reads.
    def need_secret(name: str, key: str | None, label: str) -> None:
        s = secrets.get(name)
        if s is None:
            fail.add(where, f"{label}: no Secret template {name} in deploy/kubernetes/secrets/")
        elif key is not None and key not in (s.get("stringData") or {}):
            fail.add(where, f"{label}: Secret template {name} has no key {key}")

    for e in c.get("env", []):
        ref = e.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            need_secret(ref["name"], ref["key"], f"env {e['name']}")
    for e in c.get("envFrom", []):
        if "secretRef" in e:
            need_secret(e["secretRef"]["name"], None, "envFrom")
    for v in volumes.values():
        if "secret" in v:
            need_secret(v["secret"]["secretName"], None, f"volume {v['name']}")


def check_render(name: str, docs: list[dict], secrets: dict[str, dict], fail: Failures) -> None:
    by_kind: dict[str, list[dict]] = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], []).append(doc)
        for e in validate_doc(doc):
            fail.add(f"{name} {doc['kind']}/{doc['metadata'].get('name')}", e)

    for sr in by_kind.get("ServingRuntime", []):
        where = f"{name} ServingRuntime/{sr['metadata']['name']}"
        formats = [f["name"] for f in sr["spec"].get("supportedModelFormats", [])]
        if "onnx" not in formats:
            fail.add(where, "supportedModelFormats must include onnx")
        if not {"v2", "grpc-v2"} <= set(sr["spec"].get("protocolVersions", [])):
            fail.add(where, "protocolVersions must include v2 and grpc-v2 (Open Inference Protocol)")
        check_pod(where, sr["spec"], docs, {}, DEFAULT_GRACE_S, secrets, fail, http_port_name=None)

    deployments = {d["metadata"]["name"]: d for d in by_kind.get("Deployment", [])}
    for dep in deployments.values():
        where = f"{name} Deployment/{dep['metadata']['name']}"
        pod = dep["spec"]["template"]["spec"]
        pod_labels = dep["spec"]["template"]["metadata"].get("labels", {})
        if not labels_match(dep["spec"]["selector"].get("matchLabels"), pod_labels):
            fail.add(where, "selector does not match the pod template's labels")
        config_volume = next((v for v in pod.get("volumes", []) if v["name"] == "config"), None)
        cm = config_volume and next(
            (x for x in by_kind.get("ConfigMap", []) if x["metadata"]["name"] == config_volume["configMap"]["name"]),
            None,
        )
        if not cm or "greenbelt.toml" not in cm.get("data", {}):
            fail.add(where, "no ConfigMap with greenbelt.toml mounted as volume `config`")
            continue
        try:
            config = tomllib.loads(cm["data"]["greenbelt.toml"])
        except tomllib.TOMLDecodeError as e:
            fail.add(where, f"greenbelt.toml is not TOML: {e}")
            continue
        check_table(config, "Config", f"{where} greenbelt.toml", fail)
        mount = next((m for m in pod["containers"][0].get("volumeMounts", []) if m["name"] == "config"), None)
        if not mount or mount["mountPath"] != "/etc/greenbelt":
            fail.add(where, "the config volume must be mounted at /etc/greenbelt (the images' --config /etc/greenbelt/greenbelt.toml)")
        check_pod(where, pod, docs, config, DEFAULT_GRACE_S, secrets, fail)

        # Several replicas need shared stores; one-box files need one writer.
        scaled = [
            x for k in ("HorizontalPodAutoscaler", "ScaledObject") for x in by_kind.get(k, [])
            if x["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"]
        ]
        replicas = dep["spec"].get("replicas", 1)
        registry = config.get("registry", {})
        shared = bool(scaled) or replicas > 1
        env_url = next(
            (e for e in pod["containers"][0].get("env", []) if e["name"] == "GREENBELT__REGISTRY__URL"), None
        )
        url = registry.get("url", "")
        if env_url and "valueFrom" in env_url:
            ref = env_url["valueFrom"]["secretKeyRef"]
            url = (secrets.get(ref["name"], {}).get("stringData") or {}).get(ref["key"], url)
        if shared:
            if not url.startswith(("postgres://", "postgresql://")):
                how = f"scaled by {scaled[0]['kind']}" if scaled else f"{replicas} replicas"
                fail.add(where, f"{how}, but the registry is {url or 'the default SQLite file'}: replicas must share PostgreSQL")
            if not registry.get("artifacts", "").startswith("s3://"):
                fail.add(where, "several replicas need a shared artifact store (s3://)")
        elif url.startswith("sqlite://"):
            if dep["spec"].get("strategy", {}).get("type") != "Recreate":
                fail.add(where, "a SQLite registry on a volume needs strategy Recreate (one writer at a time)")
        if scaled and "replicas" in dep["spec"]:
            fail.add(where, "an autoscaler owns the replica count: drop spec.replicas, or every apply resets it")
        if len(scaled) > 1:
            fail.add(where, f"scaled by {len(scaled)} autoscalers ({', '.join(x['kind'] for x in scaled)}): pick HPA or KEDA, not both")

        ports = {p.get("name") for p in pod["containers"][0].get("ports", [])}
        services = by_kind.get("Service", [])
        for svc in services:
            if not labels_match(svc["spec"].get("selector"), pod_labels):
                fail.add(f"{name} Service/{svc['metadata']['name']}", "selector does not match the pods")
            for p in svc["spec"]["ports"]:
                if p.get("targetPort") not in ports:
                    fail.add(f"{name} Service/{svc['metadata']['name']}", f"targetPort {p.get('targetPort')!r} is not a named container port {sorted(ports)}")
        for pdb in by_kind.get("PodDisruptionBudget", []):
            if not labels_match(pdb["spec"]["selector"].get("matchLabels"), pod_labels):
                fail.add(f"{name} PodDisruptionBudget", "selector does not match the pods")
            if pdb["spec"].get("minAvailable") not in (None, 0) and replicas <= 1 and not scaled:
                fail.add(f"{name} PodDisruptionBudget", "minAvailable with one replica blocks every node drain")
        for np in by_kind.get("NetworkPolicy", []):
            if not labels_match(np["spec"]["podSelector"].get("matchLabels"), pod_labels):
                fail.add(f"{name} NetworkPolicy", "podSelector does not match the pods")
            for rule in np["spec"].get("ingress", []):
                for p in rule.get("ports", []):
                    if isinstance(p.get("port"), str) and p["port"] not in ports:
                        fail.add(f"{name} NetworkPolicy", f"port {p['port']!r} is not a named container port")
        for sm in by_kind.get("ServiceMonitor", []):
            where_sm = f"{name} ServiceMonitor/{sm['metadata']['name']}"
            matched = [s for s in services if labels_match(sm["spec"]["selector"].get("matchLabels"), s["metadata"].get("labels", {}))]
            if not matched:
                fail.add(where_sm, "selector matches no Service")
            for ep in sm["spec"]["endpoints"]:
                if not any(ep.get("port") in {p.get("name") for p in s["spec"]["ports"]} for s in matched):
                    fail.add(where_sm, f"port {ep.get('port')!r} is not a port name of the selected Service")
                if ep.get("path", METRICS) not in server_routes():
                    fail.add(where_sm, f"path {ep.get('path')!r} is not a server route")

    # An Ingress publishes inference only: every path under /v2, to a port
    # of a Service in this render.
    service_ports = {
        s["metadata"]["name"]: {p.get("name") for p in s["spec"]["ports"]} | {p["port"] for p in s["spec"]["ports"]}
        for s in by_kind.get("Service", [])
    }
    for ing in by_kind.get("Ingress", []):
        where = f"{name} Ingress/{ing['metadata']['name']}"
        for rule in ing["spec"].get("rules", []):
            for p in rule.get("http", {}).get("paths", []):
                if not under(p.get("path", "/"), "/v2"):
                    fail.add(where, f"path {p.get('path')!r} publishes more than /v2: /admin, /registry, /features and /metrics must stay inside")
                backend = p["backend"].get("service", {})
                port = backend.get("port", {})
                port = port.get("name", port.get("number"))
                if port not in service_ports.get(backend.get("name"), set()):
                    fail.add(where, f"backend {backend.get('name')}:{port} is no Service port in this render")

    for hpa in by_kind.get("HorizontalPodAutoscaler", []):
        where = f"{name} HorizontalPodAutoscaler/{hpa['metadata']['name']}"
        if hpa["spec"]["scaleTargetRef"]["name"] not in deployments:
            fail.add(where, "scaleTargetRef names no Deployment in this render")
        for m in hpa["spec"].get("metrics", []):
            ext = m.get("external", {})
            if ext.get("metric", {}).get("name") != AUTOSCALER_METRIC:
                continue
            target = ext.get("target", {})
            if target.get("type") != "AverageValue" or str(target.get("averageValue")) != "1":
                fail.add(where, f"{AUTOSCALER_METRIC} is a replica count: target AverageValue 1 makes desired = the gauge (got {target})")
            if "deployment" not in ext["metric"].get("selector", {}).get("matchLabels", {}):
                fail.add(where, f"{AUTOSCALER_METRIC} needs a deployment label selector")
    for so in by_kind.get("ScaledObject", []):
        where = f"{name} ScaledObject/{so['metadata']['name']}"
        if so["spec"]["scaleTargetRef"]["name"] not in deployments:
            fail.add(where, "scaleTargetRef names no Deployment in this render")
        for t in so["spec"]["triggers"]:
            if t["type"] == "prometheus" and AUTOSCALER_METRIC in t["metadata"].get("query", ""):
                if t.get("metricType", "AverageValue") != "AverageValue" or t["metadata"].get("threshold") != "1":
                    fail.add(where, f"{AUTOSCALER_METRIC} is a replica count: metricType AverageValue with threshold \"1\" makes desired = the gauge")
                if "deployment=" not in t["metadata"]["query"].replace(" ", ""):
                    fail.add(where, "the query should select one deployment label")


# ------------------------------------------------------------------ self-test --


def self_test(rendered: dict[str, list[dict]], fail: Failures) -> int:
    """Each broken document must be rejected; returns how many were."""
    prod = rendered["overlays/production"]
    dep = next(d for d in prod if d["kind"] == "Deployment")
    sm = next(d for d in prod if d["kind"] == "ServiceMonitor")
    so = next(d for render in rendered.values() for d in render if d["kind"] == "ScaledObject")
    sr = next(d for d in rendered["kserve"] if d["kind"] == "ServingRuntime")
    cases = []
    bad = copy.deepcopy(dep)
    bad["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    cases.append(("Deployment with an unknown field", bad))
    bad = copy.deepcopy(dep)
    bad["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "8000"
    cases.append(("Deployment with a string port", bad))
    bad = copy.deepcopy(sm)
    bad["spec"]["endpoints"][0]["intervall"] = "15s"
    cases.append(("ServiceMonitor with an unknown field", bad))
    bad = copy.deepcopy(so)
    bad["spec"]["triggers"][0]["metadata"]["threshold"] = 1
    cases.append(("ScaledObject with a numeric threshold", bad))
    bad = copy.deepcopy(sr)
    bad["spec"]["containers"][0]["imagee"] = "x"
    cases.append(("ServingRuntime with a bad container", bad))
    cases.append(("unknown kind", {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "x"}}))
    rejected = 0
    for label, doc in cases:
        if validate_doc(doc):
            rejected += 1
        else:
            fail.add("self-test", f"{label} was accepted: the validator is not checking")
    inner = Failures()
    check_table({"server": {"shutdown_dleay": "5s"}}, "Config", "self-test", inner)
    if inner.items:
        rejected += 1
    else:
        fail.add("self-test", "an invented greenbelt.toml key was accepted")
    # Variables reach nested tables and array elements; a typo there is caught.
    good, _ = env_overrides({"env": [
        {"name": "GREENBELT__SERVER__CONCURRENCY__ALGORITHM", "value": "gradient2"},
        {"name": "GREENBELT__DEPLOYMENTS__FRAUD__ALIAS", "value": "canary"},
        {"name": "GREENBELT__SERVER__REQUEST_TIMEOUT", "value": "2s"},
    ]})
    inner = Failures()
    check_table(good, "Config", "self-test", inner)
    for item in inner.items:
        fail.add("self-test", f"a valid nested variable was refused: {item}")
    bad, _ = env_overrides({"env": [{"name": "GREENBELT__DEPLOYMENTS__FRAUD__ALIASS", "value": "x"}]})
    inner = Failures()
    check_table(bad, "Config", "self-test", inner)
    if inner.items:
        rejected += 1
    else:
        fail.add("self-test", "an invented key of a [[deployments]] element was accepted")
    return rejected


def main() -> int:
    started = time.monotonic()
    fail = Failures()
    CRD_SCHEMAS.update(load_crd_schemas())
    index_rust()
    secrets = secret_templates(fail)
    rendered: dict[str, list[dict]] = {}
    for name, docs in renders(fail):
        rendered[name] = docs
        kinds = sorted({d["kind"] for d in docs})
        print(f"rendered {name}: {len(docs)} objects ({', '.join(kinds)})")
        check_render(name, docs, secrets, fail)
    rejected = self_test(rendered, fail) if not fail.items else 0
    print(f"secret templates: {len(secrets)} ({', '.join(sorted(secrets))})")
    print(f"Kubernetes schemas: {', '.join(K8S_VERSIONS)} (kubernetes-validate {kubernetes_validate.__version__}, strict); "
          f"CRD schemas: {', '.join(k for _, k in sorted(CRD_SCHEMAS))}")
    if rejected:
        print(f"self-test: {rejected} broken documents rejected")
    if fail.items:
        print(f"\nFAILED: {len(fail.items)} problem(s)", file=sys.stderr)
        for item in fail.items:
            print(f"  - {item}", file=sys.stderr)
        return 1
    print(f"ok ({time.monotonic() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
