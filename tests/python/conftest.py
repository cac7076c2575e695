"""Fixtures that run a real `greenbelt serve` process for the Python tests.

The server binary comes from $GREENBELT_BIN (default: target/debug/greenbelt
under the repository root). ONNX Runtime is the shared library shipped inside
the installed `onnxruntime` Python package (passed as ORT_DYLIB_PATH), so the
server runs the same runtime that computed the golden outputs.

Fixtures:
  server        session-scoped server over a copy of fixtures/models
                (logreg serves versions 1 and 2)
  make_repo     build a model repository under a temp dir
  start_server  start extra servers with a custom repository, greenbelt.toml
                and environment; all of them are stopped after the test
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
FIXTURES = REPO_ROOT / "fixtures"
FIXTURE_MODELS = FIXTURES / "models"
GOLDEN_DIR = FIXTURES / "golden"

READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0


def greenbelt_binary() -> Path:
    path = Path(os.environ.get("GREENBELT_BIN", REPO_ROOT / "target" / "debug" / "greenbelt"))
    if not path.is_absolute():
        path = REPO_ROOT / path
    return path


def onnxruntime_library() -> Path:
    """The libonnxruntime.so.* inside the installed onnxruntime package."""
    spec = importlib.util.find_spec("onnxruntime")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the onnxruntime Python package is not installed (see tests/python/requirements.txt)")
    capi = Path(list(spec.submodule_search_locations)[0]) / "capi"
    libs = sorted(p for p in capi.glob("libonnxruntime.so.*") if p.is_file())
    if not libs:
        raise RuntimeError(f"no libonnxruntime.so.* in {capi}")
    return libs[-1]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_repo_at(dest: Path, models=None, configs: dict[str, str] | None = None) -> Path:
    """Copy fixture models (all, or the names in `models`) into `dest` and
    write `<dest>/<model>/config.toml` for each entry of `configs`."""
    dest.mkdir(parents=True, exist_ok=True)
    names = models if models is not None else sorted(p.name for p in FIXTURE_MODELS.iterdir() if p.is_dir())
    for name in names:
        shutil.copytree(FIXTURE_MODELS / name, dest / name)
    for name, text in (configs or {}).items():
        (dest / name).mkdir(parents=True, exist_ok=True)
        (dest / name / "config.toml").write_text(text)
    return dest


class ServerStartError(RuntimeError):
    pass


class GreenbeltServer:
    """One `greenbelt serve` process on free local ports."""

    def __init__(self, workdir: Path, repo: Path, config_text: str | None = None,
                 env: dict[str, str] | None = None, grpc: bool = True):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.repo = Path(repo)
        self.config_path = None
        if config_text is not None:
            self.config_path = self.workdir / "greenbelt.toml"
            self.config_path.write_text(config_text)
        self.extra_env = dict(env or {})
        self.grpc_enabled = grpc
        self.proc: subprocess.Popen | None = None
        self.log_path = self.workdir / "greenbelt.log"
        self.http_port = self.grpc_port = None
        self._log_file = None

    # Addresses in the forms the clients want.
    @property
    def http_url(self) -> str:
        """host:port, as tritonclient.http wants it."""
        return f"127.0.0.1:{self.http_port}"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("GREENBELT__") and k not in ("GREENBELT_LOG", "GREENBELT_LOG_FORMAT")}
        env["ORT_DYLIB_PATH"] = str(onnxruntime_library())
        # The repository tests load and unload models over the API, which is
        # off by default (like Triton's --model-control-mode=none).
        env["GREENBELT__AUTH__MODEL_CONTROL"] = "explicit"
        env.update(self.extra_env)
        return env

    def _spawn(self):
        binary = greenbelt_binary()
        self.http_port = free_port()
        self.grpc_port = free_port()
        while self.grpc_port == self.http_port:
            self.grpc_port = free_port()
        cmd = [str(binary), "--log-format", "json", "serve",
               "--model-repository", str(self.repo),
               "--http-addr", self.http_url,
               "--grpc-addr", self.grpc_url if self.grpc_enabled else ""]
        if self.config_path is not None:
            cmd += ["--config", str(self.config_path)]
        self._log_file = open(self.log_path, "ab")
        self._log_file.write(f"\n=== {' '.join(cmd)}\n".encode())
        self._log_file.flush()
        # cwd = workdir, so a stray ./greenbelt.toml elsewhere is never picked up.
        self.proc = subprocess.Popen(cmd, cwd=self.workdir, env=self._env(),
                                     stdin=subprocess.DEVNULL, stdout=self._log_file,
                                     stderr=subprocess.STDOUT)

    def start(self, ready_timeout: float = READY_TIMEOUT_S) -> "GreenbeltServer":
        binary = greenbelt_binary()
        if not (binary.is_file() and os.access(binary, os.X_OK)):
            raise ServerStartError(
                f"greenbelt binary not found at {binary}; run `cargo build -p greenbelt` "
                "or set GREENBELT_BIN")
        for attempt in range(3):
            self._spawn()
            try:
                self._wait_ready(ready_timeout)
                return self
            except ServerStartError:
                # A port taken between picking and binding: try fresh ports.
                if attempt < 2 and "cannot listen" in self.log_tail(20):
                    self._close_log()
                    continue
                self.kill()
                raise
        raise AssertionError("unreachable")

    def _wait_ready(self, timeout: float):
        deadline = time.monotonic() + timeout
        url = self.base_url + "/v2/health/ready"
        while time.monotonic() < deadline:
            rc = self.proc.poll()
            if rc is not None:
                raise ServerStartError(
                    f"greenbelt exited with {rc} before becoming ready; log tail:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(url, timeout=1) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(0.05)
        raise ServerStartError(
            f"greenbelt not ready after {timeout:.0f} s on {self.base_url}; log tail:\n{self.log_tail()}")

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def log_records(self) -> list[dict]:
        out = []
        for line in self.log_text().splitlines():
            line = line.strip()
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass
        return out

    def terminate(self):
        """Send SIGTERM (graceful drain)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._close_log()

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM, wait (bounded), SIGKILL if still running. Returns the exit code
        of a graceful exit, or None when it had to be killed."""
        if self.proc is None:
            return None
        if self.proc.poll() is not None:
            self._close_log()
            return self.proc.returncode
        self.terminate()
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None
        self._close_log()
        return rc

    def _close_log(self):
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """The shared server: every fixture model; logreg serves versions 1 and 2."""
    base = tmp_path_factory.mktemp("shared-server")
    repo = make_repo_at(base / "models", configs={"logreg": 'version_policy = "all"\n'})
    srv = GreenbeltServer(base, repo)
    try:
        srv.start()
    except ServerStartError as e:
        pytest.fail(str(e), pytrace=False)
    yield srv
    rc = srv.stop()
    if rc != 0:
        print(f"warning: shared greenbelt server stopped with {rc}; log tail:\n{srv.log_tail()}")


@pytest.fixture
def make_repo(tmp_path):
    """make_repo(models=None, configs=None, name="models") -> Path of a new repository."""
    counter = iter(range(1_000_000))

    def _make(models=None, configs=None, name=None):
        dest = tmp_path / (name or f"models-{next(counter)}")
        return make_repo_at(dest, models=models, configs=configs)

    return _make


@pytest.fixture
def start_server(tmp_path, request):
    """start_server(repo, config_text=None, env=None, grpc=True) -> started GreenbeltServer.

    `config_text` is written to a greenbelt.toml passed with --config. Every server
    started here is stopped (SIGTERM, then SIGKILL) when the test ends."""
    servers: list[GreenbeltServer] = []
    request.node._greenbelt_servers = servers

    def _start(repo, config_text=None, env=None, grpc=True, ready_timeout=READY_TIMEOUT_S):
        srv = GreenbeltServer(tmp_path / f"server-{len(servers)}", repo, config_text, env, grpc)
        servers.append(srv)
        try:
            return srv.start(ready_timeout)
        except ServerStartError as e:
            pytest.fail(str(e), pytrace=False)

    yield _start
    for srv in servers:
        srv.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On failure, attach the log tails of the servers the test used."""
    outcome = yield
    report = outcome.get_result()
    if report.when != "call" or not report.failed:
        return
    servers = list(getattr(item, "_greenbelt_servers", []))
    shared = getattr(item, "funcargs", {}).get("server")
    if isinstance(shared, GreenbeltServer):
        servers.insert(0, shared)
    for i, srv in enumerate(servers):
        report.sections.append((f"greenbelt log tail ({srv.workdir.name})", srv.log_tail(40)))
