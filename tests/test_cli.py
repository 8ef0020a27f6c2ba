"""The `tokenrouter` CLI against a real control plane: output forms and exit codes."""

from __future__ import annotations

import json

from harness import ControlPlane

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
