"""Processes for the end-to-end tests: the control plane, Envoy with the wasm filter, the CLI.

Every test builds its own stack (`Harness`), on its own ports and in its own temporary
directory, so tests are independent and run in parallel (`pytest -n 2`). Child processes write
their output to log files in that directory; the tail of each log is attached to the report of
a failing test (see conftest.py). Children are stopped by the harness' finalizer, again at
interpreter exit, and on Linux they also die with the pytest process (PR_SET_PDEATHSIG).

Binaries come from the environment (`cargo xtask test` sets them):
TOKENROUTER_BIN (the `tokenrouter` binary), TOKENROUTER_WASM (the filter), ENVOY_BIN.
"""

from __future__ import annotations

import atexit
import ctypes
import itertools
import json as jsonlib
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import requests
from openai import OpenAI

from fakes.openai_fake import FakeOpenAI

PROVIDER_SECRET = "sk-provider-secret"
LOG_TAIL_LINES = 100
DEFAULT_MAX_REQUEST_BODY_BYTES = 64 * 1024
START_TIMEOUT_S = 30.0
# The filter's worker tick: each Envoy worker reads a new configuration from shared data on it.
WORKER_TICK_S = 0.1
# Everything the tests talk to is on loopback: never through an HTTP proxy.
os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost"

T = TypeVar("T")


# --------------------------------------------------------------------------------------------
# Small utilities


class ProcessExited(RuntimeError):
    """A child process died while we were waiting for it: waiting longer is pointless."""


def wait_for(
    predicate: Callable[[], T],
    timeout: float = 10.0,
    interval: float = 0.05,
    what: str = "condition",
) -> T:
    """Calls ``predicate`` until it returns something truthy, and returns that.

    Exceptions from the predicate count as "not yet" (the last one is reported on timeout),
    except `ProcessExited`, which is raised at once.
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            result = predicate()
            if result:
                return result
        except ProcessExited:
            raise
        except Exception as error:  # noqa: BLE001 (any failure means "not yet")
            last_error = error
        if time.monotonic() >= deadline:
            detail = f"; last error: {last_error!r}" if last_error else ""
            raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {what}{detail}")
        time.sleep(interval)


# Ports for the processes of the tests come from below the kernel's ephemeral range
# (/proc/sys/net/ipv4/ip_local_port_range, 32768-60999 by default), one block per pytest-xdist
# worker: a port handed out here is then never taken, between this check and the child's bind, by
# an outgoing connection or by the other worker (a port from bind(0) could be; Envoy then exits).
_PORT_BLOCK = 2_000
_PORT_BASE = 12_000
_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
_PORT_FIRST = _PORT_BASE + (int(_WORKER) if _WORKER.isdigit() else 0) % 10 * _PORT_BLOCK
_NEXT_PORT = itertools.count()


def free_port() -> int:
    """A loopback TCP port nobody listens on, not reused by this process for a while."""
    for _ in range(_PORT_BLOCK):
        port = _PORT_FIRST + next(_NEXT_PORT) % _PORT_BLOCK
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {_PORT_FIRST}..{_PORT_FIRST + _PORT_BLOCK}")


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    if not path.exists():
        return f"({path} does not exist)"
    text = path.read_text(errors="replace").splitlines()
    return "\n".join(text[-lines:])


def child_env(**overrides: str | None) -> dict[str, str]:
    """The environment for children: ours without TOKENROUTER_* / DATABASE_URL, plus overrides
    (None removes a variable)."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("TOKENROUTER_") and name != "DATABASE_URL"
    }
    env.setdefault("RUST_BACKTRACE", "1")
    for name, value in overrides.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


@dataclass(frozen=True)
class Binaries:
    tokenrouter: Path
    wasm: Path
    envoy: Path
    # The directory holding libtokenrouter_native.so when the suite runs the edge as the native
    # module (`TOKENROUTER_NATIVE_DIR`), else None: the wasm filter.
    native_dir: Path | None = None

    @classmethod
    def from_env(cls) -> Binaries:
        """Raises `LookupError` with a helpful message when a variable is unset or wrong."""
        paths = {}
        for var in ("TOKENROUTER_BIN", "TOKENROUTER_WASM", "ENVOY_BIN"):
            value = os.environ.get(var)
            if not value:
                raise LookupError(f"{var} is not set: run the suite with `cargo xtask test`")
            path = Path(value).resolve()
            if not path.is_file():
                raise LookupError(f"{var}={value} is not a file: build first (`cargo xtask test`)")
            paths[var] = path
        native = os.environ.get("TOKENROUTER_NATIVE_DIR")
        native_dir = Path(native).resolve() if native else None
        if native_dir is not None and not (native_dir / "libtokenrouter_native.so").is_file():
            raise LookupError(f"TOKENROUTER_NATIVE_DIR={native} has no libtokenrouter_native.so")
        return cls(
            paths["TOKENROUTER_BIN"], paths["TOKENROUTER_WASM"], paths["ENVOY_BIN"], native_dir
        )


# --------------------------------------------------------------------------------------------
# Child processes


_CHILDREN: set[subprocess.Popen[bytes]] = set()


def _kill_all_children() -> None:
    for proc in list(_CHILDREN):
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    _CHILDREN.clear()


atexit.register(_kill_all_children)


def _die_with_parent_hook() -> Callable[[], None] | None:
    """A preexec_fn that makes the child get SIGKILL when the pytest process dies (Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1

    def hook() -> None:
        prctl(pr_set_pdeathsig, signal.SIGKILL)

    return hook


_DIE_WITH_PARENT = _die_with_parent_hook()


def spawn(args: list[str], *, env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """Starts a child with stdout and stderr appended to ``log_path``."""
    with log_path.open("ab") as log:
        log.write(f"\n===== {time.strftime('%H:%M:%S')} $ {' '.join(args)}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            preexec_fn=_DIE_WITH_PARENT,  # noqa: PLW1509 (only calls prctl)
        )
    _CHILDREN.add(proc)
    return proc


def stop_process(
    proc: subprocess.Popen[bytes] | None, *, kill: bool = False, timeout: float = 10
) -> None:
    """SIGTERM (or SIGKILL) and wait; SIGKILL after ``timeout``."""
    if proc is None:
        return
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)
    _CHILDREN.discard(proc)


# --------------------------------------------------------------------------------------------
# The control plane and its CLI


class CliError(Exception):
    def __init__(
        self, args: list[str], result: subprocess.CompletedProcess[str], reason: str
    ) -> None:
        self.returncode = result.returncode
        self.stdout = result.stdout
        self.stderr = result.stderr
        super().__init__(
            f"`tokenrouter {' '.join(args)}` {reason} (exit {result.returncode})\n"
            f"stdout: {result.stdout.strip()}\nstderr: {result.stderr.strip()}"
        )


class ControlPlane:
    """``tokenrouter serve`` on free ports, with a data directory that survives restarts."""

    def __init__(
        self,
        binaries: Binaries,
        workdir: Path,
        *,
        admin_token: str | None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.bin = binaries.tokenrouter
        # Extra environment of the `serve` process (e.g. TOKENROUTER_PER_TRY_TIMEOUT_MS).
        self.extra_env = dict(env or {})
        self.workdir = workdir
        self.data_dir = workdir / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / "control-plane.log"
        self.cli_log_path = workdir / "cli.log"
        # None: the control plane generates one into <data-dir>/admin_token.
        self.admin_token = admin_token
        self.grpc_port = free_port()
        self.rest_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def grpc_addr(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def api_url(self) -> str:
        return f"http://{self.grpc_addr}"

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    # lifecycle

    def start(self, timeout: float = START_TIMEOUT_S) -> ControlPlane:
        args = [
            str(self.bin),
            "serve",
            "--grpc-addr",
            self.grpc_addr,
            "--rest-addr",
            f"127.0.0.1:{self.rest_port}",
            "--data-dir",
            str(self.data_dir),
        ]
        self.proc = spawn(args, env=self._env(**self.extra_env), log_path=self.log_path)
        wait_for(self._healthy, timeout, interval=0.1, what=f"{self.rest_url}/healthz")
        return self

    def stop(self, *, kill: bool = False) -> None:
        stop_process(self.proc, kill=kill)
        self.proc = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _healthy(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise ProcessExited(f"control plane exited: see {self.log_path}")
        return requests.get(f"{self.rest_url}/healthz", timeout=1).status_code == 200

    def _env(self, **overrides: str | None) -> dict[str, str]:
        # Keys of most tests fire more than the product's default 10 requests per second; the
        # limits tests (test_limits.py) set TOKENROUTER_DEFAULT_RPS themselves.
        defaults = {"TOKENROUTER_ADMIN_TOKEN": self.admin_token, "TOKENROUTER_DEFAULT_RPS": "0"}
        return child_env(**{**defaults, **overrides})

    # CLI

    def run_cli(
        self,
        *args: str,
        json: bool = True,
        api_url: str | None = None,
        env: dict[str, str | None] | None = None,
        timeout: float = 30,
    ) -> subprocess.CompletedProcess[str]:
        """Runs ``tokenrouter --api-url URL [--data-dir D] <args> [--json]`` and returns the result.

        ``--data-dir`` is passed when the admin token is the generated one (the CLI reads it from
        there); ``env`` overrides the environment (None removes a variable).
        """
        command = [str(self.bin), "--api-url", api_url or self.api_url]
        if self.admin_token is None:
            command += ["--data-dir", str(self.data_dir)]
        command += list(args)
        if json:
            command.append("--json")
        result = subprocess.run(
            command,
            env=self._env(**(env or {})),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        with self.cli_log_path.open("a") as log:
            log.write(f"$ {' '.join(command)}\n-> exit {result.returncode}\n")
            log.write(f"stdout: {result.stdout}\nstderr: {result.stderr}\n")
        return result

    def cli(self, *args: str, json: bool = True, check: bool = True, **kwargs: Any) -> Any:
        """Runs the CLI; returns its parsed JSON (``json=True``) or its stdout.

        With ``check`` a non-zero exit raises `CliError`; without, it returns None.
        """
        result = self.run_cli(*args, json=json, **kwargs)
        if result.returncode != 0:
            if check:
                raise CliError(list(args), result, "failed")
            return None
        if not json:
            return result.stdout
        try:
            return jsonlib.loads(result.stdout)
        except ValueError:
            raise CliError(list(args), result, "printed no valid JSON") from None

    # common verbs

    def create_key(self, name: str) -> tuple[str, str]:
        """Creates a key; returns (id, raw key)."""
        key = self.cli("keys", "create", "--name", name)
        return key["id"], key["raw"]

    def add_provider(
        self, name: str, kind: str, base_url: str, api_key: str | None = None
    ) -> dict[str, Any]:
        args = ["providers", "add", "--name", name, "--kind", kind, "--base-url", base_url]
        if api_key is not None:
            args += ["--api-key", api_key]
        return self.cli(*args)

    def logs(self, limit: int = 500) -> list[dict[str, Any]]:
        return self.cli("logs", "--limit", str(limit))

    def wait_for_usage(self, request_ids: Iterable[str], timeout: float = 15) -> dict[str, dict]:
        """Waits until ``logs`` has a row for every id; returns them by request id."""
        wanted = set(request_ids)

        def rows() -> dict[str, dict] | None:
            found = {row["request_id"]: row for row in self.logs() if row["request_id"] in wanted}
            return found if set(found) == wanted else None

        return wait_for(rows, timeout, interval=0.2, what=f"usage rows for {sorted(wanted)}")

    def failure_report(self) -> str:
        return (
            f"--- control plane log {self.log_path} (last {LOG_TAIL_LINES} lines)\n"
            f"{tail(self.log_path)}\n"
            f"--- CLI calls {self.cli_log_path} (last {LOG_TAIL_LINES} lines)\n"
            f"{tail(self.cli_log_path)}"
        )


# --------------------------------------------------------------------------------------------
# Envoy


_ENVOY_IDS = itertools.count(1)


# Envoy's namespaces for a filter's own stats: the wasm filter's, and a dynamic module's.
FILTER_STAT_NAMESPACES = ("wasmcustom.", "dynamicmodulescustom.")
# The native module's per-model counters are counter vecs labelled provider and model, which
# Envoy names `<name>.provider.<p>.model.<m>`; the wasm filter's are flat names.
NATIVE_MODEL_STAT = re.compile(
    r"^tokenrouter\.by_model\.(?P<what>[A-Za-z0-9_]+)\.provider\.(?P<provider>[A-Za-z0-9_-]+)"
    r"\.model\.(?P<model>[A-Za-z0-9_-]+)$"
)


def filter_stats(admin_url: str) -> dict[str, int]:
    """The filter's counters in Envoy's ``/stats``, by the wasm filter's names: namespace
    removed, and the native module's per-model counters
    (``tokenrouter.by_model.<what>.provider.<p>.model.<m>``) under the wasm filter's
    ``tokenrouter.provider.<p>.model.<m>.<what>``."""
    text = requests.get(f"{admin_url}/stats?filter=tokenrouter", timeout=5).text
    stats: dict[str, int] = {}
    for line in text.splitlines():
        name, _, value = line.partition(": ")
        if not value.strip().isdigit():
            continue
        for namespace in FILTER_STAT_NAMESPACES:
            name = name.removeprefix(namespace)
        if m := NATIVE_MODEL_STAT.match(name):
            name = f"tokenrouter.provider.{m['provider']}.model.{m['model']}.{m['what']}"
        stats[name] = stats.get(name, 0) + int(value)
    return stats


def settled_filter_stats(admin_url: str, quiet: float = 0.3, timeout: float = 10) -> dict[str, int]:
    """``filter_stats`` once they stop moving: the native module hands its counts to Envoy on
    its sync thread's tick (every 100 ms), so a baseline read right after requests could miss
    their last counts."""
    deadline = time.monotonic() + timeout
    last = filter_stats(admin_url)
    while True:
        time.sleep(quiet)
        now = filter_stats(admin_url)
        if now == last or time.monotonic() > deadline:
            return now
        last = now


class Envoy:
    """Stock Envoy running the bootstrap that ``tokenrouter envoy-bootstrap`` renders."""

    def __init__(
        self,
        binaries: Binaries,
        workdir: Path,
        control_plane: ControlPlane,
        *,
        max_request_body_bytes: int = DEFAULT_MAX_REQUEST_BODY_BYTES,
        control: str | None = None,
    ) -> None:
        self.binaries = binaries
        self.control_plane = control_plane
        # `--control` of the bootstrap: the control plane's address, or several replicas'.
        self.control = control or control_plane.grpc_addr
        self.max_request_body_bytes = max_request_body_bytes
        self.node_id = f"test-{os.getpid()}-{next(_ENVOY_IDS)}"
        self.port = free_port()
        self.admin_port = free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / "envoy.yaml"
        self.log_path = workdir / "envoy.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    # lifecycle

    def render_bootstrap(self) -> None:
        self.control_plane.cli(
            "envoy-bootstrap",
            "--listen",
            f"127.0.0.1:{self.port}",
            "--admin",
            f"127.0.0.1:{self.admin_port}",
            "--control",
            self.control,
            "--wasm",
            str(self.binaries.wasm),
            "--node-id",
            self.node_id,
            "--max-request-body-bytes",
            str(self.max_request_body_bytes),
            "--out",
            str(self.config_path),
            *(["--native"] if self.binaries.native_dir else []),
            json=False,
        )

    def start(
        self,
        *,
        providers: Iterable[str] = (),
        timeout: float = START_TIMEOUT_S,
        edit_bootstrap: Callable[[str], str] | None = None,
    ) -> Envoy:
        """Starts Envoy and waits until it is LIVE and has the clusters of ``providers``.

        ``edit_bootstrap`` rewrites the rendered bootstrap first (tests of Envoy's own replies).
        """
        self.render_bootstrap()
        if edit_bootstrap is not None:
            self.config_path.write_text(edit_bootstrap(self.config_path.read_text()))
        args = [
            str(self.binaries.envoy),
            "-c",
            str(self.config_path),
            "--concurrency",
            "2",
            # A base id of its own, so parallel Envoys never share hot-restart memory.
            "--use-dynamic-base-id",
            "--log-level",
            "info",
        ]
        native = self.binaries.native_dir
        env = child_env(ENVOY_DYNAMIC_MODULES_SEARCH_PATH=str(native) if native else None)
        self.proc = spawn(args, env=env, log_path=self.log_path)
        wait_for(self._live, timeout, interval=0.1, what=f"{self.admin_url}/ready = LIVE")
        self.wait_for_clusters(providers, timeout)
        return self

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None

    def _check_alive(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            raise ProcessExited(f"envoy exited: see {self.log_path}")

    def _live(self) -> bool:
        self._check_alive()
        response = requests.get(f"{self.admin_url}/ready", timeout=1)
        return response.status_code == 200 and response.text.strip() == "LIVE"

    def clusters(self) -> str:
        return requests.get(f"{self.admin_url}/clusters", timeout=2).text

    def counter(self, name: str) -> int:
        """An Envoy counter (0 while it does not exist yet)."""
        text = requests.get(
            f"{self.admin_url}/stats", params={"filter": f"^{re.escape(name)}$"}, timeout=2
        ).text
        for line in text.splitlines():
            stat, _, value = line.partition(": ")
            if stat == name:
                return int(value)
        return 0

    def wait_for_clusters(self, providers: Iterable[str], timeout: float = START_TIMEOUT_S) -> None:
        # Each provider's own cluster and its direct cluster arrive in the same CDS push.
        wanted = [f"tr_{kind}_{name}::" for name in providers for kind in ("provider", "direct")]

        def present() -> bool:
            self._check_alive()
            text = self.clusters()
            return all(cluster in text for cluster in wanted)

        wait_for(
            present, timeout, interval=0.1, what=f"clusters {wanted} in {self.admin_url}/clusters"
        )

    def wait_until_serving(self, key: str, timeout: float = START_TIMEOUT_S) -> None:
        """Waits until every worker of this Envoy knows ``key`` (the configuration arrived).

        The probe is malformed JSON with a valid key: once the configuration is there it is a
        400 from the filter (not 401 / 503), and it never reaches a provider. A probe answers
        from one worker; the others read the same shared data within one worker tick, so the
        wait ends two ticks after the first accepted probe.
        """

        def serving() -> bool:
            self._check_alive()
            status = self.post_chat(key, b"{").status_code
            return status not in (401, 503)

        wait_for(serving, timeout, interval=0.1, what="the filter to accept the test key")
        time.sleep(2 * WORKER_TICK_S)

    def wait_until_refused(self, key: str, timeout: float = 15) -> None:
        """Waits until every worker of this Envoy refuses ``key`` (401: revoked or unknown).

        As ``wait_until_serving``, and the probes must agree several times in a row, each on a
        new connection (Envoy spreads connections over its workers): one refusal shows that one
        worker has the new configuration, and a loaded machine can hold another's tick back.
        """

        def refused() -> bool:
            self._check_alive()
            return all(self.post_chat(key, b"{").status_code == 401 for _ in range(4))

        wait_for(refused, timeout, interval=0.1, what="every worker to refuse the key")
        time.sleep(2 * WORKER_TICK_S)

    # clients

    def openai(self, key: str) -> OpenAI:
        return OpenAI(base_url=f"{self.url}/v1", api_key=key, max_retries=0, timeout=30)

    def post_chat(
        self, key: str | None, body: dict[str, Any] | bytes, headers: dict[str, str] | None = None
    ) -> requests.Response:
        """POST /v1/chat/completions with ``requests`` (``key=None``: no Authorization)."""
        all_headers = {"content-type": "application/json", **(headers or {})}
        if key is not None:
            all_headers["authorization"] = f"Bearer {key}"
        data = body if isinstance(body, bytes) else jsonlib.dumps(body).encode()
        return requests.post(
            f"{self.url}/v1/chat/completions", data=data, headers=all_headers, timeout=30
        )

    def failure_report(self) -> str:
        return (
            f"--- envoy {self.node_id} log {self.log_path} (last {LOG_TAIL_LINES} lines)\n"
            f"{tail(self.log_path)}"
        )


# --------------------------------------------------------------------------------------------
# One test's processes


class Harness:
    """Creates the processes of one test and stops them all in ``close``."""

    def __init__(self, binaries: Binaries, workdir: Path) -> None:
        self.binaries = binaries
        self.workdir = workdir
        self._counter = itertools.count(1)
        self._control_planes: list[ControlPlane] = []
        self._envoys: list[Envoy] = []
        self._fakes: list[FakeOpenAI] = []

    def fake_openai(self, api_key: str | None = PROVIDER_SECRET, **kwargs: Any) -> FakeOpenAI:
        fake = FakeOpenAI(api_key, **kwargs).start()
        self._fakes.append(fake)
        return fake

    def control_plane(
        self,
        *,
        generated_token: bool = False,
        start: bool = True,
        env: dict[str, str] | None = None,
        admin_token: str | None = None,
    ) -> ControlPlane:
        token = None if generated_token else (admin_token or secrets.token_hex(16))
        workdir = self.workdir / f"cp{next(self._counter)}"
        control_plane = ControlPlane(self.binaries, workdir, admin_token=token, env=env)
        self._control_planes.append(control_plane)
        return control_plane.start() if start else control_plane

    def envoy(
        self,
        control_plane: ControlPlane,
        *,
        providers: Iterable[str] = (),
        max_request_body_bytes: int = DEFAULT_MAX_REQUEST_BODY_BYTES,
        control: str | None = None,
        edit_bootstrap: Callable[[str], str] | None = None,
    ) -> Envoy:
        workdir = self.workdir / f"envoy{next(self._counter)}"
        envoy = Envoy(
            self.binaries,
            workdir,
            control_plane,
            max_request_body_bytes=max_request_body_bytes,
            control=control,
        )
        self._envoys.append(envoy)
        return envoy.start(providers=providers, edit_bootstrap=edit_bootstrap)

    def close(self) -> None:
        for envoy in self._envoys:
            envoy.stop()
        for control_plane in self._control_planes:
            control_plane.stop()
        for fake in self._fakes:
            fake.stop()

    def failure_report(self) -> str:
        parts = [envoy.failure_report() for envoy in self._envoys]
        parts += [control_plane.failure_report() for control_plane in self._control_planes]
        parts += [fake.describe() for fake in self._fakes]
        return "\n".join(parts) or "(no processes were started)"


@dataclass
class Stack:
    """Envoy + control plane + the fake provider ``openai``, and one key."""

    control_plane: ControlPlane
    envoy: Envoy
    provider: FakeOpenAI
    key_id: str
    key: str

    def client(self) -> OpenAI:
        return self.envoy.openai(self.key)

    def usage(self, *request_ids: str, timeout: float = 15) -> dict[str, dict[str, Any]]:
        return self.control_plane.wait_for_usage(request_ids, timeout)
