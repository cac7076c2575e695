#!/usr/bin/env bash
# Build a FROM-scratch container image from the locally built greenbelt
# binary, run it with podman and check a real KServe V2 inference against it.
#
#   bash scripts/container-test.sh
#
# Needs root (rootful podman; it may apt-get install podman/runc and edits
# /etc/containers/containers.conf) and python3. No registry access: the image
# is FROM scratch (deploy/Containerfile.local) and holds the binary, every
# shared library it and ONNX Runtime link (dynamic loader included), ONNX
# Runtime itself, deploy/greenbelt.container.toml and one model from
# fixtures/models.
#
# Environment (all optional):
#   GREENBELT_BIN                   binary to package (default: target/release/greenbelt,
#                                   else target/debug/greenbelt, else `cargo build -p greenbelt`)
#   GREENBELT_ORT_LIB               libonnxruntime.so.* to bundle (default: the project's
#                                   .venv onnxruntime, else python3's onnxruntime);
#                                   "none" builds a tract-only image and expects tract_onnx
#   CONTAINER_TEST_MODEL            model from fixtures/models (default: logreg)
#   CONTAINER_TEST_NETWORK          auto | publish | host (default: auto = publish ports on
#                                   127.0.0.1, fall back to host networking bound to 127.0.0.1)
#   CONTAINER_TEST_READY_TIMEOUT    seconds to wait for /v2/health/ready (default: 60)
#   CONTAINER_TEST_KEEP_IMAGE=1     keep the image afterwards (the container is always removed)
#
# Exit status: 0 when every check passed; non-zero with a "FAIL:" line otherwise.

set -Eeuo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
MODEL=${CONTAINER_TEST_MODEL:-logreg}
NETWORK=${CONTAINER_TEST_NETWORK:-auto}
READY_TIMEOUT=${CONTAINER_TEST_READY_TIMEOUT:-60}
CONTAINERS_CONF_FILE=/etc/containers/containers.conf
RUN_ID="$$-$(date +%s)"
IMAGE="localhost/greenbelt-container-test:${RUN_ID}"
CTR="greenbelt-container-test-${RUN_ID}"
WORK=""
CTR_CREATED=0
IMAGE_BUILT=0

log() { printf '[container-test] %s\n' "$*" >&2; }
die() {
    printf '[container-test] FAIL: %s\n' "$*" >&2
    exit 1
}

# ---------------------------------------------------------------- cleanup --
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    set +e
    if [[ $CTR_CREATED == 1 ]]; then
        if [[ $rc != 0 ]]; then
            log "container state: $(timeout 20 podman inspect --format '{{.State.Status}} exit={{.State.ExitCode}} {{.State.Error}}' "$CTR" 2>&1)"
            log "---- container logs (last 200 lines) ----"
            timeout 30 podman logs --tail 200 "$CTR" >&2
            log "---- end of container logs ----"
        fi
        timeout 60 podman rm -f -t 0 "$CTR" >/dev/null 2>&1 || log "warning: could not remove container $CTR"
    fi
    if [[ $IMAGE_BUILT == 1 ]]; then
        if [[ ${CONTAINER_TEST_KEEP_IMAGE:-0} == 1 ]]; then
            log "keeping image $IMAGE (CONTAINER_TEST_KEEP_IMAGE=1)"
        else
            timeout 60 podman rmi -f "$IMAGE" >/dev/null 2>&1 || log "warning: could not remove image $IMAGE"
        fi
    fi
    [[ -n $WORK && -d $WORK ]] && rm -rf "$WORK"
    if [[ $rc == 0 ]]; then
        log "PASS"
    else
        log "FAILED (exit $rc)"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'log "FAIL: command failed (line $LINENO): $BASH_COMMAND"' ERR

# ------------------------------------------------------------ preflight --
[[ $(id -u) == 0 ]] || die "must run as root (rootful podman, apt-get, /etc/containers/containers.conf)"
command -v python3 >/dev/null || die "python3 is required (JSON checks, containers.conf edit)"
command -v timeout >/dev/null || die "timeout (coreutils) is required"
case $NETWORK in auto | publish | host) ;; *) die "CONTAINER_TEST_NETWORK must be auto, publish or host (got '$NETWORK')" ;; esac
[[ $READY_TIMEOUT =~ ^[0-9]+$ && $READY_TIMEOUT -gt 0 ]] || die "CONTAINER_TEST_READY_TIMEOUT must be a positive integer"
[[ -d $ROOT/fixtures/models/$MODEL ]] || die "no model $ROOT/fixtures/models/$MODEL"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/greenbelt-container-test.XXXXXX")
HELPER=$WORK/helper.py

# One Python helper for everything that is clumsy in bash.
cat >"$HELPER" <<'PY'
import json, math, os, re, socket, sys, time, urllib.error, urllib.request


def conf(path):
    """Make sure `default_ulimits = []` is set under [containers] in
    containers.conf, changing nothing else. Prints what it did."""
    want = "default_ulimits = []"
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write(path, "# Created by scripts/container-test.sh\n[containers]\n" + want + "\n")
        print("created " + path)
        return
    lines = text.splitlines(keepends=True)
    header = re.compile(r"^\s*\[\s*([^\[\]#\s]+)\s*\]\s*(#.*)?$")
    start = next((i for i, l in enumerate(lines)
                  if (m := header.match(l)) and m.group(1).strip('"\'') == "containers"), None)
    if start is None:
        if text and not text.endswith("\n"):
            text += "\n"
        write(path, text + "\n[containers]\n" + want + "\n", backup=text)
        print("appended [containers] section to " + path)
        return
    end = next((j for j in range(start + 1, len(lines)) if header.match(lines[j])), len(lines))
    key = re.compile(r"^\s*default_ulimits\s*=(.*)$", re.S)
    for j in range(start + 1, end):
        m = key.match(lines[j])
        if not m:
            continue
        depth, k = brackets(m.group(1)), j
        while depth > 0 and k + 1 < end:
            k += 1
            depth += brackets(lines[k])
        value = re.sub(r"\s+", "", strip_comments("".join([m.group(1)] + lines[j + 1:k + 1])))
        if value == "[]":
            print("unchanged: " + path + " already has default_ulimits = []")
            return
        lines[j:k + 1] = [want + "\n"]
        write(path, "".join(lines), backup=text)
        print("replaced default_ulimits in " + path)
        return
    lines.insert(start + 1, want + "\n")
    write(path, "".join(lines), backup=text)
    print("added default_ulimits = [] under [containers] in " + path)


def strip_comments(s):
    out, quote = [], None
    for line in s.splitlines(keepends=True):
        for ch in line:
            if quote:
                if ch == quote:
                    quote = None
            elif ch in "\"'":
                quote = ch
            elif ch == "#":
                break
            out.append(ch)
        else:
            continue
        out.append("\n")
    return "".join(out)


def brackets(s):
    s = strip_comments(s)
    depth, quote = 0, None
    for ch in s:
        if quote:
            if ch == quote:
                quote = None
        elif ch in "\"'":
            quote = ch
        elif ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
    return depth


def write(path, text, backup=None):
    if backup is not None and not os.path.exists(path + ".greenbelt-bak"):
        with open(path + ".greenbelt-bak", "w") as f:
            f.write(backup)
    try:
        import tomllib
        data = tomllib.loads(text)
        if data.get("containers", {}).get("default_ulimits") != []:
            sys.exit("edited %s does not parse to default_ulimits = []" % path)
    except ImportError:
        pass
    except Exception as e:  # tomllib.TOMLDecodeError
        sys.exit("refusing to write %s: result is not valid TOML (%s)" % (path, e))
    tmp = path + ".tmp-greenbelt"
    with open(tmp, "w") as f:
        f.write(text)
    if os.path.exists(path):
        os.chmod(tmp, os.stat(path).st_mode & 0o7777)
    os.replace(tmp, path)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method, url, body=None, timeout=5):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def probe(url):
    """Print the HTTP status of GET url, or 000 when nothing answers."""
    try:
        print(http("GET", url, timeout=2)[0])
    except Exception:
        print("000")


def flat(x):
    if isinstance(x, list):
        for v in x:
            yield from flat(v)
    else:
        yield x


def check(base, model, golden_dir, platform):
    """Metadata and a real infer, compared with the golden file of the
    version the server serves."""
    status, text = http("GET", "%s/v2/models/%s" % (base, model))
    if status != 200:
        sys.exit("GET /v2/models/%s -> %s: %s" % (model, status, text))
    meta = json.loads(text)
    print("metadata: platform=%s versions=%s" % (meta.get("platform"), meta.get("versions")))
    if meta.get("platform") != platform:
        sys.exit("model platform is %r, expected %r (%s)" % (
            meta.get("platform"), platform,
            "ONNX Runtime was not loaded inside the container" if platform == "onnxruntime_onnx"
            else "unexpected backend"))
    versions = meta.get("versions") or []
    if not versions:
        sys.exit("metadata lists no versions: %s" % text)
    served = str(max(versions, key=lambda v: int(v) if str(v).isdigit() else -1))
    golden_path = os.path.join(golden_dir, "%s_v%s.json" % (model, served))
    with open(golden_path) as f:
        golden = json.load(f)

    inputs = []
    for t in golden["inputs"]:
        row = math.prod(t["shape"][1:])
        inputs.append({"name": t["name"], "shape": [1] + t["shape"][1:],
                       "datatype": t["datatype"], "data": list(flat(t["data"]))[:row]})
    status, text = http("POST", "%s/v2/models/%s/infer" % (base, model), {"inputs": inputs})
    if status != 200:
        sys.exit("POST /v2/models/%s/infer -> %s: %s" % (model, status, text))
    resp = json.loads(text)
    if str(resp.get("model_version", served)) != served:
        sys.exit("infer answered by version %r, metadata said %r" % (resp.get("model_version"), served))
    got = {o["name"]: o for o in resp.get("outputs", [])}
    for want in golden["outputs"]:
        name = want["name"]
        if name not in got:
            sys.exit("response lacks output %r: %s" % (name, text))
        row = math.prod(want["shape"][1:])
        expected = list(flat(want["data"]))[:row]
        actual = list(flat(got[name]["data"]))
        if len(actual) != row:
            sys.exit("output %r: %d values, expected %d" % (name, len(actual), row))
        for i, (a, e) in enumerate(zip(actual, expected)):
            if isinstance(e, float) or isinstance(a, float):
                ok = abs(float(a) - float(e)) <= 1e-5
            else:
                ok = a == e
            if not ok:
                sys.exit("output %r[%d] = %r, golden %r (%s)" % (name, i, a, e, golden_path))
        print("output %s = %s matches %s" % (name, actual, os.path.basename(golden_path)))
    print("infer OK: model %s version %s" % (model, served))


def tcp(port):
    with socket.create_connection(("127.0.0.1", int(port)), timeout=3):
        pass
    print("gRPC port %s accepts connections" % port)


cmd, args = sys.argv[1], sys.argv[2:]
{"conf": conf, "free_port": lambda: print(free_port()), "probe": probe,
 "check": check, "tcp": tcp}[cmd](*args)
PY
py() { python3 "$HELPER" "$@"; }
is_elf() { [[ $(LC_ALL=C head -c 4 "$(readlink -f "$1")" | od -An -tx1 | tr -d ' \n') == 7f454c46 ]]; }

# ------------------------------------------------------------ podman/runc --
missing=()
command -v podman >/dev/null || missing+=(podman)
command -v runc >/dev/null || [[ -x /usr/sbin/runc ]] || missing+=(runc)
if ((${#missing[@]})); then
    command -v apt-get >/dev/null || die "${missing[*]} missing and no apt-get to install them"
    log "installing ${missing[*]} (apt-get update && apt-get install podman runc)"
    export DEBIAN_FRONTEND=noninteractive
    timeout 600 apt-get update || die "apt-get update failed"
    timeout 900 apt-get install -y -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
        podman runc || die "apt-get install podman runc failed"
fi
command -v podman >/dev/null || die "podman not on PATH after install"
RUNC=$(command -v runc || echo /usr/sbin/runc)
[[ -x $RUNC ]] || die "runc not found"

[[ -z ${CONTAINERS_CONF:-} ]] || log "warning: CONTAINERS_CONF=$CONTAINERS_CONF overrides $CONTAINERS_CONF_FILE"
conf_msg=$(py conf "$CONTAINERS_CONF_FILE") || die "could not edit $CONTAINERS_CONF_FILE: $conf_msg"
log "containers.conf: $conf_msg"
log "$(podman --version), $("$RUNC" --version | head -n1)"

# ------------------------------------------------------------ the binary --
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
[[ $TARGET_DIR == /* ]] || TARGET_DIR=$ROOT/$TARGET_DIR
if [[ -n ${GREENBELT_BIN:-} ]]; then
    BIN=$GREENBELT_BIN
elif [[ -x $TARGET_DIR/release/greenbelt ]]; then
    BIN=$TARGET_DIR/release/greenbelt
elif [[ -x $TARGET_DIR/debug/greenbelt ]]; then
    BIN=$TARGET_DIR/debug/greenbelt
else
    command -v cargo >/dev/null || die "no greenbelt binary and no cargo: set GREENBELT_BIN"
    log "no greenbelt binary found: cargo build -p greenbelt"
    (cd "$ROOT" && timeout 3600 cargo build -p greenbelt) || die "cargo build -p greenbelt failed"
    BIN=$TARGET_DIR/debug/greenbelt
fi
[[ -f $BIN && -x $BIN ]] || die "greenbelt binary $BIN missing or not executable"
is_elf "$BIN" || die "$BIN is not an ELF executable"
BIN_VERSION=$(timeout 20 "$BIN" --version 2>&1) || die "$BIN --version failed: $BIN_VERSION"
BIN_VERSION=${BIN_VERSION%%$'\n'*}
log "binary: $BIN ($BIN_VERSION, $(du -h "$BIN" | cut -f1), built $(date -r "$BIN" '+%F %T'))"

# ---------------------------------------------------------- ONNX Runtime --
ORT_LIB=""
if [[ -n ${GREENBELT_ORT_LIB:-} ]]; then
    [[ $GREENBELT_ORT_LIB == none ]] || ORT_LIB=$GREENBELT_ORT_LIB
else
    for cand in "$ROOT"/.venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so*; do
        [[ -f $cand ]] && ORT_LIB=$cand
    done
    if [[ -z $ORT_LIB ]]; then
        dir=$(timeout 30 python3 -c "import importlib.util,os;s=importlib.util.find_spec('onnxruntime');print(os.path.dirname(s.origin) if s else '')" 2>/dev/null || true)
        for cand in "${dir:-/nonexistent}"/capi/libonnxruntime.so*; do
            [[ -f $cand ]] && ORT_LIB=$cand
        done
    fi
    [[ -n $ORT_LIB ]] || die "no libonnxruntime.so found (project .venv or python3 onnxruntime): set GREENBELT_ORT_LIB=/path/libonnxruntime.so.X, or GREENBELT_ORT_LIB=none for a tract-only image"
fi
if [[ -n $ORT_LIB ]]; then
    [[ -f $ORT_LIB ]] || die "GREENBELT_ORT_LIB=$ORT_LIB does not exist"
    is_elf "$ORT_LIB" || die "$ORT_LIB is not an ELF shared library"
    EXPECT_PLATFORM=onnxruntime_onnx
    log "onnxruntime: $ORT_LIB"
else
    EXPECT_PLATFORM=tract_onnx
    log "onnxruntime: none (GREENBELT_ORT_LIB=none), expecting the tract backend"
fi

# --------------------------------------------------------------- staging --
CONTEXT=$WORK/context
ROOTFS=$CONTEXT/rootfs
mkdir -p "$ROOTFS"

# Copy every shared library `ldd` reports for $1 to the same absolute path
# under the rootfs (dereferencing symlinks), the dynamic loader included.
LIB_DIRS=()
copy_libs() {
    local file=$1 out line path
    out=$(LC_ALL=C timeout 30 ldd "$file" 2>&1) || {
        if grep -qE 'not a dynamic executable|statically linked' <<<"$out"; then
            log "  $file is statically linked"
            return 0
        fi
        die "ldd $file failed: $out"
    }
    if grep -q 'not found' <<<"$out"; then
        die "ldd $file: unresolved libraries:
$(grep 'not found' <<<"$out")"
    fi
    while read -r line; do
        path=""
        if [[ $line =~ =\>\ (/[^ ]+)\ \( ]]; then
            path=${BASH_REMATCH[1]}
        elif [[ $line =~ ^(/[^ ]+)\ \( ]]; then
            path=${BASH_REMATCH[1]}
        fi
        [[ -n $path ]] || continue
        if [[ ! -e $ROOTFS$path ]]; then
            install -D -m 0755 "$(readlink -f "$path")" "$ROOTFS$path"
            LIB_DIRS+=("$(dirname "$path")")
            log "  lib $path"
        fi
    done <<<"$out"
}

log "staging image context in $CONTEXT"
install -D -m 0755 "$BIN" "$ROOTFS/greenbelt"
copy_libs "$BIN"
if [[ -n $ORT_LIB ]]; then
    ORT_DIR=/opt/onnxruntime/lib
    ORT_NAME=$(basename "$ORT_LIB")
    install -D -m 0755 "$(readlink -f "$ORT_LIB")" "$ROOTFS$ORT_DIR/$ORT_NAME"
    [[ $ORT_NAME == libonnxruntime.so ]] || ln -s "$ORT_NAME" "$ROOTFS$ORT_DIR/libonnxruntime.so"
    copy_libs "$ORT_LIB"
    # Loaded by ONNX Runtime from its own directory for execution providers.
    shared=$(dirname "$ORT_LIB")/libonnxruntime_providers_shared.so
    if [[ -f $shared ]]; then
        install -m 0755 "$shared" "$ROOTFS$ORT_DIR/"
        copy_libs "$shared"
    fi
fi
# A loader cache for the copied library directories, so lookups do not depend
# on the loader's built-in default paths matching the host's layout.
if ((${#LIB_DIRS[@]})); then
    mkdir -p "$ROOTFS/etc"
    printf '%s\n' "${LIB_DIRS[@]}" | sort -u >"$ROOTFS/etc/ld.so.conf"
    if command -v ldconfig >/dev/null || [[ -x /sbin/ldconfig ]]; then
        "$(command -v ldconfig || echo /sbin/ldconfig)" -X -r "$ROOTFS" || die "ldconfig -r $ROOTFS failed"
    else
        log "warning: no ldconfig; relying on the loader's default search path"
    fi
fi
install -D -m 0644 "$ROOT/deploy/greenbelt.container.toml" "$ROOTFS/etc/greenbelt/greenbelt.toml"
mkdir -p "$ROOTFS/models"
cp -R "$ROOT/fixtures/models/$MODEL" "$ROOTFS/models/"
# Pin the backend the image is meant to prove: with backend = "auto" a
# tabular model loads on the native engine and the bundled runtime would
# go unexercised.
case $EXPECT_PLATFORM in
    onnxruntime_onnx) PIN_BACKEND=onnxruntime ;;
    *) PIN_BACKEND=tract ;;
esac
[[ -f $ROOTFS/models/$MODEL/config.toml ]] || printf '# written by container-test.sh\nbackend = "%s"\n' "$PIN_BACKEND" >"$ROOTFS/models/$MODEL/config.toml"
chmod -R a+rX "$ROOTFS/models"
mkdir -p "$ROOTFS/tmp" && chmod 1777 "$ROOTFS/tmp"
printf 'root:x:0:0:root:/:/sbin/nologin\ngreenbelt:x:65532:65532:greenbelt:/tmp:/sbin/nologin\n' >"$ROOTFS/etc/passwd"
printf 'root:x:0:\ngreenbelt:x:65532:\n' >"$ROOTFS/etc/group"
cp "$ROOT/deploy/Containerfile.local" "$CONTEXT/Containerfile"
log "staged $(du -sh "$ROOTFS" | cut -f1)"

# ----------------------------------------------------------------- build --
log "podman build -t $IMAGE"
IMAGE_BUILT=1
BUILD_ARGS=()
[[ -z $ORT_LIB ]] || BUILD_ARGS+=(--build-arg "ORT_LIB=$ORT_NAME")
timeout 600 podman build --quiet "${BUILD_ARGS[@]}" -f "$CONTEXT/Containerfile" -t "$IMAGE" "$CONTEXT" >&2 ||
    die "podman build failed"
SIZE_BYTES=$(timeout 30 podman image inspect --format '{{.Size}}' "$IMAGE") || die "podman image inspect failed"
SIZE_HUMAN=$(numfmt --to=iec-i --suffix=B "$SIZE_BYTES" 2>/dev/null || echo "$SIZE_BYTES bytes")
log "image $IMAGE: $SIZE_HUMAN ($SIZE_BYTES bytes)"

# ------------------------------------------------------------------- run --
HTTP_PORT=$(py free_port)
GRPC_PORT=$(py free_port)
[[ $GRPC_PORT != "$HTTP_PORT" ]] || GRPC_PORT=$(py free_port)
BASE=http://127.0.0.1:$HTTP_PORT
# The server listens on 0.0.0.0 inside the container, which it refuses to do
# without tokens: give it one (inference stays open; writes need it).
COMMON=(--runtime "$RUNC" --name "$CTR" --detach
    --read-only --cap-drop ALL --security-opt no-new-privileges
    --env "GREENBELT_TOKENS=container-test:admin:$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')")

start_container() { # $1 = publish | host
    local mode=$1 out
    timeout 60 podman rm -f -t 0 "$CTR" >/dev/null 2>&1 || true
    CTR_CREATED=1
    T0=$(date +%s%N)
    if [[ $mode == publish ]]; then
        log "podman run (ports published on 127.0.0.1: $HTTP_PORT->8000, $GRPC_PORT->8001)"
        out=$(timeout 120 podman run "${COMMON[@]}" \
            -p "127.0.0.1:$HTTP_PORT:8000" -p "127.0.0.1:$GRPC_PORT:8001" "$IMAGE" 2>&1)
    else
        # Host networking: override the listen addresses so the server is
        # reachable on loopback only.
        log "podman run --network host (server bound to 127.0.0.1:$HTTP_PORT and 127.0.0.1:$GRPC_PORT)"
        out=$(timeout 120 podman run "${COMMON[@]}" --network host "$IMAGE" \
            --http-addr "127.0.0.1:$HTTP_PORT" --grpc-addr "127.0.0.1:$GRPC_PORT" 2>&1)
    fi
    local rc=$?
    ((rc == 0)) || log "podman run failed (exit $rc): $out"
    return "$rc"
}

# Wait for /v2/health/ready. Returns 0 when ready, 1 on timeout, 2 when the
# container exited; in publish mode, 3 when the server logged that it is
# serving but the published port never answered (port forwarding broken).
wait_ready() {
    local mode=$1 deadline serving_at="" status code now logs
    deadline=$(($(date +%s) + READY_TIMEOUT))
    while :; do
        code=$(py probe "$BASE/v2/health/ready")
        if [[ $code == 200 ]]; then
            READY_MS=$((($(date +%s%N) - T0) / 1000000))
            return 0
        fi
        status=$(timeout 20 podman inspect --format '{{.State.Status}}' "$CTR" 2>/dev/null || echo unknown)
        case $status in
            exited | stopped | dead)
                log "container $status before becoming ready"
                return 2
                ;;
        esac
        now=$(date +%s)
        if [[ $mode == publish && -z $serving_at ]]; then
            logs=$(timeout 20 podman logs "$CTR" 2>&1 || true)
            [[ $logs != *'greenbelt serving'* ]] || serving_at=$now
        fi
        if [[ -n $serving_at ]] && ((now - serving_at > 10)); then
            log "server logged 'greenbelt serving' but 127.0.0.1:$HTTP_PORT did not answer for 10 s (last status $code)"
            return 3
        fi
        if ((now >= deadline)); then
            log "not ready after ${READY_TIMEOUT}s (last status $code, container $status)"
            return 1
        fi
        sleep 0.1
    done
}

MODE=""
READY_MS=""
if [[ $NETWORK != host ]]; then
    rc=0
    start_container publish || rc=$?
    if ((rc == 0)); then
        wait_ready publish || rc=$?
        ((rc == 0)) && MODE=publish
    fi
    if [[ -z $MODE ]]; then
        [[ $NETWORK == auto ]] || die "container not ready with published ports (CONTAINER_TEST_NETWORK=publish)"
        # An exited container is a server problem, not a networking one.
        ((rc != 2)) || die "container exited before becoming ready"
        log "port publishing did not work here; retrying with --network host"
        timeout 30 podman logs --tail 50 "$CTR" >&2 2>/dev/null || true
    fi
fi
if [[ -z $MODE ]]; then
    start_container host || die "podman run --network host failed"
    rc=0
    wait_ready host || rc=$?
    ((rc == 0)) || die "container did not become ready within ${READY_TIMEOUT}s"
    MODE=host
fi
log "ready after ${READY_MS} ms from podman run (network: $MODE)"
logs=$(timeout 30 podman logs "$CTR" 2>&1 || true)
probe_line=$(grep -m1 'runtimes probed' <<<"$logs" || true)
[[ -z $probe_line ]] || log "server: $probe_line"

# ---------------------------------------------------------------- checks --
py check "$BASE" "$MODEL" "$ROOT/fixtures/golden" "$EXPECT_PLATFORM" >&2 || die "inference check failed"
py tcp "$GRPC_PORT" >&2 || die "gRPC port $GRPC_PORT not reachable"

log "podman stop (SIGTERM, graceful shutdown expected within 20 s)"
T1=$(date +%s%N)
timeout 60 podman stop -t 20 "$CTR" >/dev/null || die "podman stop failed"
STOP_MS=$((($(date +%s%N) - T1) / 1000000))
EXIT_CODE=$(timeout 20 podman inspect --format '{{.State.ExitCode}}' "$CTR")
[[ $EXIT_CODE == 0 ]] || die "container exited with $EXIT_CODE after SIGTERM (137 = killed: SIGTERM was not handled in time)"
logs=$(timeout 30 podman logs "$CTR" 2>&1) || die "podman logs failed"
[[ $logs == *'"stopped"'* ]] || die "no 'stopped' log line after SIGTERM"

log "summary: image $SIZE_HUMAN; podman run -> ready ${READY_MS} ms; stop ${STOP_MS} ms; network $MODE; platform $EXPECT_PLATFORM; binary $BIN"
