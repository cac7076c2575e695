"""Run the serving benchmark matrix and write bench/out/results.json.

Started by bench/run.sh (which prepares venvs, binaries and the MLServer
model); stdlib only. One server runs at a time; before every measured step
the machine must be idle (bounded wait), and the CPU time of the server (its
whole process group), of the load generator and of everything else on the
machine is recorded for the measured interval.

Groups (--only picks a subset, comma-separated):
  greenbelt        Greenbelt, [telemetry] log_requests = true (the default):
                   REST via wrk, gRPC via `greenbelt bench`, REST overhead
  greenbelt-nolog  Greenbelt, log_requests = false: REST via wrk, REST overhead
  greenbelt-ort    Greenbelt, log on, the model pinned to backend = "onnxruntime"
                   (the default `auto` serves this graph on the native engine):
                   REST via wrk, REST overhead
  greenbelt-telemetry  Greenbelt with all telemetry on: the request log, and
                   OpenTelemetry traces at the default sample ratio exported
                   over OTLP HTTP/protobuf to a sink in this process: REST via wrk
  mlserver         MLServer 1.7.1, default settings: REST via wrk
  mlserver-tuned   MLServer, "debug": false and metrics off: REST via wrk
  empty            the empty axum server (the ceiling): REST via wrk
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
import threading
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
import urllib.error
import urllib.request
from pathlib import Path

GROUPS = ["greenbelt", "greenbelt-nolog", "greenbelt-ort", "greenbelt-telemetry", "greenbelt-drift", "greenbelt-payload", "mlserver", "mlserver-tuned", "empty"]
# Only with --baseline: the same Greenbelt groups served by an older binary.
BASELINE_GROUPS = ["before", "before-nolog"]
CLK_TCK = os.sysconf("SC_CLK_TCK")
NCPU = os.cpu_count() or 1
TOLERANCE = 1e-4


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# CPU accounting from /proc


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies summed over all CPUs, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal guest guest_nice;
    # guest* are already included in user/nice.
    total = sum(fields[:8])
    idle = fields[3] + fields[4]
    return total - idle, total


def group_jiffies(pgid: int) -> int:
    """utime + stime of every live process in process group `pgid`."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        rest = stat[stat.rfind(")") + 2 :].split()
        if int(rest[2]) == pgid:
            total += int(rest[11]) + int(rest[12])
    return total


def children_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def wait_idle(threshold_pct: float, max_wait_s: float) -> dict:
    """Wait until the machine is below `threshold_pct` busy over a 1 s window
    (percent of all CPUs), for at most `max_wait_s`."""
    start = time.monotonic()
    while True:
        b0, t0 = machine_jiffies()
        time.sleep(1.0)
        b1, t1 = machine_jiffies()
        busy = 100.0 * (b1 - b0) / max(1, t1 - t0)
        waited = time.monotonic() - start
        if busy < threshold_pct:
            return {"busy_pct": round(busy, 1), "waited_s": round(waited, 1), "idle": True}
        if waited >= max_wait_s:
            log(f"machine still {busy:.0f}% busy after {waited:.0f} s; measuring anyway")
            return {"busy_pct": round(busy, 1), "waited_s": round(waited, 1), "idle": False}


class Sampler:
    """CPU used by the server's process group, by our children (the load
    generator) and by the whole machine between start() and stop()."""

    def __init__(self, server_pgid: int | None):
        self.pgid = server_pgid

    def start(self) -> None:
        self.t0 = time.monotonic()
        self.s0 = group_jiffies(self.pgid) if self.pgid else 0
        self.c0 = children_cpu_s()
        self.m0 = machine_jiffies()

    def stop(self) -> dict:
        wall = time.monotonic() - self.t0
        s1 = group_jiffies(self.pgid) if self.pgid else 0
        c1 = children_cpu_s()
        m1 = machine_jiffies()
        server = (s1 - self.s0) / CLK_TCK
        client = c1 - self.c0
        busy_j = m1[0] - self.m0[0]
        total_j = m1[1] - self.m0[1]
        # machine busy in cores: busy fraction of all CPUs times the CPU count
        machine = NCPU * busy_j / max(1, total_j) * wall
        pct = lambda s: round(100.0 * s / wall, 1)  # noqa: E731 (% of one core)
        return {
            "wall_s": round(wall, 3),
            "server_cpu_pct": pct(server),
            "client_cpu_pct": pct(client),
            "machine_cpu_pct": pct(machine),
            "other_cpu_pct": pct(max(0.0, machine - server - client)),
        }


# --------------------------------------------------------------------------
# HTTP helpers


def http_json(method: str, url: str, body: bytes | None = None, timeout: float = 10.0):
    req = urllib.request.Request(url, data=body, method=method)
    if body is not None:
        req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        data = resp.read()
        return resp.status, (json.loads(data) if data else None)


def scrape_greenbelt(base: str, model: str = "logreg") -> dict | None:
    """Sum and count of Greenbelt's request/queue/compute histograms for
    `model`, from its /metrics text."""
    try:
        with urllib.request.urlopen(f"{base}/metrics", timeout=5.0) as resp:
            text = resp.read().decode()
    except (urllib.error.URLError, OSError):
        return None
    label = f'model="{model}"'
    acc: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith("greenbelt_") or label not in line:
            continue
        name = line.split("{", 1)[0]
        for kind in ("request", "queue", "compute"):
            for part in ("sum", "count"):
                if name == f"greenbelt_{kind}_duration_seconds_{part}":
                    acc[f"{kind}_{part}"] = acc.get(f"{kind}_{part}", 0.0) + float(line.rsplit(" ", 1)[1])
    return acc or None


def server_split(before: dict | None, after: dict | None) -> dict:
    """Per-request server time, queue wait and model compute (µs) between two
    scrapes; overhead = server - compute (queue wait included) and
    overhead_excl_queue = server - queue - compute."""
    if not before or not after:
        return {}
    n = after.get("request_count", 0) - before.get("request_count", 0)
    if n <= 0:
        return {}
    per = lambda k: (after.get(f"{k}_sum", 0) - before.get(f"{k}_sum", 0)) / n * 1e6  # noqa: E731
    server, queue, compute = per("request"), per("queue"), per("compute")
    return {
        "server_requests": int(n),
        "server_us_per_request": round(server, 2),
        "queue_us_per_request": round(queue, 2),
        "compute_us_per_request": round(compute, 2),
        "overhead_us_per_request": round(server - compute, 2),
        "overhead_excl_queue_us_per_request": round(server - queue - compute, 2),
    }


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


# --------------------------------------------------------------------------
# Servers


class Server:
    """One server process in its own process group. `ready` is a callable
    that returns True once the server answers (it may raise while not)."""

    def __init__(self, name, cmd, env, log_path: Path, ports, ready, cwd=None):
        self.name, self.cmd, self.env, self.log_path = name, cmd, env, log_path
        self.ports, self.ready, self.cwd = ports, ready, cwd
        self.proc: subprocess.Popen | None = None
        self.startup_s: float | None = None

    def start(self, timeout_s: float = 120.0) -> None:
        busy = [p for p in self.ports if port_in_use(p)]
        if busy:
            raise RuntimeError(
                f"{self.name}: port(s) {busy} already in use; stop whatever listens there "
                f"or set BENCH_PORT_BASE"
            )
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        # O_APPEND, so the file can be truncated between steps while the
        # server keeps writing.
        self.log_file = open(self.log_path, "ab")
        self.log_file.truncate(0)
        log(f"starting {self.name}: {' '.join(map(str, self.cmd))}")
        self.proc = subprocess.Popen(
            [str(c) for c in self.cmd],
            env=self.env,
            cwd=self.cwd,
            stdin=subprocess.DEVNULL,
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group: CPU accounting + clean kill
        )
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout_s:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode} while starting:\n{self.log_tail()}"
                )
            try:
                if self.ready():
                    self.startup_s = round(time.monotonic() - t0, 2)
                    log(f"{self.name} ready after {self.startup_s} s")
                    return
            except (urllib.error.URLError, OSError, ValueError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} not ready after {timeout_s:.0f} s:\n{self.log_tail()}")

    @property
    def pgid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def log_tail(self, n: int = 30) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def take_log(self, needle: str | None = None) -> int:
        """Count lines (containing `needle`) written so far, then empty the log."""
        self.log_file.flush()
        n = 0
        with open(self.log_path, "rb") as f:
            for line in f:
                if needle is None or needle.encode() in line:
                    n += 1
        os.truncate(self.log_path, 0)
        return n

    def stop(self, grace_s: float = 20.0) -> str:
        """SIGINT, wait, then end the whole process group (MLServer can hang
        on shutdown with "Waiting for background tasks")."""
        if not self.proc:
            return "not started"
        p = self.proc
        t0 = time.monotonic()
        outcome = "exited before stop"
        if p.poll() is None:
            try:
                p.send_signal(signal.SIGINT)
            except ProcessLookupError:
                pass
            try:
                p.wait(timeout=grace_s)
                outcome = f"clean exit {p.returncode} after {time.monotonic() - t0:.1f} s"
            except subprocess.TimeoutExpired:
                outcome = f"hung {grace_s:.0f} s after SIGINT; process group killed"
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(p.pid, sig)
            except ProcessLookupError:
                break
            time.sleep(1.0)
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        self.log_file.close()
        log(f"stopped {self.name}: {outcome}")
        self.proc = None
        return outcome


# --------------------------------------------------------------------------
# Load generators


LAT_RE = re.compile(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s)\s*$", re.M)


def parse_wrk(stdout: str) -> dict:
    m = re.search(r"^BENCH_JSON (\{.*\})\s*$", stdout, re.M)
    if not m:
        raise RuntimeError(f"wrk printed no BENCH_JSON line:\n{stdout[-2000:]}")
    j = json.loads(m.group(1))
    scale = {"us": 1e-3, "ms": 1.0, "s": 1e3}
    text_lat = {f"p{p}": float(v) * scale[u] for p, v, u in LAT_RE.findall(stdout)}
    rps_text = re.search(r"^Requests/sec:\s+([\d.]+)", stdout, re.M)
    socket_errors = j["err_connect"] + j["err_read"] + j["err_write"] + j["err_timeout"]
    secs = j["duration_us"] / 1e6
    return {
        "requests": j["requests"],
        "duration_s": round(secs, 3),
        "throughput_rps": round(j["requests"] / secs, 1) if secs else 0.0,
        "p50_ms": j["p50_us"] / 1e3,
        "p90_ms": j["p90_us"] / 1e3,
        "p99_ms": j["p99_us"] / 1e3,
        "p999_ms": j["p999_us"] / 1e3,
        "max_ms": j["lat_max_us"] / 1e3,
        "mean_ms": round(j["lat_mean_us"] / 1e3, 4),
        "non2xx": j["non2xx"],
        "socket_errors": socket_errors,
        "errors": j["non2xx"] + socket_errors,
        "first_bad": j["first_bad"],
        # wrk's own --latency text, kept as a cross-check of the Lua numbers
        "wrk_text": {
            "requests_per_sec": float(rps_text.group(1)) if rps_text else None,
            **{k + "_ms": round(v, 4) for k, v in text_lat.items()},
        },
    }



class OtlpSink:
    """An OTLP/HTTP receiver that accepts and counts export requests
    (`POST /v1/traces`, protobuf) without decoding them: the traced server's
    exporter has a real endpoint to talk to, at almost no CPU cost here."""

    def __init__(self, port: int):
        self.requests = 0
        self.bytes = 0
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's naming)
                n = int(self.headers.get("content-length") or 0)
                self.rfile.read(n)
                sink.requests += 1
                sink.bytes += n
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> dict:
        self.server.shutdown()
        self.server.server_close()
        return {"export_requests": self.requests, "bytes": self.bytes}

class Bench:
    def __init__(self, args):
        self.a = args
        self.out = Path(args.out).resolve()
        self.root = Path(args.root).resolve()
        self.conc = [int(c) for c in args.concurrency.replace(",", " ").split()]
        self.runs: list[dict] = []
        self.overhead: list[dict] = []
        self.verification: dict = {}
        self.servers: dict = {}
        self.failures: list[dict] = []
        golden = json.loads((self.root / "fixtures/golden/logreg_v1.json").read_text())
        inp = golden["inputs"][0]
        width = inp["shape"][1]
        self.sample_row = inp["data"][:width]
        probs = next(o for o in golden["outputs"] if o["name"] == "probabilities")
        self.expected = probs["data"][: probs["shape"][1]]
        body = {
            "inputs": [
                {"name": "input", "shape": [1, width], "datatype": "FP32", "data": self.sample_row}
            ]
        }
        self.body_path = self.out / "body.json"
        self.body_path.write_text(json.dumps(body))
        self.body = self.body_path.read_bytes()
        pb = args.port_base
        self.ports = {
            "gb_http": pb, "gb_grpc": pb + 1,
            "ml_http": pb + 80, "ml_grpc": pb + 81, "ml_metrics": pb + 82,
            "empty": pb + 90, "otlp": pb + 91,
        }

    # ---- steps

    def wrk_threads(self, c: int) -> int:
        return max(1, min(c, NCPU))

    def run_wrk(self, server: Server, group: str, label: str, url: str, c: int,
                log_needle: str | None = None, metrics_base: str | None = None) -> None:
        env = dict(os.environ, BENCH_BODY=str(self.body_path))
        t = self.wrk_threads(c)
        base = [self.a.wrk, f"-t{t}", f"-c{c}", "--latency", "-s", str(self.root / "bench/infer.lua")]
        idle = wait_idle(self.a.idle_pct, self.a.idle_max_wait)
        warm = subprocess.run(base + [f"-d{self.a.warmup}s", url], env=env,
                              capture_output=True, text=True, timeout=self.a.warmup + 60)
        warm_requests = parse_wrk(warm.stdout)["requests"] if warm.returncode == 0 else None
        before = scrape_greenbelt(metrics_base) if metrics_base else None
        sampler = Sampler(server.pgid)
        sampler.start()
        p = subprocess.run(base + [f"-d{self.a.duration}s", url], env=env,
                           capture_output=True, text=True, timeout=self.a.duration + 60)
        cpu = sampler.stop()
        # wrk stops with requests still in flight: let them finish before the
        # second scrape so counts and sums cover the same requests
        after = None
        if metrics_base:
            time.sleep(0.2)
            after = scrape_greenbelt(metrics_base)
        rec = {
            "group": group, "server": label, "protocol": "rest", "concurrency": c,
            "client": f"wrk -t{t} -c{c}", "idle_before": idle, **cpu,
        }
        if p.returncode != 0:
            rec.update(ok=False, error=f"wrk exit {p.returncode}: {p.stderr[-500:]}")
        else:
            r = parse_wrk(p.stdout)
            rec.update(r)
            rec["ok"] = r["errors"] == 0 and r["requests"] > 0
            if not rec["ok"]:
                rec["error"] = f"{r['non2xx']} non-2xx, {r['socket_errors']} socket errors; first: {r['first_bad']}"
        rec.update(server_split(before, after))
        if log_needle is not None:
            lines = server.take_log(log_needle)
            rec["request_log_lines"] = lines
            if warm_requests is not None and rec.get("requests"):
                rec["request_log_lines_per_request"] = round(lines / (warm_requests + rec["requests"]), 3)
        self.record(rec)

    def run_gb_bench(self, server: Server, group: str, label: str, protocol: str, c: int,
                     duration: float, kind: str = "run") -> dict:
        cmd = [
            self.a.greenbelt, "--log-format", "text", "bench",
            "--protocol", protocol,
            "--url", f"http://127.0.0.1:{self.ports['gb_http']}",
            "--grpc-url", f"http://127.0.0.1:{self.ports['gb_grpc']}",
            "--model", "logreg", "--concurrency", str(c), "--duration", str(duration), "--json",
        ]
        idle = wait_idle(self.a.idle_pct, self.a.idle_max_wait)
        metrics_base = f"http://127.0.0.1:{self.ports['gb_http']}"
        before = scrape_greenbelt(metrics_base)
        sampler = Sampler(server.pgid)
        sampler.start()
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 120,
                           env=dict(os.environ, GREENBELT_LOG="warn"))
        cpu = sampler.stop()
        after = scrape_greenbelt(metrics_base)
        rec = {
            "group": group, "server": label, "protocol": protocol, "concurrency": c,
            "client": f"greenbelt bench --protocol {protocol} --concurrency {c} (1 s warm-up included in CPU)",
            "idle_before": idle, **cpu,
        }
        j = None
        for line in reversed(p.stdout.strip().splitlines()):
            if line.startswith("{"):
                j = json.loads(line)
                break
        if p.returncode != 0 or j is None:
            rec.update(ok=False, error=f"greenbelt bench exit {p.returncode}: {(p.stderr or p.stdout)[-800:]}")
        else:
            lat = j["latency_ms"]
            rec.update({
                "requests": j["requests"], "duration_s": j["duration_s"],
                "throughput_rps": round(j["throughput_rps"], 1),
                "p50_ms": lat["p50"], "p90_ms": lat["p90"], "p99_ms": lat["p99"], "max_ms": lat["max"],
                "errors": j["errors"], "first_bad": j.get("first_error"),
                # what `greenbelt bench` itself read from /metrics (measured interval only)
                "greenbelt_bench_reported": {
                    k: j.get(k) for k in
                    ("server_us_per_request", "compute_us_per_request", "overhead_us_per_request")
                },
                "ok": j["errors"] == 0 and j["requests"] > 0,
            })
            # our own scrape (its 1 s warm-up included), with the queue wait split out
            rec.update(server_split(before, after) or rec["greenbelt_bench_reported"])
            if not rec["ok"]:
                rec["error"] = f"{j['errors']} errors; first: {j.get('first_error')}"
        server.take_log()
        if kind == "run":
            self.record(rec)
        else:
            rec["kind"] = kind
            self.overhead.append(rec)
            log(f"  overhead {label} {protocol} c={c}: server {fmt(rec.get('server_us_per_request'))} us, "
                f"compute {fmt(rec.get('compute_us_per_request'))} us, "
                f"overhead {fmt(rec.get('overhead_us_per_request'))} us")
        return rec

    def record(self, rec: dict) -> None:
        self.runs.append(rec)
        if rec.get("ok"):
            log(f"  {rec['server']} {rec['protocol']} c={rec['concurrency']}: "
                f"{rec['throughput_rps']:.0f} req/s, p50 {rec['p50_ms']:.3f} ms, p99 {rec['p99_ms']:.3f} ms; "
                f"cpu server {rec['server_cpu_pct']}% client {rec['client_cpu_pct']}% other {rec['other_cpu_pct']}%")
        else:
            log(f"  {rec['server']} {rec['protocol']} c={rec['concurrency']}: FAILED {rec.get('error')}")

    # ---- correctness

    def check_answer(self, who: str, url: str, pick) -> list[float]:
        status, resp = http_json("POST", url, self.body)
        if status != 200:
            raise RuntimeError(f"{who}: HTTP {status} for the sample row")
        probs = [float(x) for x in pick(resp)]
        diff = max(abs(a - b) for a, b in zip(probs, self.expected))
        ok = len(probs) == len(self.expected) and diff <= TOLERANCE
        self.verification[who] = {
            "url": url, "probabilities": probs, "max_abs_diff_vs_onnx_golden": diff, "ok": ok,
        }
        if not ok:
            raise RuntimeError(
                f"{who}: probabilities {probs} differ from the golden {self.expected} by {diff:.3g} (> {TOLERANCE})"
            )
        log(f"{who}: sample row -> {probs} (max |diff| vs golden {diff:.2g})")
        return probs

    # ---- groups

    def greenbelt_server(self, group: str, log_requests: bool, binary, otlp: str | None = None,
                         repo: Path | None = None, extra: str = "") -> Server:
        d = self.out / group_dir(group)
        d.mkdir(parents=True, exist_ok=True)
        cfg = d / "greenbelt.toml"
        cfg.write_text(
            "# written by bench/bench.py\n"
            "[server]\n"
            f'http_addr = "127.0.0.1:{self.ports["gb_http"]}"\n'
            f'grpc_addr = "127.0.0.1:{self.ports["gb_grpc"]}"\n'
            "[repository]\n"
            f'path = "{repo or self.out / "repo"}"\n'
            "[runtime]\n"
            f'onnxruntime_library = "{self.a.ort_lib}"\n'
            "[telemetry]\n"
            f"log_requests = {'true' if log_requests else 'false'}\n"
            + ("[tracing]\n"
               f'endpoint = "{otlp}"\n'
               'protocol = "http/protobuf"\n' if otlp else "")
            + extra
        )
        env = dict(os.environ, ORT_DYLIB_PATH=self.a.ort_lib)
        env.pop("GREENBELT_LOG", None)
        return Server(
            group,
            [binary, "--log-format", "json", "serve", "--config", cfg],
            env, d / "stdout.log",
            [self.ports["gb_http"], self.ports["gb_grpc"]],
            get_ok(f"http://127.0.0.1:{self.ports['gb_http']}/v2/models/logreg/ready"),
        )

    def group_greenbelt(self, log_requests: bool, baseline: bool = False, telemetry: bool = False,
                        drift: bool = False, payload: bool = False, ort: bool = False) -> None:
        """One Greenbelt server: this checkout's binary, or (`baseline`) the
        `--baseline` binary with the identical config. The load generators
        (wrk, and this checkout's `greenbelt bench` for gRPC) are the same for
        both, so the two differ only in the server. `telemetry`: the request
        log and OTLP traces at the default ratio, to a sink in this process."""
        group = ("before" if baseline else "greenbelt") + ("" if log_requests else "-nolog")
        who = f"Greenbelt {self.a.baseline_name}" if baseline else "Greenbelt"
        label = f"{who} (request log {'on' if log_requests else 'off'})"
        sink = None
        if telemetry:
            group = "greenbelt-telemetry"
            label = "Greenbelt (all telemetry on: request log, traces at the default ratio)"
            sink = OtlpSink(self.ports["otlp"])
        repo, extra = None, ""
        if drift:
            group = "greenbelt-drift"
            label = "Greenbelt (request log on, live drift monitor on: 20-feature profile, 1 s windows)"
            repo = drift_repo(self.out)
            extra = '[drift]\nwindow = "1s"\ntick = "100ms"\n'
        if payload:
            group = "greenbelt-payload"
            label = "Greenbelt (request log on, payload log: JSONL, 1% of requests)"
            d = self.out / group_dir(group)
            extra = ('[telemetry.payload_log]\nsink = "jsonl"\nfraction = 0.01\n'
                     f'path = "{d / "payloads"}"\n')
        if ort:
            group = "greenbelt-ort"
            label = "Greenbelt (request log on, backend = onnxruntime)"
            repo = self.out / "repo-ort"
        binary = self.a.baseline if baseline else self.a.greenbelt
        srv = self.greenbelt_server(group, log_requests, binary, sink.url if sink else None, repo, extra)
        try:
            srv.start()
            base = f"http://127.0.0.1:{self.ports['gb_http']}"
            _, meta = http_json("GET", f"{base}/v2/models/logreg")
            self.servers[group] = {
                "label": label, "config": (self.out / group_dir(group) / "greenbelt.toml").read_text(),
                "model_metadata": meta, "startup_s": srv.startup_s,
            }
            self.check_answer(
                group, f"{base}/v2/models/logreg/infer",
                lambda r: next(o for o in r["outputs"] if o["name"] == "probabilities")["data"],
            )
            srv.take_log()
            for c in self.conc:
                self.run_wrk(srv, group, label, f"{base}/v2/models/logreg/infer", c,
                             log_needle="greenbelt::request", metrics_base=base)
            if telemetry or drift or payload:
                return
            if log_requests and not ort:
                for c in self.conc:
                    self.run_gb_bench(srv, group, label, "grpc", c, self.a.duration)
            # Greenbelt's own overhead (server time minus model compute) over REST, c=1
            self.run_gb_bench(srv, group, label, "rest", 1, self.a.duration, kind="overhead")
        finally:
            self.servers.setdefault(group, {})["stop"] = srv.stop()
            if sink:
                # The server flushed its spans on shutdown: what reached the sink.
                self.servers[group]["otlp_sink"] = sink.close()

    def group_mlserver(self, tuned: bool) -> None:
        group = "mlserver-tuned" if tuned else "mlserver"
        label = "MLServer (tuned: debug off, metrics off)" if tuned else "MLServer (default settings)"
        d = self.out / group
        if d.exists():
            shutil.rmtree(d)
        (d / "logreg").mkdir(parents=True)
        for f in ("model.joblib", "model-settings.json"):
            shutil.copy(self.out / "mlserver-model" / f, d / "logreg" / f)
        settings = {
            "host": "127.0.0.1",
            "http_port": self.ports["ml_http"],
            "grpc_port": self.ports["ml_grpc"],
            "metrics_port": self.ports["ml_metrics"],
        }
        if tuned:
            settings.update({"debug": False, "metrics_endpoint": None})
        (d / "settings.json").write_text(json.dumps(settings, indent=2) + "\n")
        env = dict(os.environ)
        srv = Server(
            label, [Path(self.a.ml_venv) / "bin/mlserver", "start", d], env, d / "stdout.log",
            [self.ports["ml_http"], self.ports["ml_grpc"]] + ([] if tuned else [self.ports["ml_metrics"]]),
            get_ok(f"http://127.0.0.1:{self.ports['ml_http']}/v2/models/logreg/ready"), cwd=d,
        )
        try:
            srv.start()
            base = f"http://127.0.0.1:{self.ports['ml_http']}"
            _, meta = http_json("GET", f"{base}/v2/models/logreg")
            self.servers[group] = {"label": label, "settings": settings, "model_metadata": meta,
                                   "startup_s": srv.startup_s}
            self.check_answer(group, f"{base}/v2/models/logreg/infer", lambda r: r["outputs"][0]["data"])
            for c in self.conc:
                self.run_wrk(srv, group, label, f"{base}/v2/models/logreg/infer", c)
                srv.take_log()
        finally:
            self.servers.setdefault(group, {})["stop"] = srv.stop()

    def group_empty(self) -> None:
        group, label = "empty", "empty axum handler (ceiling)"
        port = self.ports["empty"]
        url = f"http://127.0.0.1:{port}/v2/models/logreg/infer"
        # it has no GET route: ready when a POST answers 200 with a JSON object
        srv = Server(label, [self.a.empty, str(port)], dict(os.environ),
                     self.out / "empty" / "stdout.log", [port], post_ok(url, self.body))
        try:
            srv.start()
            self.servers[group] = {"label": label, "startup_s": srv.startup_s}
            for c in self.conc:
                self.run_wrk(srv, group, label, url, c)
        finally:
            self.servers.setdefault(group, {})["stop"] = srv.stop()

    def run(self, groups: list[str]) -> int:
        steps = {
            "greenbelt": lambda: self.group_greenbelt(True),
            "greenbelt-nolog": lambda: self.group_greenbelt(False),
            "greenbelt-ort": lambda: self.group_greenbelt(True, ort=True),
            "greenbelt-telemetry": lambda: self.group_greenbelt(True, telemetry=True),
            "greenbelt-drift": lambda: self.group_greenbelt(True, drift=True),
            "greenbelt-payload": lambda: self.group_greenbelt(True, payload=True),
            "before": lambda: self.group_greenbelt(True, baseline=True),
            "before-nolog": lambda: self.group_greenbelt(False, baseline=True),
            "mlserver": lambda: self.group_mlserver(False),
            "mlserver-tuned": lambda: self.group_mlserver(True),
            "empty": self.group_empty,
        }
        started = dt.datetime.now(dt.timezone.utc)
        for g in groups:
            log(f"=== {g}")
            try:
                steps[g]()
            except Exception as e:  # keep going: report what worked, fail at the end
                log(f"{g} FAILED: {e}")
                self.failures.append({"group": g, "error": str(e), "trace": traceback.format_exc()})
        # Greenbelt and MLServer must agree on the sample row.
        gb = [v for k, v in self.verification.items() if k.startswith("greenbelt")]
        ml = [v for k, v in self.verification.items() if k.startswith("mlserver")]
        if gb and ml:
            diff = max(abs(a - b) for x in gb for y in ml for a, b in zip(x["probabilities"], y["probabilities"]))
            self.verification["greenbelt_vs_mlserver_max_abs_diff"] = diff
            self.verification["greenbelt_vs_mlserver_ok"] = diff <= TOLERANCE
            if diff > TOLERANCE:
                self.failures.append({"group": "verification",
                                      "error": f"Greenbelt and MLServer differ by {diff:.3g} on the sample row"})
        results = {
            "meta": self.meta(started, groups),
            "verification": self.verification,
            "servers": self.servers,
            "runs": self.runs,
            "overhead": self.overhead,
            "failures": self.failures,
        }
        path = self.out / "results.json"
        path.write_text(json.dumps(results, indent=2) + "\n")
        log(f"wrote {path}")
        bad_runs = [r for r in self.runs + self.overhead if not r.get("ok")]
        return 1 if self.failures or bad_runs else 0

    # ---- machine and versions

    def meta(self, started, groups) -> dict:
        def out(cmd, cwd=None):
            try:
                return subprocess.run(cmd, capture_output=True, text=True, timeout=30, cwd=cwd).stdout.strip()
            except (OSError, subprocess.SubprocessError):
                return ""

        lscpu = {}
        for line in out(["lscpu"]).splitlines():
            k, _, v = line.partition(":")
            lscpu[k.strip()] = v.strip()
        mem_kb = 0
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem_kb = int(line.split()[1])
        pyv = "" if not self.a.ml_venv else out([str(Path(self.a.ml_venv) / "bin/python"), "-c",
                   "import importlib.metadata as m, json; print(json.dumps({p: m.version(p) for p in "
                   "['mlserver','mlserver-sklearn','scikit-learn','numpy','uvloop','onnxruntime','uvicorn','fastapi']}))"])
        dirty = out(["git", "status", "--porcelain", "--untracked-files=no"], cwd=self.root)
        return {
            "started_utc": started.isoformat(timespec="seconds"),
            "finished_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "command": self.a.command,
            "settings": {
                "duration_s": self.a.duration, "warmup_s": self.a.warmup, "concurrency": self.conc,
                "groups": groups, "idle_threshold_pct": self.a.idle_pct,
                "idle_max_wait_s": self.a.idle_max_wait,
                "wrk_threads": "min(concurrency, nproc)",
                "body_bytes": len(self.body), "sample_row": self.sample_row,
                "expected_probabilities": self.expected,
            },
            "machine": {
                "nproc": int(out(["nproc"]) or 0),
                "cpu_model": lscpu.get("Model name"),
                "cpus": lscpu.get("CPU(s)"),
                "threads_per_core": lscpu.get("Thread(s) per core"),
                "hypervisor": lscpu.get("Hypervisor vendor"),
                "mem_gib": round(mem_kb / 2**20, 1),
                "kernel": platform.release(),
                "os": out(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]),
            },
            "versions": {
                "greenbelt": out([self.a.greenbelt, "--version"]),
                "baseline": ({"name": self.a.baseline_name, "version": out([self.a.baseline, "--version"])}
                             if self.a.baseline else None),
                "git_commit": self.a.after_name or out(["git", "rev-parse", "--short=12", "HEAD"], cwd=self.root),
                "git_dirty": bool(dirty) and not self.a.after_name,
                "rustc": out(["rustc", "-V"]),
                "wrk": (out(["sh", "-c", f"{self.a.wrk} -v 2>&1 | head -1"]) or "").split(" Copyright")[0],
                "python_system": platform.python_version(),
                "onnxruntime_library": self.a.ort_lib,
                "mlserver_venv": json.loads(pyv) if pyv.startswith("{") else pyv,
            },
        }


def numeric_profile(values, resolution: int = 100, psi_bins: int = 10) -> dict:
    """greenbelt_drift's numeric column profile, in plain Python (the same
    convention: numpy-linear quantile edges, equal edges once, a value equal
    to an edge in the upper bin)."""
    import bisect
    s = sorted(values)
    n = len(s)

    def quantile(q: float) -> float:
        h = (n - 1) * q
        lo = int(h)
        hi = min(lo + 1, n - 1)
        t = h - lo
        d = s[hi] - s[lo]
        return s[hi] - d * (1 - t) if t >= 0.5 else s[lo] + d * t

    def edges(bins: int) -> list:
        out = []
        for i in range(1, bins):
            e = quantile(i / bins)
            if not out or out[-1] != e:
                out.append(e)
        return out

    grid = edges(resolution)
    counts = [0] * (len(grid) + 1)
    for x in s:
        counts[bisect.bisect_right(grid, x)] += 1
    return {"kind": "numeric", "edges": grid, "counts": counts, "psi_edges": edges(psi_bins),
            "missing": 0, "min": s[0], "max": s[-1], "mean": sum(s) / n}


def drift_repo(out: Path) -> Path:
    """The logreg fixture with a reference profile beside it (20 features,
    standard normal; predictions uniform): what turns the monitor on."""
    import random
    repo = out / "repo-drift"
    (repo / "logreg" / "1").mkdir(parents=True, exist_ok=True)
    shutil.copy(out / "repo" / "logreg" / "1" / "model.onnx", repo / "logreg" / "1" / "model.onnx")
    for extra in (out / "repo" / "logreg").glob("*.toml"):
        shutil.copy(extra, repo / "logreg" / extra.name)
    rng = random.Random(7)
    rows = 5000
    names = [f"f{i}" for i in range(20)]
    profile = {
        "format": 1, "task": "classification", "inputs": {"input": names},
        "prediction": "probabilities",
        "features": {"format": 1, "rows": rows,
                     "columns": {n: numeric_profile([rng.gauss(0, 1) for _ in range(rows)])
                                 for n in names}},
        "predictions": {"format": 1, "rows": rows,
                        "columns": {"score": numeric_profile([rng.random() for _ in range(rows)])}},
    }
    (repo / "logreg" / "1" / "model.profile.json").write_text(json.dumps(profile))
    return repo


def group_dir(group: str) -> str:
    return {"greenbelt": "greenbelt-log-on", "greenbelt-nolog": "greenbelt-log-off",
            "before": "before-log-on", "before-nolog": "before-log-off"}.get(group, group)


def get_ok(url: str):
    """Readiness probe: GET answers 200."""
    return lambda: http_json("GET", url, timeout=2.0)[0] == 200


def post_ok(url: str, body: bytes):
    """Readiness probe: POST answers 200 with a JSON object."""
    def probe():
        status, resp = http_json("POST", url, body, timeout=2.0)
        return status == 200 and isinstance(resp, dict)
    return probe


def fmt(x) -> str:
    return "n/a" if x is None else f"{x:.1f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default=str(Path(__file__).resolve().parent.parent))
    ap.add_argument("--out", default="bench/out")
    ap.add_argument("--greenbelt", required=True)
    ap.add_argument("--empty", help="the empty_server example binary (group `empty`)")
    ap.add_argument("--ml-venv", help="MLServer's venv (groups `mlserver*`)")
    ap.add_argument("--ort-lib", required=True)
    ap.add_argument("--wrk", default="wrk")
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--concurrency", default="1 8 64")
    ap.add_argument("--only", default=",".join(GROUPS))
    ap.add_argument("--idle-pct", type=float, default=15.0)
    ap.add_argument("--idle-max-wait", type=float, default=60.0)
    ap.add_argument("--port-base", type=int, default=18000)
    ap.add_argument("--command", default="bash bench/run.sh", help="how this run was started, for the report")
    ap.add_argument("--baseline", help="an older greenbelt binary for the `before`/`before-nolog` groups")
    ap.add_argument("--baseline-name", default="baseline", help="what the baseline is (a git revision), for the report")
    ap.add_argument("--after-name", help="what --greenbelt was built from (default: this checkout's HEAD)")
    a = ap.parse_args()
    # wrk takes whole seconds or suffixed durations; keep it simple
    a.duration = max(1, round(a.duration))
    a.warmup = max(1, round(a.warmup))
    for attr in ("greenbelt", "empty", "ml_venv", "ort_lib", "baseline"):
        if getattr(a, attr):
            setattr(a, attr, str(Path(getattr(a, attr)).resolve()))
    groups = [g.strip() for g in a.only.split(",") if g.strip()]
    unknown = [g for g in groups if g not in GROUPS + BASELINE_GROUPS]
    if unknown:
        ap.error(f"unknown group(s) {unknown}; choose from {GROUPS + BASELINE_GROUPS}")
    needs = {"empty": "empty", "mlserver": "ml_venv", "mlserver-tuned": "ml_venv",
             "before": "baseline", "before-nolog": "baseline"}
    for g in groups:
        if g in needs and not getattr(a, needs[g]):
            ap.error(f"group {g} needs --{needs[g].replace('_', '-')}")
    Path(a.out).mkdir(parents=True, exist_ok=True)
    return Bench(a).run(groups)


if __name__ == "__main__":
    sys.exit(main())
