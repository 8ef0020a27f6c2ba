"""The REST management API (`/api/v1`) against a real `tokenrouter serve`: seed 003's Python SDK
examples for routing and firewall rules run as HTTP calls, auth (admin token, gateway key,
none), the error envelope, REST writes reaching real Envoy, balances and Stripe top-ups (against a
fake Stripe API), and a schemathesis run generated from the API's own OpenAPI document."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import requests

from harness import ControlPlane, Harness, Stack, wait_for

# Bounded so the property run takes well under a minute on two cores.
SCHEMATHESIS_MAX_EXAMPLES = 25
SCHEMATHESIS_TIMEOUT_S = 120
# Every check but `positive_data_acceptance` (the schema cannot say everything the service
# validates: regexes the engine compiles, routing conditions, unique names, routable backends,
# so some schema-valid bodies are rightly refused with 400/409) and
# `object_level_authorization` (needs two users' credentials configured).
SCHEMATHESIS_CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
        "negative_data_rejection",
        "missing_required_header",
        "unsupported_method",
        "use_after_free",
        "ensure_resource_availability",
        "ignored_auth",
    ]
)


def namespace(value: Any) -> Any:
    """JSON → attribute access, the way the seed's SDK objects read (``rule.data.id``)."""
    if isinstance(value, dict):
        return SimpleNamespace(**{k: namespace(v) for k, v in value.items()})
    if isinstance(value, list):
        return [namespace(v) for v in value]
    return value


class ApiError(Exception):
    def __init__(self, response: requests.Response) -> None:
        self.status = response.status_code
        body = response.json()["error"]
        self.type = body["type"]
        self.message = body["message"]
        super().__init__(f"{self.status} {self.type}: {self.message}")


class Rest:
    """Plain HTTP calls to ``/api/v1`` with a bearer token (or none)."""

    def __init__(self, control_plane: ControlPlane, token: str | None) -> None:
        self.base = f"{control_plane.rest_url}/api/v1"
        self.token = token
        # Every request, for the assertions that the SDK calls map to the seed's HTTP shapes.
        self.calls: list[tuple[str, str, Any]] = []

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        headers = kwargs.pop("headers", {})
        if self.token is not None:
            headers["Authorization"] = f"Bearer {self.token}"
        self.calls.append((method, path, kwargs.get("json")))
        return requests.request(
            method, f"{self.base}{path}", headers=headers, timeout=10, **kwargs
        )

    def ok(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.request(method, path, **kwargs)
        if response.status_code >= 400:
            raise ApiError(response)
        return response.json()


class Resource:
    """``client.<resource>`` of seed 003's SDK, over the REST API."""

    def __init__(self, rest: Rest, name: str) -> None:
        self.rest = rest
        self.path = f"/{name}"

    def create(self, **fields: Any) -> Any:
        return namespace(self.rest.ok("POST", self.path, json=fields))

    def list(self) -> Any:
        return namespace(self.rest.ok("GET", self.path))

    def retrieve(self, rule_id: int) -> Any:
        return namespace(self.rest.ok("GET", f"{self.path}/{rule_id}"))

    def update(self, rule_id: int, **fields: Any) -> Any:
        return namespace(self.rest.ok("PATCH", f"{self.path}/{rule_id}", json=fields))

    def delete(self, rule_id: int) -> Any:
        return namespace(self.rest.ok("DELETE", f"{self.path}/{rule_id}"))


class Client:
    """The shape of seed 003's ``Tokenrouter`` client for the two rule resources."""

    def __init__(self, rest: Rest) -> None:
        self.routing_rules = Resource(rest, "routing_rules")
        self.firewall_rules = Resource(rest, "firewall_rules")


@pytest.fixture
def admin(control_plane: ControlPlane) -> Rest:
    return Rest(control_plane, control_plane.admin_token)


STRIPE_SECRET_KEY = "sk_test_fake"
STRIPE_WEBHOOK_SECRET = "whsec_test_fake"


class FakeStripe:
    """Stripe's `POST /v1/checkout/sessions` on 127.0.0.1: records each form, answers a session
    ``cs_test_<n>``."""

    def __init__(self) -> None:
        self.forms: list[dict[str, str]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                length = int(self.headers.get("Content-Length", "0"))
                form = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode()))
                ok = (
                    self.path == "/v1/checkout/sessions"
                    and self.headers.get("Authorization") == f"Bearer {STRIPE_SECRET_KEY}"
                )
                fake.forms.append(form)
                n = len(fake.forms)
                session = {
                    "id": f"cs_test_{n}", "object": "checkout.session",
                    "url": f"https://checkout.stripe.com/c/pay/cs_test_{n}",
                    "expires_at": 1900000000,
                }
                refused = {"error": {"message": "Invalid API Key provided"}}
                body = json.dumps(session if ok else refused).encode()
                self.send_response(200 if ok else 401)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_stripe() -> Iterator[FakeStripe]:
    fake = FakeStripe()
    try:
        yield fake
    finally:
        fake.close()


@pytest.fixture
def paying_control_plane(harness: Harness, fake_stripe: FakeStripe) -> ControlPlane:
    """A control plane whose payment backend is Stripe, at the fake."""
    return harness.control_plane(
        env={
            "TOKENROUTER_PAYMENTS": "stripe",
            "STRIPE_SECRET_KEY": STRIPE_SECRET_KEY,
            "STRIPE_WEBHOOK_SECRET": STRIPE_WEBHOOK_SECRET,
            "TOKENROUTER_STRIPE_API_BASE": fake_stripe.base_url,
        }
    )


def stripe_signature(payload: bytes, secret: str = STRIPE_WEBHOOK_SECRET) -> str:
    """What Stripe sends: ``t=<now>,v1=<HMAC-SHA256 of "<t>.<payload>">``."""
    t = int(time.time())
    mac = hmac.new(secret.encode(), f"{t}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def test_seed_routing_rules_examples(admin: Rest) -> None:
    client = Client(admin)

    rule = client.routing_rules.create(
        name="Coding Tasks → OpenAI",
        priority=100,
        is_enabled=True,
        match_json={"task": "coding"},
        action_json={"set_provider": "openai", "set_model": "gpt-4o"},
    )
    print(f"Created rule: {rule.data.id}")
    rule_id = rule.data.id
    assert admin.calls[-1] == (
        "POST",
        "/routing_rules",
        {
            "name": "Coding Tasks → OpenAI",
            "priority": 100,
            "is_enabled": True,
            "match_json": {"task": "coding"},
            "action_json": {"set_provider": "openai", "set_model": "gpt-4o"},
        },
    )
    assert vars(rule.data.match_json) == {"task": "coding"}
    assert vars(rule.data.action_json) == {"set_provider": "openai", "set_model": "gpt-4o"}

    rules = client.routing_rules.list()
    for r in rules.data:
        print(f"{r.name} (Priority: {r.priority})")
    assert [(r.name, r.priority) for r in rules.data] == [("Coding Tasks → OpenAI", 100)]

    rule = client.routing_rules.retrieve(rule_id)
    print(rule.data)
    assert rule.data.name == "Coding Tasks → OpenAI"

    client.routing_rules.update(rule_id, priority=150, is_enabled=False)
    assert admin.calls[-1] == (
        "PATCH",
        f"/routing_rules/{rule_id}",
        {"priority": 150, "is_enabled": False},
    )
    updated = client.routing_rules.retrieve(rule_id).data
    assert (updated.priority, updated.is_enabled) == (150, False)
    assert vars(updated.match_json) == {"task": "coding"}

    client.routing_rules.delete(rule_id)
    with pytest.raises(ApiError) as missing:
        client.routing_rules.retrieve(rule_id)
    assert (missing.value.status, missing.value.type) == (404, "not_found_error")

    # Every match_json and action_json example of the seed is accepted.
    matches = [
        {"contains": "code review"},
        {"metadata_equals": {"task": "documentation"}},
        {"mode": "balanced"},
        {"task": "coding", "mode": "quality"},
    ]
    actions = [
        {"set_provider": "anthropic"},
        {"set_model": "gpt-4o"},
        {"set_mode": "cost"},
        {"add_warning": {"message": "Using beta routing"}},
        {"set_provider": "openai", "set_model": "gpt-4o", "set_mode": "quality"},
    ]
    for i, match in enumerate(matches):
        client.routing_rules.create(
            name=f"match {i}", priority=10, is_enabled=True, match_json=match,
            action_json={"set_mode": "cost"},
        )
    for i, action in enumerate(actions):
        client.routing_rules.create(
            name=f"action {i}", priority=10, is_enabled=True,
            match_json={"task": "coding"}, action_json=action,
        )
    # "Create multiple rules for different scenarios".
    client.routing_rules.create(
        name="Complex Analysis → GPT-4",
        priority=100,
        is_enabled=True,
        match_json={"contains": ["analyze", "complex"], "mode": "quality"},
        action_json={"set_provider": "openai", "set_model": "gpt-4o"},
    )
    client.routing_rules.create(
        name="Simple Tasks → Cost Mode",
        priority=50,
        is_enabled=True,
        match_json={"contains": ["summarize", "list"]},
        action_json={"set_mode": "cost"},
    )
    names = [r.name for r in client.routing_rules.list().data]
    assert len(names) == len(matches) + len(actions) + 2
    assert names[-2:] == ["Complex Analysis → GPT-4", "Simple Tasks → Cost Mode"]

    # What the engine refuses is a 400 in the seeds' envelope, with the reason.
    with pytest.raises(ApiError) as refused:
        client.routing_rules.create(
            name="bad", priority=1, is_enabled=True, match_json={"phase_of_moon": "full"},
            action_json={"set_mode": "cost"},
        )
    assert (refused.value.status, refused.value.type) == (400, "invalid_request_error")
    assert "phase_of_moon" in refused.value.message


def test_seed_firewall_rules_examples(admin: Rest, control_plane: ControlPlane) -> None:
    client = Client(admin)

    # Block credit card numbers
    cards = client.firewall_rules.create(
        name="Block Credit Cards",
        priority=100,
        is_enabled=True,
        scope="prompt",
        type="regex",
        pattern=r"\d{4}[\s-]?\d{4}[\s-]?\d{4}[\s-]?\d{4}",
        action="block",
    )
    # Mask email addresses in responses
    client.firewall_rules.create(
        name="Mask Email Addresses",
        priority=80,
        is_enabled=True,
        scope="response",
        type="regex",
        pattern=r"[a-zA-Z0-9._%+-]+@[a-zA-Z0-9.-]+\.[a-zA-Z]{2,}",
        action="mask",
        replacement="[EMAIL_REDACTED]",
    )
    # Warn when profanity detected
    client.firewall_rules.create(
        name="Warn on Profanity",
        priority=50,
        is_enabled=True,
        scope="response",
        type="substring",
        pattern="inappropriate",
        action="warn",
    )

    rules = client.firewall_rules.list()
    for rule in rules.data:
        print(f"{rule.name} ({rule.action})")
        print(f" Scope: {rule.scope}")
        print(f" Pattern: {rule.pattern}")
    assert [(r.name, r.action, r.scope) for r in rules.data] == [
        ("Block Credit Cards", "block", "prompt"),
        ("Mask Email Addresses", "mask", "response"),
        ("Warn on Profanity", "warn", "response"),
    ]
    assert rules.data[1].replacement == "[EMAIL_REDACTED]"
    assert rules.data[0].type == "regex"

    rule_id = cards.data.id  # the seed's 123
    rule = client.firewall_rules.retrieve(rule_id)
    print(rule.data)
    assert rule.data.pattern == r"\d{4}[\s-]?\d{4}[\s-]?\d{4}[\s-]?\d{4}"

    # Disable temporarily
    client.firewall_rules.update(rule_id, is_enabled=False)
    assert client.firewall_rules.retrieve(rule_id).data.is_enabled is False
    # Change action
    client.firewall_rules.update(rule_id, action="warn")
    assert admin.calls[-1] == ("PATCH", f"/firewall_rules/{rule_id}", {"action": "warn"})
    after = client.firewall_rules.retrieve(rule_id).data
    assert (after.action, after.is_enabled) == ("warn", False)

    # The gRPC CLI sees the same rules (one service behind both APIs).
    by_cli = {r["name"]: r for r in control_plane.cli("firewall", "list")}
    assert by_cli["Block Credit Cards"]["action"] == "warn"

    client.firewall_rules.delete(rule_id)
    with pytest.raises(ApiError) as missing:
        client.firewall_rules.retrieve(rule_id)
    assert missing.value.status == 404

    # The layered rules and every pattern of the seed's cheat sheet are accepted.
    client.firewall_rules.create(
        name="Block PII in Input", priority=100, is_enabled=True, scope="prompt",
        type="regex", pattern=r"\d{3}-\d{2}-\d{4}|\d{16}", action="block",
    )
    client.firewall_rules.create(
        name="Mask Emails in Output", priority=90, is_enabled=True, scope="response",
        type="regex", pattern=r"[a-zA-Z0-9._%+-]+@[a-zA-Z0-9.-]+\.[a-zA-Z]{2,}",
        action="mask", replacement="[REDACTED]",
    )
    client.firewall_rules.create(
        name="Warn on Sensitive Terms", priority=80, is_enabled=True, scope="response",
        type="substring", pattern="confidential", action="warn",
    )
    patterns = {
        "SSN": r"\d{3}-\d{2}-\d{4}",
        "Phone": r"\+?1?\s?\(?\d{3}\)?[\s.-]?\d{3}[\s.-]?\d{4}",
        "Email": r"[a-zA-Z0-9._%+-]+@[a-zA-Z0-9.-]+\.[a-zA-Z]{2,}",
        "API key": r"sk-[a-zA-Z0-9]{32,}",
        "Card": r"\d{4}[\s-]?\d{4}[\s-]?\d{4}[\s-]?\d{4}",
    }
    for name, pattern in patterns.items():
        client.firewall_rules.create(
            name=f"cheat sheet: {name}", priority=1, is_enabled=True, scope="prompt",
            type="regex", pattern=pattern, action="block",
        )
    assert len(client.firewall_rules.list().data) == 2 + 3 + len(patterns)

    with pytest.raises(ApiError) as refused:
        client.firewall_rules.create(
            name="broken", priority=1, is_enabled=True, scope="prompt", type="regex",
            pattern="(", action="block",
        )
    assert (refused.value.status, refused.value.type) == (400, "invalid_request_error")


def test_auth_and_error_envelope(control_plane: ControlPlane, admin: Rest) -> None:
    key = admin.ok("POST", "/keys", json={"name": "reader"})["data"]
    assert key["raw"].startswith("sk-tr-")

    for token in (None, "wrong-token", "sk-tr-not-a-key"):
        response = Rest(control_plane, token).request("GET", "/keys")
        assert response.status_code == 401
        assert response.json()["error"]["type"] == "authentication_error"
        assert response.json()["error"]["code"] == 401

    gateway = Rest(control_plane, key["raw"])
    assert gateway.request("GET", "/logs").status_code == 200
    assert gateway.request("GET", "/usage", params={"days": 7}).status_code == 200
    for method, path in [("GET", "/keys"), ("GET", "/routing_rules"), ("POST", "/preview")]:
        response = gateway.request(method, path, json={})
        assert response.status_code == 403, (method, path)
        assert response.json()["error"]["type"] == "permission_error"

    bad_json = admin.request(
        "POST", "/routing_rules", data=b"{", headers={"Content-Type": "application/json"}
    )
    assert bad_json.status_code == 400
    assert bad_json.json()["error"]["type"] == "invalid_request_error"
    no_type = admin.request("POST", "/routing_rules", data=b"{}")
    assert no_type.status_code == 415
    assert admin.request("GET", "/nope").json()["error"]["type"] == "not_found_error"

    # The admin token and keys the CLI works with are the same ones.
    cli_key = control_plane.cli("keys", "create", "--name", "from-cli")
    listed = [k["id"] for k in admin.ok("GET", "/keys")["data"]]
    assert cli_key["id"] in listed

    document = requests.get(f"{control_plane.rest_url}/api/v1/openapi.json", timeout=5).json()
    assert "/api/v1/routing_rules/{id}" in document["paths"]
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


def test_rest_writes_reach_the_edge_and_keys_read_their_own_usage(stack: Stack) -> None:
    admin = Rest(stack.control_plane, stack.control_plane.admin_token)
    Client(admin).firewall_rules.create(
        name="Block Credit Cards", priority=100, is_enabled=True, scope="prompt",
        type="regex", pattern=r"\d{4}[\s-]?\d{4}[\s-]?\d{4}[\s-]?\d{4}", action="block",
    )
    card = {
        "model": "openai/gpt-4o-mini",
        "messages": [{"role": "user", "content": "My card is 4532-1234-5678-9010"}],
    }
    wait_for(
        lambda: stack.envoy.post_chat(stack.key, card).status_code == 422,
        timeout=10,
        what="the REST-created rule to reach the edge",
    )
    hello = {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    reply = stack.envoy.post_chat(stack.key, hello)
    assert reply.status_code == 200, reply.text
    request_id = reply.headers["x-request-id"]
    stack.usage(request_id)

    own = Rest(stack.control_plane, stack.key)
    logs = own.ok("GET", "/logs", params={"limit": 100})["data"]
    assert request_id in [row["request_id"] for row in logs]
    assert {row["key_id"] for row in logs} == {stack.key_id}
    usage = own.ok("GET", "/usage", params={"days": 1})
    assert usage["range_days"] == 1
    assert usage["total_requests"] >= 1
    assert usage["total_tokens_in"] > 0
    blocked = own.ok("GET", "/logs", params={"status": 422})["data"]
    assert blocked and all(row["status"] == 422 for row in blocked)


def test_seed_topup_balance_and_stripe_webhook(
    paying_control_plane: ControlPlane, fake_stripe: FakeStripe
) -> None:
    """Seed 002's `topup` / `balance` shapes over REST, as a gateway key, and the Stripe webhook
    that credits the key once."""
    control_plane = paying_control_plane
    admin = Rest(control_plane, control_plane.admin_token)
    created = admin.ok("POST", "/keys", json={"name": "buyer", "balance_usd": "0"})["data"]
    key_id, raw = created["id"], created["raw"]
    assert created["balance_usd"] == "0"
    own = Rest(control_plane, raw)

    balance = own.ok("GET", "/balance")
    assert (balance["balance_usd"], balance["currency"], balance["id"]) == ("0", "USD", key_id)

    topup = own.ok("POST", "/topup", json={"amount_usd": "5"})
    assert topup == {
        "checkout_url": "https://checkout.stripe.com/c/pay/cs_test_1", "session_id": "cs_test_1",
        "amount_usd": "5", "expires_at": 1900000000, "key_id": key_id,
    }
    form = fake_stripe.forms[0]
    assert form["mode"] == "payment"
    assert form["line_items[0][price_data][unit_amount]"] == "500"
    assert form["line_items[0][price_data][currency]"] == "usd"
    assert form["metadata[key_id]"] == key_id
    not_cents = own.request("POST", "/topup", json={"amount_usd": "5.001"})
    assert not_cents.status_code == 400, not_cents.text
    assert "whole cents" in not_cents.json()["error"]["message"]

    event = json.dumps({
        "id": "evt_1", "type": "checkout.session.completed",
        "data": {"object": {"id": "cs_test_1", "payment_status": "paid", "amount_total": 500,
                            "currency": "usd", "metadata": {"key_id": key_id}}},
    }).encode()
    webhook = f"{control_plane.rest_url}/api/v1/webhooks/stripe"
    for outcome in ("credited", "duplicate"):
        delivered = requests.post(
            webhook, data=event, timeout=10,
            headers={"Stripe-Signature": stripe_signature(event),
                     "Content-Type": "application/json"},
        )
        assert delivered.status_code == 200, delivered.text
        assert delivered.json()["outcome"] == outcome
    forged = requests.post(
        webhook, data=event, timeout=10,
        headers={"Stripe-Signature": stripe_signature(event, "whsec_wrong")},
    )
    assert forged.status_code == 400
    assert own.ok("GET", "/balance")["balance_usd"] == "5"

    # The CLI as the key (TOKENROUTER_API_KEY) reads the same balance over REST.
    by_cli = control_plane.cli(
        "balance", env={"TOKENROUTER_API_KEY": raw, "TOKENROUTER_REST_URL": control_plane.rest_url}
    )
    assert (by_cli["balance_usd"], by_cli["currency"]) == ("5", "USD")


def test_schemathesis_finds_no_server_errors(
    paying_control_plane: ControlPlane, tmp_path: Path
) -> None:
    """Property-based run of every operation from the API's own OpenAPI document: zero 5xx,
    every answer conforming to its documented status, content type and schema. The control
    plane has a payment backend (a fake Stripe API), so `/topup` and the webhook run their
    real paths; without one `/topup` answers a documented 503."""
    control_plane = paying_control_plane
    command = [
        sys.executable, "-m", "schemathesis.cli", "run",
        f"{control_plane.rest_url}/api/v1/openapi.json",
        "--header", f"Authorization: Bearer {control_plane.admin_token}",
        "--checks", SCHEMATHESIS_CHECKS,
        "--max-examples", str(SCHEMATHESIS_MAX_EXAMPLES),
        # One worker thread: CPython 3.11 before 3.11.9 can raise a spurious
        # "AST constructor recursion depth mismatch" SystemError when two threads parse
        # source at once (python/cpython#106905), and Hypothesis parses lambdas' source
        # while describing strategies.
        "--workers", "1",
        # Reproducible in CI; change the seed locally to explore further.
        "--seed", "2026",
        "--generation-database", "none",
        "--no-color",
    ]
    started = time.monotonic()
    result = subprocess.run(
        command, cwd=tmp_path, capture_output=True, text=True,
        timeout=SCHEMATHESIS_TIMEOUT_S, check=False,
    )
    elapsed = time.monotonic() - started
    output = f"{result.stdout}\n{result.stderr}"
    assert result.returncode == 0, f"schemathesis failed after {elapsed:.0f}s:\n{output}"
    passed = re.search(r"\b(\d+) passed\b", output)
    assert passed and int(passed.group(1)) > 0, output
    # The control plane never answered 5xx and is still healthy.
    assert requests.get(f"{control_plane.rest_url}/healthz", timeout=5).status_code == 200
    assert "internal error" not in control_plane.log_path.read_text()
