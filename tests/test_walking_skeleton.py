"""The walking skeleton, end to end: OpenAI SDK → Envoy + wasm filter → fake OpenAI provider,
with configuration and usage going through the real control plane."""

from __future__ import annotations

import stat
import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import requests
from openai import OpenAI

from fakes.openai_fake import reply_for, usage_for
from harness import PROVIDER_SECRET, WORKER_TICK_S, ControlPlane, Harness, Stack, wait_for


@dataclass(frozen=True)
class Prices:
    """Catalogue prices in micro-dollars per million tokens (= pico-dollars per token)."""

    input: int
    output: int
    cached_input: int

    def cost_picos(self, usage: dict[str, Any]) -> int:
        cached = usage["prompt_tokens_details"]["cached_tokens"]
        return (
            (usage["prompt_tokens"] - cached) * self.input
            + cached * self.cached_input
            + usage["completion_tokens"] * self.output
        )


GPT_4O_MINI = Prices(input=150_000, output=600_000, cached_input=75_000)


def user(content: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": content}]


def chat(client: OpenAI, content: str, model: str = "openai/gpt-4o-mini") -> tuple[str, Any]:
    """One non-streaming completion; returns (x-request-id, completion)."""
    raw = client.chat.completions.with_raw_response.create(model=model, messages=user(content))
    return raw.headers["x-request-id"], raw.parse()


def assert_error_envelope(response: requests.Response, status: int, error_type: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    error = body["error"]
    assert error["type"] == error_type, body
    assert error["code"] == status, body
    assert error["http_status"] == status, body
    assert isinstance(error["message"], str) and error["message"], body
    assert "provider" in error and "raw" in error, body
    assert isinstance(body["request_id"], str) and body["request_id"], body
    if "x-request-id" in response.headers:
        assert response.headers["x-request-id"] == body["request_id"]


def assert_no_internal_headers(headers: dict[str, str]) -> None:
    leaked = [name for name in headers if name.lower().startswith(("x-tr-", "x-envoy-"))]
    assert leaked == [], f"internal headers leaked: {leaked}"


def assert_usage_row(row: dict[str, Any], usage: dict[str, Any], prices: Prices) -> None:
    assert row["input_tokens"] == usage["prompt_tokens"], row
    assert row["output_tokens"] == usage["completion_tokens"], row
    assert row["cached_tokens"] == usage["prompt_tokens_details"]["cached_tokens"], row
    assert row["cost_picos"] == prices.cost_picos(usage), row
    assert Decimal(row["cost_usd"]) == Decimal(row["cost_picos"]) / 10**12, row


# --------------------------------------------------------------------------------------------
# Requests that reach the provider


def test_sync_chat_completion_reaches_provider_with_its_credential(stack: Stack) -> None:
    prompt = "hello from the walking skeleton"
    raw = stack.client().chat.completions.with_raw_response.create(
        model="openai/gpt-4o-mini", messages=user(prompt)
    )
    completion = raw.parse()

    assert completion.choices[0].message.content == reply_for(user(prompt))
    assert raw.headers["x-request-id"]
    assert raw.headers["x-tokenrouter-provider"] == "openai"
    assert raw.headers["x-tokenrouter-model"] == "gpt-4o-mini"
    response_headers = dict(raw.headers.items())
    assert_no_internal_headers(response_headers)
    assert not any(PROVIDER_SECRET in value for value in response_headers.values())

    [sent] = stack.provider.chat_requests()
    assert sent.headers["authorization"] == f"Bearer {PROVIDER_SECRET}"
    assert_no_internal_headers(sent.headers)
    assert not any(stack.key in value for value in sent.headers.values())
    assert stack.key.encode() not in sent.raw_body
    assert sent.body["model"] == "gpt-4o-mini"
    assert sent.body["messages"] == user(prompt)


def test_one_attempt_goes_to_the_direct_cluster_prepared_by_the_edge(stack: Stack) -> None:
    """A request with one attempt skips the upstream filter: the edge prepares it (credential,
    authority, path) and sends it to `tr_direct_<provider>`; nothing internal reaches the
    provider or the client, and the log has the one attempt."""
    direct = "cluster.tr_direct_openai.upstream_rq_completed"
    filtered = "cluster.tr_provider_openai.upstream_rq_completed"
    before = (stack.envoy.counter(direct), stack.envoy.counter(filtered))
    for stream in (False, True):
        raw = stack.client().chat.completions.with_raw_response.create(
            model="openai/gpt-4o-mini", messages=user(f"direct, stream={stream}"), stream=stream
        )
        request_id = raw.headers["x-request-id"]
        parsed = raw.parse()
        if stream:
            assert "".join(c.choices[0].delta.content or "" for c in parsed if c.choices)
        assert_no_internal_headers(dict(raw.headers.items()))
        row = stack.usage(request_id)[request_id]
        assert [(a["provider"], a["model"], a["status"]) for a in row["attempts"]] == [
            ("openai", "gpt-4o-mini", 200)
        ], row
        assert row["status"] == 200 and row["error_type"] is None, row
    assert (stack.envoy.counter(direct), stack.envoy.counter(filtered)) == (
        before[0] + 2,
        before[1],
    )
    for sent in stack.provider.chat_requests():
        assert sent.path == "/v1/chat/completions"
        assert sent.headers["authorization"] == f"Bearer {PROVIDER_SECRET}"
        assert sent.headers["host"] == stack.provider.base_url.split("//")[1].split("/")[0]
        assert_no_internal_headers(sent.headers)


def test_streaming_chat_completion(stack: Stack) -> None:
    prompt = "stream this answer back to me please"
    raw = stack.client().chat.completions.with_raw_response.create(
        model="openai/gpt-4o-mini", messages=user(prompt), stream=True
    )
    request_id = raw.headers["x-request-id"]
    chunks = list(raw.parse())

    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == reply_for(user(prompt))
    [sent] = stack.provider.chat_requests()
    assert sent.body["stream"] is True
    assert sent.body["stream_options"]["include_usage"] is True, "the gateway asks for usage"

    row = stack.usage(request_id)[request_id]
    assert row["stream"] is True
    assert_usage_row(row, usage_for(user(prompt)), GPT_4O_MINI)


def test_streaming_with_client_requested_usage(stack: Stack) -> None:
    prompt = "count my tokens"
    stream = stack.client().chat.completions.create(
        model="openai/gpt-4o-mini",
        messages=user(prompt),
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)

    usage_chunks = [c for c in chunks if c.usage is not None]
    assert len(usage_chunks) == 1
    assert usage_chunks[0].choices == []
    expected = usage_for(user(prompt))
    assert usage_chunks[0].usage.prompt_tokens == expected["prompt_tokens"]
    assert usage_chunks[0].usage.completion_tokens == expected["completion_tokens"]
    assert usage_chunks[0].usage.total_tokens == expected["total_tokens"]


def test_bare_catalogue_model_routes_to_its_provider(stack: Stack) -> None:
    raw = stack.client().chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=user("bare model")
    )
    assert raw.parse().choices[0].message.content == reply_for(user("bare model"))
    assert raw.headers["x-tokenrouter-provider"] == "openai"
    assert raw.headers["x-tokenrouter-model"] == "gpt-4o-mini"
    [sent] = stack.provider.chat_requests()
    assert sent.body["model"] == "gpt-4o-mini"


def test_usage_row_fields(stack: Stack) -> None:
    prompt = "what does this request cost"
    started_ms = int(time.time() * 1000)
    request_id, completion = chat(stack.client(), prompt)

    row = stack.usage(request_id)[request_id]
    assert row["status"] == 200
    assert row["provider"] == "openai"
    assert row["model"] == "gpt-4o-mini"
    assert row["requested_model"] == "openai/gpt-4o-mini"
    assert row["key_id"] == stack.key_id
    assert row["client_api"] == "chat.completions"
    assert row["stream"] is False
    assert row["error_type"] is None
    assert row["node_id"] == stack.envoy.node_id
    assert row["reasoning_tokens"] == 0
    assert isinstance(row["latency_ms"], int) and row["latency_ms"] >= 0
    assert started_ms - 1000 <= row["started_at_unix_ms"] <= int(time.time() * 1000)
    usage = usage_for(user(prompt))
    assert completion.usage.prompt_tokens == usage["prompt_tokens"]
    assert_usage_row(row, usage, GPT_4O_MINI)


def test_cached_tokens_are_priced_at_the_cached_rate(stack: Stack) -> None:
    stack.provider.cached_tokens = 4
    prompt = "a prompt long enough to have a cached prefix"
    request_id, _ = chat(stack.client(), prompt)

    row = stack.usage(request_id)[request_id]
    usage = usage_for(user(prompt), cached_tokens=4)
    assert row["cached_tokens"] == 4
    assert_usage_row(row, usage, GPT_4O_MINI)


# --------------------------------------------------------------------------------------------
# Errors generated by the gateway


def test_gateway_errors_use_the_envelope_and_never_reach_the_provider(stack: Stack) -> None:
    envoy, key = stack.envoy, stack.key
    valid = {"model": "openai/gpt-4o-mini", "messages": user("hi")}

    assert_error_envelope(envoy.post_chat(None, valid), 401, "authentication_error")
    wrong_key = envoy.post_chat("sk-tr-not-a-real-key", valid)
    assert_error_envelope(wrong_key, 401, "authentication_error")
    malformed = envoy.post_chat(key, b'{"model": "openai/gpt-4o-mini", ')
    assert_error_envelope(malformed, 400, "invalid_request_error")
    no_model = envoy.post_chat(key, {"messages": user("hi")})
    assert_error_envelope(no_model, 400, "invalid_request_error")
    unknown_model = {**valid, "model": "openai/gpt-99"}
    assert_error_envelope(envoy.post_chat(key, unknown_model), 404, "not_found_error")
    unknown_provider = {**valid, "model": "nope/x"}
    assert_error_envelope(envoy.post_chat(key, unknown_provider), 404, "not_found_error")
    too_large = {**valid, "messages": user("x" * (envoy.max_request_body_bytes + 1024))}
    assert_error_envelope(envoy.post_chat(key, too_large), 413, "request_too_large")

    assert stack.provider.requests == []


def test_client_supplied_internal_headers_are_ignored(stack: Stack) -> None:
    spoofed = {
        "x-tr-cluster": "tr_provider_nope",
        "x-tr-provider": "nope",
        "x-tr-model": "gpt-4o",
        "x-tr-request-id": "spoofed",
    }
    body = {"model": "openai/gpt-4o-mini", "messages": user("spoof")}
    response = stack.envoy.post_chat(stack.key, body, headers=spoofed)

    assert response.status_code == 200, response.text
    assert response.headers["x-request-id"] != "spoofed"
    [sent] = stack.provider.chat_requests()
    assert_no_internal_headers(sent.headers)
    assert sent.body["model"] == "gpt-4o-mini"


# --------------------------------------------------------------------------------------------
# Configuration changes reach Envoy without a restart


def test_revoked_key_is_rejected_within_a_second(stack: Stack) -> None:
    body = {"model": "openai/gpt-4o-mini", "messages": user("before revoke")}
    assert stack.envoy.post_chat(stack.key, body).status_code == 200

    revoked = stack.control_plane.cli("keys", "revoke", stack.key_id)
    returned = time.monotonic()
    assert revoked["status"] == "revoked"

    def rejected_at() -> float | None:
        response = stack.envoy.post_chat(stack.key, body)
        return time.monotonic() if response.status_code == 401 else None

    first_401 = wait_for(rejected_at, timeout=5, interval=0.02, what="401 for the revoked key")
    assert first_401 - returned < 1.0
    # That 401 came from one worker; the others have the revoke within one worker tick.
    time.sleep(2 * WORKER_TICK_S)
    assert_error_envelope(stack.envoy.post_chat(stack.key, body), 401, "authentication_error")


def _sent(control_plane: ControlPlane) -> tuple[int, int]:
    """(snapshots, key deltas) the control plane has sent to edges so far."""
    text = requests.get(f"{control_plane.rest_url}/metrics", timeout=5).text
    counts = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in ("tokenrouter_snapshots_sent_total", "tokenrouter_key_deltas_sent_total"):
            counts[name] = int(float(value))
    return counts["tokenrouter_snapshots_sent_total"], counts["tokenrouter_key_deltas_sent_total"]


def test_key_changes_travel_as_deltas_to_every_worker(stack: Stack) -> None:
    """Creating and revoking keys sends key deltas, not snapshots; both workers apply them, and
    after a change besides keys (a full snapshot, a new base) deltas apply on top of that."""
    body = {"model": "openai/gpt-4o-mini", "messages": user("delta")}
    cp = stack.control_plane
    snapshots0, deltas0 = _sent(cp)

    def everywhere(key: str, status: int) -> bool:
        # Fresh connections land on both of the Envoy's workers.
        return all(stack.envoy.post_chat(key, body).status_code == status for _ in range(8))

    new_id, new_key = cp.create_key("delta-new")
    wait_for(lambda: everywhere(new_key, 200), timeout=5, interval=0.05, what="new key served")
    cp.cli("keys", "revoke", new_id)
    returned = time.monotonic()
    wait_for(lambda: everywhere(new_key, 401), timeout=5, interval=0.02, what="revoke enforced")
    assert time.monotonic() - returned < 1.0
    assert everywhere(stack.key, 200), "the other keys are untouched"
    snapshots1, deltas1 = _sent(cp)
    assert snapshots1 == snapshots0, "key changes sent no snapshot"
    assert deltas1 >= deltas0 + 2

    # A change besides keys is a full snapshot; deltas then build on it.
    cp.cli("models", "update", "openai/gpt-4o-mini", "--input-price", "0.2")
    wait_for(lambda: _sent(cp)[0] > snapshots1, timeout=5, interval=0.05, what="a full snapshot")
    later_id, later_key = cp.create_key("delta-later")
    wait_for(lambda: everywhere(later_key, 200), timeout=5, interval=0.05, what="later key")
    assert everywhere(new_key, 401), "the revoke survives the new base"
    cp.cli("keys", "revoke", stack.key_id)
    wait_for(lambda: everywhere(stack.key, 401), timeout=5, interval=0.02, what="revoke on new base")
    assert everywhere(later_key, 200)
    assert _sent(cp)[1] >= deltas1 + 2


def test_provider_added_at_runtime_is_served_without_restart(
    stack: Stack, harness: Harness
) -> None:
    envoy_pid = stack.envoy.pid
    second = harness.fake_openai(api_key=None)
    provider = stack.control_plane.add_provider("second", "openai-compatible", second.base_url)
    assert provider["cluster"] == "tr_provider_second"
    assert provider["has_credential"] is False
    stack.envoy.wait_for_clusters(["second"], timeout=10)

    body = {"model": "second/my-local-model", "messages": user("local model please")}

    def served() -> requests.Response | None:
        response = stack.envoy.post_chat(stack.key, body)
        return response if response.status_code == 200 else None

    response = wait_for(served, timeout=10, interval=0.1, what="second/my-local-model served")
    content = response.json()["choices"][0]["message"]["content"]
    assert content == reply_for(user("local model please"))
    assert response.headers["x-tokenrouter-provider"] == "second"
    assert response.headers["x-tokenrouter-model"] == "my-local-model"
    [sent] = second.chat_requests()
    assert sent.body["model"] == "my-local-model"
    assert not any(stack.key in value for value in sent.headers.values())
    assert stack.provider.chat_requests() == []
    assert stack.envoy.pid == envoy_pid and stack.envoy.proc and stack.envoy.proc.poll() is None


# --------------------------------------------------------------------------------------------
# The data path does not depend on the control plane being up


def test_usage_is_delivered_after_control_plane_outage(stack: Stack) -> None:
    client = stack.client()
    request_ids = [chat(client, "before the outage")[0]]

    stack.control_plane.stop(kill=True)
    for n in range(5):
        request_id, completion = chat(client, f"during the outage number {n}")
        expected = reply_for(user(f"during the outage number {n}"))
        assert completion.choices[0].message.content == expected
        request_ids.append(request_id)
    assert len(set(request_ids)) == 6

    stack.control_plane.start()
    rows = stack.usage(*request_ids, timeout=30)

    all_ids = [row["request_id"] for row in stack.control_plane.logs(limit=1000)]
    assert {rid: all_ids.count(rid) for rid in request_ids} == {rid: 1 for rid in request_ids}
    last = request_ids[-1]
    assert_usage_row(rows[last], usage_for(user("during the outage number 4")), GPT_4O_MINI)


# --------------------------------------------------------------------------------------------
# Control plane start-up


def test_admin_token_is_generated_when_not_configured(harness: Harness) -> None:
    control_plane = harness.control_plane(generated_token=True)
    token_file = control_plane.data_dir / "admin_token"

    assert token_file.is_file()
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert token_file.read_text().strip()
    # The CLI finds the token through --data-dir (run_cli passes it; the env has no token).
    assert isinstance(control_plane.cli("keys", "list"), list)
    result = control_plane.run_cli("keys", "list", env={"TOKENROUTER_ADMIN_TOKEN": "wrong"})
    assert result.returncode == 1, result
