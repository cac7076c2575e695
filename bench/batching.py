"""Batch vs real time: the online path with dynamic batching off and on, and
the batch job, measured in one run and plotted as throughput-latency curves.

Started by bench/batching.sh (which builds the binaries and the input data);
stdlib only. One Greenbelt server serves every (model, batching config) pair
as its own model name, so the configs differ only in their `[batching]`
table; `greenbelt bench` (closed loop, one row per request) measures each at
every concurrency, then `greenbelt score` runs the batch job on the same
model. Writes bench/out/batching/results.json, an SVG per model in docs/,
and the `efficiency:batching` section of docs/efficiency.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import Server, get_ok, log, wait_idle  # noqa: E402
from report import write_section  # noqa: E402

# Seconds to wait for the machine to go idle before each step.
IDLE_MAX_WAIT = float(os.environ.get("BENCH_IDLE_MAX_WAIT", "20"))
# model -> input feature count (the fixtures' signatures)
MODELS = {"logreg": 20, "mlp": 30}


def parse_config(text: str) -> dict:
    """`off` or `SIZExDELAY_US` (e.g. 32x500)."""
    if text == "off":
        return {"name": "off", "max_batch_size": None, "max_queue_delay_us": None}
    size, _, delay = text.partition("x")
    if not (size.isdigit() and delay.isdigit() and int(size) > 0):
        raise SystemExit(f"--configs: {text!r} is neither 'off' nor SIZExDELAY_US (e.g. 32x500)")
    return {"name": text, "max_batch_size": int(size), "max_queue_delay_us": int(delay)}


def label(cfg: dict) -> str:
    if cfg["max_batch_size"] is None:
        return "batching off"
    return f"batch ≤ {cfg['max_batch_size']}, wait ≤ {cfg['max_queue_delay_us']} µs"


def served_name(model: str, cfg: dict) -> str:
    return f"{model}-{cfg['name']}"


def write_repo(root: Path, fixtures: Path, models: list[str], configs: list[dict]) -> Path:
    repo = root / "repo"
    for model in models:
        for cfg in configs:
            d = repo / served_name(model, cfg)
            (d / "1").mkdir(parents=True, exist_ok=True)
            dst = d / "1" / "model.onnx"
            if not dst.exists():
                dst.symlink_to(fixtures / model / "1" / "model.onnx")
            text = 'backend = "auto"\n'
            if cfg["max_batch_size"] is not None:
                text += (f"[batching]\nmax_batch_size = {cfg['max_batch_size']}\n"
                         f"max_queue_delay = \"{cfg['max_queue_delay_us']}us\"\n")
            (d / "config.toml").write_text(text)
    return repo


def run_json(cmd: list, env: dict, timeout: float) -> dict:
    p = subprocess.run([str(c) for c in cmd], env=env, capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} exited {p.returncode}:\n{p.stderr[-2000:]}")
    out = p.stdout
    return json.loads(out[out.index("{"):])


# --------------------------------------------------------------------------
# The plot: log-log, throughput (rows/s) on x, p99 (ms) on y.

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]


def tick(v: float) -> str:
    if v >= 1e6:
        return f"{v / 1e6:g}M"
    if v >= 1e3:
        return f"{v / 1e3:g}k"
    return f"{v:g}"


def svg_plot(model: str, curves: list[dict], job: dict | None) -> str:
    w, h, left, right, top, bottom = 760, 440, 70, 250, 36, 50
    pts = [(p["rows_per_s"], p["p99_ms"]) for c in curves for p in c["points"] if p["rows_per_s"] > 0]
    xs = [x for x, _ in pts] + ([job["rows_per_s"]] if job else [])
    ys = [y for _, y in pts]
    if not xs or not ys:
        return ""
    x0, x1 = 10 ** math.floor(math.log10(min(xs))), 10 ** math.ceil(math.log10(max(xs) * 1.05))
    y0, y1 = 10 ** math.floor(math.log10(max(min(ys), 1e-3))), 10 ** math.ceil(math.log10(max(ys) * 1.05))

    def sx(x):
        return left + (math.log10(x) - math.log10(x0)) / (math.log10(x1) - math.log10(x0)) * (w - left - right)

    def sy(y):
        y = max(y, y0)
        return h - bottom - (math.log10(y) - math.log10(y0)) / (math.log10(y1) - math.log10(y0)) * (h - top - bottom)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" '
           'font-family="sans-serif" font-size="12">',
           f'<rect width="{w}" height="{h}" fill="white"/>',
           f'<text x="{left}" y="20" font-size="14">{model}: p99 latency vs throughput, one row per request'
           ' (log-log)</text>']
    decade = x0
    while decade <= x1 * 1.0001:
        x = sx(decade)
        out.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{h - bottom}" stroke="#ddd"/>')
        out.append(f'<text x="{x:.1f}" y="{h - bottom + 16}" text-anchor="middle">{tick(decade)}</text>')
        decade *= 10
    decade = y0
    while decade <= y1 * 1.0001:
        y = sy(decade)
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{w - right}" y2="{y:.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{tick(decade)}</text>')
        decade *= 10
    out.append(f'<text x="{(left + w - right) / 2:.0f}" y="{h - 12}" text-anchor="middle">'
               'throughput (rows/s)</text>')
    out.append(f'<text x="16" y="{(top + h - bottom) / 2:.0f}" text-anchor="middle" '
               f'transform="rotate(-90 16 {(top + h - bottom) / 2:.0f})">p99 latency (ms)</text>')
    for i, c in enumerate(curves):
        color = COLORS[i % len(COLORS)]
        ps = [p for p in c["points"] if p["rows_per_s"] > 0]
        path = " ".join(f"{sx(p['rows_per_s']):.1f},{sy(p['p99_ms']):.1f}" for p in ps)
        out.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"/>')
        for p in ps:
            x, y = sx(p["rows_per_s"]), sy(p["p99_ms"])
            out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{color}"/>')
            out.append(f'<text x="{x + 4:.1f}" y="{y - 5:.1f}" font-size="10" fill="{color}">c={p["concurrency"]}</text>')
        ly = top + 16 + 18 * i
        out.append(f'<line x1="{w - right + 14}" y1="{ly - 4}" x2="{w - right + 34}" y2="{ly - 4}" '
                   f'stroke="{color}" stroke-width="2"/>')
        out.append(f'<text x="{w - right + 40}" y="{ly}">{c["label"]}</text>')
    if job:
        x = sx(job["rows_per_s"])
        out.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{h - bottom}" stroke="#000" '
                   'stroke-dasharray="6 4" stroke-width="1.5"/>')
        ly = top + 16 + 18 * len(curves)
        out.append(f'<line x1="{w - right + 14}" y1="{ly - 4}" x2="{w - right + 34}" y2="{ly - 4}" '
                   'stroke="#000" stroke-dasharray="6 4"/>')
        out.append(f'<text x="{w - right + 40}" y="{ly}">batch job ({job["seconds"]:.1f} s for '
                   f'{job["rows"]:,} rows)</text>')
    out.append("</svg>\n")
    return "\n".join(out)


# --------------------------------------------------------------------------
# What each curve supports, from the numbers.


def recommendations(model: str, curves: list[dict], job: dict | None) -> list[str]:
    off = next((c for c in curves if c["config"]["max_batch_size"] is None), None)
    lines = []
    if off is None:
        return lines
    by_c = {p["concurrency"]: p for p in off["points"]}
    peak_off = max((p["rows_per_s"] for p in off["points"]), default=0.0)
    low = min(off["points"], key=lambda p: p["concurrency"])
    lines.append(
        f"- **{model}, batching off:** p99 {low['p99_ms']:.2f} ms at c={low['concurrency']}, "
        f"peak {peak_off:,.0f} rows/s. The baseline: every request runs alone."
    )
    for c in curves:
        if c is off:
            continue
        gains = []
        for p in c["points"]:
            base = by_c.get(p["concurrency"])
            if base and base["rows_per_s"] > 0:
                gains.append((p["concurrency"], p["rows_per_s"] / base["rows_per_s"], p, base))
        if not gains:
            continue
        c1, g1, p1, b1 = min(gains, key=lambda g: g[0])
        wins = [g for g in gains if g[1] >= 1.10]
        text = (f"- **{model}, {c['label']}:** at c={c1} {g1:.2f}× the throughput of batching off, "
                f"p99 {p1['p99_ms']:.2f} ms vs {b1['p99_ms']:.2f} ms")
        if wins:
            cw, gw, pw, bw = min(wins, key=lambda g: g[0])
            best = max(gains, key=lambda g: g[1])
            text += (f"; from c={cw} it pays ({gw:.2f}× at c={cw}, best {best[1]:.2f}× at c={best[0]}, "
                     f"p99 {best[2]['p99_ms']:.2f} ms vs {best[3]['p99_ms']:.2f} ms). Turn it on for this model "
                     f"when {cw} or more requests are in flight at once.")
        else:
            best = max(gains, key=lambda g: g[1])
            text += (f"; never 10% faster than batching off at the concurrencies measured "
                     f"(best {best[1]:.2f}× at c={best[0]}). Leave it off for this model on this machine: "
                     "its per-request compute is too small for a batch to save anything.")
        lines.append(text)
    if job:
        peak = max((p["rows_per_s"] for c in curves for p in c["points"]), default=0.0)
        ratio = job["rows_per_s"] / peak if peak > 0 else float("inf")
        lines.append(
            f"- **{model}, batch job** (`greenbelt score`, {job['rows']:,} rows, Parquet in and out): "
            f"{job['rows_per_s']:,.0f} rows/s, {ratio:,.0f}× the best online configuration. Score offline "
            f"whenever a prediction can wait for the job ({job['seconds']:.1f} s here); serve online only what "
            "must be answered inside a request."
        )
    return lines


def render(res: dict, docs: Path) -> str:
    m = res["meta"]
    out = [
        "## Batch vs real time",
        "",
        f"Generated by `bash bench/batching.sh` ({m['started']} → {m['finished']} UTC). Do not edit by hand: rerun the command.",
        "",
        f"A {m['build']} build of `greenbelt` (`{m['version']}`); one server serving every model under each "
        "batching configuration as its own model name (the configurations differ only in their "
        "`[batching]` table); `greenbelt bench` in closed loop, one row per request, "
        f"{m['duration_s']:g} s per step after 1 s of warm-up, at concurrency {', '.join(map(str, m['concurrency']))}; "
        f"the batch job is `greenbelt score` on {m['rows']:,} rows of Parquet with "
        f"{m['threads']} threads. Machine: {m['cpu']}, `nproc` = {m['nproc']}; the server and the load "
        "generator share the cores.",
        "",
    ]
    for model, entry in res["models"].items():
        out.append(f"### {model}")
        out.append("")
        out.append(f"![{model}: p99 latency vs throughput]({entry['svg']})")
        out.append("")
        out.append("| configuration | c | rows/s | p50 ms | p99 ms |")
        out.append("| --- | ---: | ---: | ---: | ---: |")
        for c in entry["curves"]:
            for p in c["points"]:
                out.append(f"| {c['label']} | {p['concurrency']} | {p['rows_per_s']:,.0f} | "
                           f"{p['p50_ms']:.3f} | {p['p99_ms']:.3f} |")
        job = entry.get("job")
        if job:
            out.append(f"| batch job | {job['threads']} threads | {job['rows_per_s']:,.0f} | | "
                       f"{job['seconds'] * 1000:,.0f} (whole job) |")
        out.append("")
        out.extend(recommendations(model, entry["curves"], job))
        out.append("")
    out.append("Every step is in `bench/out/batching/results.json` (not committed).")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--greenbelt", required=True, help="greenbelt binary")
    ap.add_argument("--data-dir", required=True, help="holds in-ROWS-FEATURES.parquet per model")
    ap.add_argument("--out", required=True)
    ap.add_argument("--docs", required=True)
    ap.add_argument("--ort-lib", default="")
    ap.add_argument("--models", default="logreg,mlp")
    ap.add_argument("--configs", default="off,8x100,8x1000,64x100,64x1000")
    ap.add_argument("--concurrency", default="1,4,16,64")
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--rows", type=int, default=500_000)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--port", type=int, default=18100)
    ap.add_argument("--write-docs", type=int, default=1)
    a = ap.parse_args()

    root = Path(__file__).resolve().parent.parent
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    docs = Path(a.docs)
    models = [m for m in a.models.split(",") if m]
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        raise SystemExit(f"--models: unknown {unknown}; known: {sorted(MODELS)}")
    configs = [parse_config(c) for c in a.configs.split(",") if c]
    conc = [int(c) for c in a.concurrency.replace(" ", ",").split(",") if c]
    repo = write_repo(out, root / "fixtures" / "models", models, configs)
    cfg = out / "greenbelt.toml"
    http = f"127.0.0.1:{a.port}"
    cfg.write_text(
        "# written by bench/batching.py\n[server]\n"
        f'http_addr = "{http}"\ngrpc_addr = "127.0.0.1:{a.port + 1}"\n'
        f'[repository]\npath = "{repo}"\n'
        + (f'[runtime]\nonnxruntime_library = "{a.ort_lib}"\n' if a.ort_lib else "")
        + "[telemetry]\nlog_requests = false\n"
    )
    env = dict(os.environ)
    if a.ort_lib:
        env["ORT_DYLIB_PATH"] = a.ort_lib
    env.pop("GREENBELT_LOG", None)
    started = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S+00:00")
    version = subprocess.run([a.greenbelt, "--version"], capture_output=True, text=True).stdout.strip()
    res = {"meta": {}, "models": {}}
    first = served_name(models[0], configs[0])
    srv = Server("greenbelt", [a.greenbelt, "--log-format", "json", "serve", "--config", cfg], env,
                 out / "server.log", [a.port, a.port + 1], get_ok(f"http://{http}/v2/models/{first}/ready"))
    srv.start()
    try:
        for model in models:
            curves = []
            for c in configs:
                name = served_name(model, c)
                points = []
                for k in conc:
                    wait_idle(15.0, IDLE_MAX_WAIT)
                    r = run_json([a.greenbelt, "bench", "--url", f"http://{http}", "--model", name,
                                  "--concurrency", k, "--duration", a.duration, "--json"],
                                 env, a.duration + 120)
                    if r.get("errors"):
                        log(f"{name} c={k}: {r['errors']} errors, first: {r.get('first_error')}")
                    points.append({
                        "concurrency": k,
                        "rows_per_s": r["throughput_rps"] * r.get("rows", 1),
                        "p50_ms": r["latency_ms"]["p50"],
                        "p99_ms": r["latency_ms"]["p99"],
                        "errors": r["errors"],
                        "raw": r,
                    })
                    log(f"{name} c={k}: {points[-1]['rows_per_s']:,.0f} rows/s, p99 {points[-1]['p99_ms']:.3f} ms")
                curves.append({"config": c, "label": label(c), "points": points})
            res["models"][model] = {"curves": curves}
    finally:
        srv.stop()

    for model in models:
        data = Path(a.data_dir) / f"in-{a.rows}-{MODELS[model]}.parquet"
        target = out / f"out-{model}.parquet"
        target.unlink(missing_ok=True)
        columns = ",".join(f"f{i}" for i in range(MODELS[model]))
        wait_idle(15.0, IDLE_MAX_WAIT)
        s = run_json([a.greenbelt, "score", "--model-file", root / "fixtures" / "models" / model / "1" / "model.onnx",
                      "--input", data, "--output", target, "--columns", columns,
                      "--threads", a.threads, "--json"], env, 1800)
        res["models"][model]["job"] = {"rows": s["rows"], "seconds": s["seconds"],
                                       "rows_per_s": s["rows_per_second"], "threads": a.threads,
                                       "backend": s.get("backend")}
        log(f"{model} batch job: {s['rows_per_second']:,.0f} rows/s")

    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), "unknown CPU")
    res["meta"] = {
        "started": started,
        "finished": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S+00:00"),
        "version": version, "build": "release" if "/release/" in str(a.greenbelt) else "**debug** (unoptimized)",
        "duration_s": a.duration, "concurrency": conc, "rows": a.rows,
        "threads": a.threads, "cpu": cpu, "nproc": os.cpu_count(),
    }
    for model, entry in res["models"].items():
        svg = svg_plot(model, entry["curves"], entry.get("job"))
        name = f"efficiency-batching-{model}.svg"
        (out / name).write_text(svg)
        entry["svg"] = name
        if a.write_docs:
            (docs.parent / name).write_text(svg)
    (out / "results.json").write_text(json.dumps(res, indent=1))
    body = render(res, docs)
    if a.write_docs:
        write_section(docs, "<!-- efficiency:batching:begin -->", "<!-- efficiency:batching:end -->", body)
        log(f"wrote {docs}")
    print(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
