"""The `tokenrouter` CLI against a real control plane: output forms and exit codes."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from harness import ControlPlane, Stack, free_port

EXIT_USER_ERROR = 1
EXIT_NETWORK_ERROR = 2


def test_keys_create_list_revoke_json(control_plane: ControlPlane) -> None:
    created = control_plane.cli("keys", "create", "--name", "ci-bot")
    assert created["name"] == "ci-bot"
    assert created["raw"].startswith("sk-tr-")
    assert created["raw"].startswith(created["key_prefix"])
    assert created["key_prefix"].startswith("sk-tr-")
    assert created["key_prefix"] != created["raw"]
    assert created["status"] != "revoked"
    assert isinstance(created["created_at_unix_ms"], int)
    assert created["workspace_id"]

    result = control_plane.run_cli("keys", "list")
    assert result.returncode == 0, result.stderr
    assert created["raw"] not in result.stdout, "raw keys are shown once, never listed"
    [listed] = [k for k in control_plane.cli("keys", "list") if k["id"] == created["id"]]
    assert listed["name"] == "ci-bot"
    assert listed.get("raw") is None

    revoked = control_plane.cli("keys", "revoke", created["id"])
    assert revoked["id"] == created["id"]
    assert revoked["status"] == "revoked"
    [listed] = [k for k in control_plane.cli("keys", "list") if k["id"] == created["id"]]
    assert listed["status"] == "revoked"


def test_keys_human_output(control_plane: ControlPlane) -> None:
    created = control_plane.cli("keys", "create", "--name", "human-key", json=False)
    assert "sk-tr-" in created, "the raw key is shown once on creation"

    listing = control_plane.cli("keys", "list", json=False)
    assert "human-key" in listing
    assert "{" not in listing, "without --json the output is a table, not JSON"

    key_id = next(k["id"] for k in control_plane.cli("keys", "list") if k["name"] == "human-key")
    assert "revoked" in control_plane.cli("keys", "revoke", key_id, json=False)


def test_unreachable_control_plane_is_a_network_error(control_plane: ControlPlane) -> None:
    result = control_plane.run_cli("keys", "list", api_url="http://127.0.0.1:1")
    assert result.returncode == EXIT_NETWORK_ERROR, result
    # With --json the error is machine-readable on stdout; without it, a message on stderr.
    assert json.loads(result.stdout)["error"]["type"] == "network_error"
    human = control_plane.run_cli("keys", "list", json=False, api_url="http://127.0.0.1:1")
    assert human.returncode == EXIT_NETWORK_ERROR, human
    assert "127.0.0.1:1" in human.stderr


def test_user_errors_exit_1(control_plane: ControlPlane) -> None:
    unknown = control_plane.run_cli("keys", "revoke", "key_does_not_exist")
    assert unknown.returncode == EXIT_USER_ERROR, unknown

    wrong_token = control_plane.run_cli("keys", "list", env={"TOKENROUTER_ADMIN_TOKEN": "wrong"})
    assert wrong_token.returncode == EXIT_USER_ERROR, wrong_token

    bad_kind = control_plane.run_cli(
        "providers", "add", "--name", "x", "--kind", "carrier-pigeon",
        "--base-url", "http://127.0.0.1:9/v1",
    )  # fmt: skip
    assert bad_kind.returncode == EXIT_USER_ERROR, bad_kind


def test_providers_add_list_remove(control_plane: ControlPlane) -> None:
    added = control_plane.add_provider("local", "openai", "http://127.0.0.1:9/v1", "sk-secret")
    assert isinstance(added.pop("created_at_unix_ms"), int)
    assert added == {
        "name": "local",
        "kind": "openai",
        "base_url": "http://127.0.0.1:9/v1",
        "has_credential": True,
        "fallback_credentials": 0,
        "cluster": "tr_provider_local",
        "enabled": True,
    }
    listed = control_plane.cli("providers", "list")
    assert [p["name"] for p in listed] == ["local"]
    assert "sk-secret" not in control_plane.run_cli("providers", "list").stdout

    again = control_plane.run_cli(
        "providers", "add", "--name", "local", "--kind", "openai",
        "--base-url", "http://127.0.0.1:10/v1",
    )  # fmt: skip
    assert again.returncode == EXIT_USER_ERROR, "already exists without --replace"
    replaced = control_plane.cli(
        "providers", "add", "--name", "local", "--kind", "openai",
        "--base-url", "http://127.0.0.1:10/v1", "--replace",
    )  # fmt: skip
    assert replaced["base_url"] == "http://127.0.0.1:10/v1"

    control_plane.cli("providers", "remove", "local", json=False)
    assert control_plane.cli("providers", "list") == []
    missing = control_plane.run_cli("providers", "remove", "local")
    assert missing.returncode == EXIT_USER_ERROR, missing


def test_models_catalogue(control_plane: ControlPlane) -> None:
    models = {model["id"]: model for model in control_plane.cli("models")}
    mini = models["openai/gpt-4o-mini"]
    assert mini["provider_kind"] == "openai"
    assert mini["upstream_model"] == "gpt-4o-mini"
    assert mini["input_price_micros_per_mtok"] == 150_000
    assert mini["output_price_micros_per_mtok"] == 600_000
    assert mini["cached_input_price_micros_per_mtok"] == 75_000
    gpt4o = models["openai/gpt-4o"]
    assert gpt4o["input_price_micros_per_mtok"] == 2_500_000
    assert gpt4o["output_price_micros_per_mtok"] == 10_000_000
    assert gpt4o["cached_input_price_micros_per_mtok"] == 1_250_000


# --------------------------------------------------------------------------------------------
# `env` and `test`: a gateway key for a project's environment, and one request to check it.

EXIT_OK = 0


def gateway_cli(
    control_plane: ControlPlane,
    *args: str,
    data_dir: Path,
    gateway_url: str | None = None,
    json: bool = False,
) -> subprocess.CompletedProcess[str]:
    """Runs a verb with ``data_dir`` as the data directory (where `keys create` caches the raw
    key) and, when given, ``--gateway-url``."""
    extra = ["--gateway-url", gateway_url] if gateway_url is not None else []
    return control_plane.run_cli(
        *args, *extra, json=json, env={"TOKENROUTER_DATA_DIR": str(data_dir)}
    )


def test_env_prints_the_two_lines_from_the_flag_or_the_cached_key(
    control_plane: ControlPlane, tmp_path: Path
) -> None:
    data_dir = control_plane.data_dir
    gateway = "http://127.0.0.1:8080"
    given = gateway_cli(control_plane, "env", "--key", "sk-tr-given", data_dir=data_dir)
    assert given.returncode == EXIT_OK, given
    assert given.stdout == f"OPENAI_API_KEY=sk-tr-given\nOPENAI_BASE_URL={gateway}/v1\n"

    # Nothing cached yet (and no key given): a user error naming `keys create`.
    empty = tmp_path / "empty"
    empty.mkdir()
    missing = gateway_cli(control_plane, "env", data_dir=empty)
    assert missing.returncode == EXIT_USER_ERROR, missing
    assert missing.stdout == ""
    assert "no API key available" in missing.stderr
    assert "tokenrouter keys create" in missing.stderr
    missing_json = gateway_cli(control_plane, "env", data_dir=empty, json=True)
    assert missing_json.returncode == EXIT_USER_ERROR, missing_json
    assert "no API key available" in json.loads(missing_json.stdout)["error"]["message"]

    # `keys create` caches the raw key (owner-only); `env` then needs no key.
    created = json.loads(
        gateway_cli(
            control_plane, "keys", "create", "--name", "cached", data_dir=data_dir, json=True
        ).stdout
    )
    cache = data_dir / "last_key"
    assert cache.read_text().strip() == created["raw"]
    assert cache.stat().st_mode & 0o777 == 0o600
    cached = gateway_cli(
        control_plane, "env", data_dir=data_dir, gateway_url="http://gw.example:9000/"
    )
    assert cached.returncode == EXIT_OK, cached
    assert cached.stdout.splitlines() == [
        f"OPENAI_API_KEY={created['raw']}",
        "OPENAI_BASE_URL=http://gw.example:9000/v1",
    ]
    as_json = json.loads(gateway_cli(control_plane, "env", data_dir=data_dir, json=True).stdout)
    assert as_json == {"OPENAI_API_KEY": created["raw"], "OPENAI_BASE_URL": f"{gateway}/v1"}
    anthropic = gateway_cli(control_plane, "env", "--anthropic", data_dir=data_dir)
    assert anthropic.stdout.splitlines()[2:] == [
        f"ANTHROPIC_API_KEY={created['raw']}",
        f"ANTHROPIC_BASE_URL={gateway}",
    ]

    # --no-cache leaves the cached key alone.
    gateway_cli(control_plane, "keys", "create", "--name", "x", "--no-cache", data_dir=data_dir)
    assert cache.read_text().strip() == created["raw"]


def test_test_verb_round_trip_revoked_broke_and_unreachable(stack: Stack, tmp_path: Path) -> None:
    control_plane, url = stack.control_plane, stack.envoy.url
    data_dir = tmp_path / "cli"
    data_dir.mkdir()

    ok = gateway_cli(control_plane, "test", "--key", stack.key, data_dir=data_dir, gateway_url=url)
    assert ok.returncode == EXIT_OK, ok
    first, reply = ok.stdout.splitlines()
    assert first == "OK connected (openai/gpt-4o-mini)", ok.stdout
    assert reply.startswith("reply: ") and "OK" in reply, ok.stdout
    as_json = json.loads(
        gateway_cli(
            control_plane, "test", "--key", stack.key, data_dir=data_dir, gateway_url=url, json=True
        ).stdout
    )
    assert as_json["ok"] is True
    assert (as_json["model"], as_json["provider"]) == ("openai/gpt-4o-mini", "openai")
    assert as_json["request_id"].startswith("req_")
    assert "OK" in as_json["reply"]
    assert isinstance(as_json["latency_ms"], int)

    # With no --key: the key `keys create` cached.
    created = json.loads(
        gateway_cli(
            control_plane, "keys", "create", "--name", "cached", data_dir=data_dir, json=True
        ).stdout
    )
    stack.envoy.wait_until_serving(created["raw"], 15)
    cached = gateway_cli(control_plane, "test", data_dir=data_dir, gateway_url=url)
    assert cached.returncode == EXIT_OK, cached
    assert cached.stdout.startswith("OK connected ("), cached

    # A revoked key: the gateway's 401, exit 1.
    control_plane.cli("keys", "revoke", created["id"])
    stack.envoy.wait_until_refused(created["raw"])
    revoked = gateway_cli(control_plane, "test", data_dir=data_dir, gateway_url=url)
    assert revoked.returncode == EXIT_USER_ERROR, revoked
    assert "401" in revoked.stderr and "authentication_error" in revoked.stderr, revoked
    revoked_json = json.loads(
        gateway_cli(control_plane, "test", data_dir=data_dir, gateway_url=url, json=True).stdout
    )
    assert revoked_json["ok"] is False
    assert revoked_json["status"] == 401
    assert revoked_json["error"]["type"] == "authentication_error"

    # No credit: the gateway's 402, exit 1, and the cue to top up.
    broke = control_plane.cli("keys", "create", "--name", "broke", "--balance", "0")["raw"]
    stack.envoy.wait_until_serving(broke, 15)
    refused = gateway_cli(
        control_plane, "test", "--key", broke, data_dir=data_dir, gateway_url=url
    )
    assert refused.returncode == EXIT_USER_ERROR, refused
    assert "402" in refused.stderr and "insufficient_quota" in refused.stderr, refused
    assert "top up" in refused.stderr and "tokenrouter topup" in refused.stderr, refused
    refused_json = json.loads(
        gateway_cli(
            control_plane, "test", "--key", broke, data_dir=data_dir, gateway_url=url, json=True
        ).stdout
    )
    assert (refused_json["ok"], refused_json["status"]) == (False, 402)
    assert refused_json["error"]["type"] == "insufficient_quota"
    assert "top up" in refused_json["hint"]

    # Nothing listening: a network error, exit 2.
    closed = f"http://127.0.0.1:{free_port()}"
    unreachable = gateway_cli(
        control_plane, "test", "--key", stack.key, data_dir=data_dir, gateway_url=closed
    )
    assert unreachable.returncode == EXIT_NETWORK_ERROR, unreachable
    assert closed.removeprefix("http://") in unreachable.stderr
    unreachable_json = json.loads(
        gateway_cli(
            control_plane, "test", "--key", stack.key, data_dir=data_dir, gateway_url=closed,
            json=True,
        ).stdout
    )  # fmt: skip
    assert unreachable_json["ok"] is False
    assert unreachable_json["status"] is None
    assert unreachable_json["error"]["type"] == "network_error"
