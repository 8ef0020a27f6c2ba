"""Faults, end to end, in one matrix: real Envoy + wasm filter + control plane + the fake
providers, each case its own test id.

1. Bad client input on each client API (Chat Completions, Responses, Messages): a typed 4xx in
   the gateway's envelope, no provider call, and the same Envoy keeps serving (no panic).
2. Provider faults: with a fallback chain the request fails over and succeeds; without one it is
   a typed error naming the provider; a stream broken after bytes went out ends with an error
   event and is charged only for what was delivered.
3. Control plane faults: SIGKILL and restart under load loses no request and no usage record;
   a write that fails validation changes nothing at the edge.
4. Configuration pushed under load (providers, routing and firewall rules) drops no request.
5. Secrets: no gateway key, provider credential, BYOK key or admin token in any file of any
   process or in any error body; a gateway key is refused by the admin surfaces and reads only
   its own logs.

Related cases elsewhere: test_walking_skeleton (envelope of auth/model errors, usage after a
control plane outage), test_routing (failover across wire formats, exhausted chains, BYOK),
test_rest_api (REST auth, a key reading its own usage), test_logs (a key reading another key's
log row), test_provider_keys (credentials encrypted at rest, rotation under load).
"""

from __future__ import annotations

import http.client
import json
import re
import secrets
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import pytest
import requests

from fakes.anthropic_fake import FakeAnthropic
from fakes.anthropic_fake import reply_text as claude_reply
from fakes.openai_fake import FakeOpenAI, reply_for
from harness import (
    PROVIDER_SECRET,
    Binaries,
    ControlPlane,
    Envoy,
    Harness,
    Stack,
    free_port,
    wait_for,
)

ANTHROPIC_SECRET = "sk-ant-provider-secret"
# Short enough for "provider stalls" cases, long enough for a loaded 2-core machine.
PER_TRY_TIMEOUT_MS = 2000
STALL_S = PER_TRY_TIMEOUT_MS / 1000 + 2
# Room for 5,000 and 10,001 small messages; larger bodies are the 413 cases.
MAX_BODY = 512 * 1024
OPENAI_MODEL = "openai/gpt-4o-mini"
CLAUDE_MODEL = "claude/claude-haiku-4-5"
# Lines of an Envoy log that mean the filter crashed (a Rust panic, a wasm trap, a dead VM).
CRASH = re.compile(
    r"panicked|RuntimeError|unreachable executed|wasm trap|Function: proxy_on_\w+ failed"
    r"|VM (?:has )?failed|Plugin configured to fail closed failed",
    re.IGNORECASE,
)


# --------------------------------------------------------------------------------------------
# Shared helpers


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def assert_envelope(
    response: requests.Response,
    status: int,
    error_type: str,
    message: str | None = None,
    provider: str | None = None,
) -> dict[str, Any]:
    """The response is the gateway's error envelope with this status and type; returns
    ``error``."""
    assert response.status_code == status, response.text[:2000]
    body = response.json()
    error = body["error"]
    assert error["type"] == error_type, body
    assert error["code"] == status and error["http_status"] == status, body
    assert isinstance(error["message"], str) and error["message"], body
    if message is not None:
        assert message in error["message"], body
    assert "provider" in error and "raw" in error, body
    if provider is not None:
        assert error["provider"] == provider, body
    assert isinstance(body["request_id"], str) and body["request_id"], body
    if "x-request-id" in response.headers:
        assert response.headers["x-request-id"] == body["request_id"]
    return error


def assert_no_crash(envoy: Envoy) -> None:
    """Envoy is the same process, alive, and its log has no filter crash."""
    assert envoy.proc is not None and envoy.proc.poll() is None, "envoy exited"
    crashes = [
        line
        for line in envoy.log_path.read_text(errors="replace").splitlines()
        if CRASH.search(line)
    ]
    assert crashes == [], "\n".join(crashes[:20])


def sse_events(text: str) -> list[str]:
    """The ``data:`` payloads of an SSE body, in order."""
    return [line[len("data: ") :] for line in text.splitlines() if line.startswith("data: ")]


def all_logs(control_plane: ControlPlane, key_id: str) -> list[dict[str, Any]]:
    """Every request log row of ``key_id`` (REST, all pages)."""
    rows: list[dict[str, Any]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"key_id": key_id, "limit": 1000}
        if cursor:
            params["cursor"] = cursor
        page = requests.get(
            f"{control_plane.rest_url}/api/v1/logs",
            params=params,
            headers={"authorization": f"Bearer {control_plane.admin_token}"},
            timeout=30,
        )
        page.raise_for_status()
        data = page.json()
        rows += data["data"]
        cursor = data.get("next_cursor")
        if not cursor:
            return rows


def attach_report(request: pytest.FixtureRequest, harness: Harness) -> None:
    """Lets conftest attach the logs of a shared (module) harness to a failing test's report."""
    key = getattr(sys.modules.get("conftest"), "_HARNESS", None)
    if key is not None:
        request.node.stash[key] = harness


# --------------------------------------------------------------------------------------------
# The shared gateway of parts 1 and 2 (cases do not interfere: faults and recorded requests are
# cleared before each case, and every case ends with the gateway serving)


@dataclass
class Gateway:
    harness: Harness
    control_plane: ControlPlane
    envoy: Envoy
    openai: FakeOpenAI
    claude: FakeAnthropic
    # No routing configuration: a pinned model is one attempt.
    key: str
    # Fallback openai/gpt-4o-mini → claude/claude-haiku-4-5.
    chain_key: str
    # Fallback dead/gpt-4o-mini (nothing listens there) → claude/claude-haiku-4-5.
    dead_chain_key: str

    def post(
        self,
        path: str,
        body: dict[str, Any] | bytes | Iterator[bytes],
        key: str | None = None,
        headers: dict[str, str] | None = None,
        stream: bool = False,
        timeout: float = 60,
    ) -> requests.Response:
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        return requests.post(
            f"{self.envoy.url}{path}",
            data=data,
            headers={
                "authorization": f"Bearer {key or self.key}",
                "content-type": "application/json",
                **(headers or {}),
            },
            stream=stream,
            timeout=timeout,
        )

    def calls(self, fake: FakeOpenAI) -> list[Any]:
        return [r for r in fake.requests if r.method == "POST"]

    def reset(self) -> None:
        for fake in (self.openai, self.claude):
            fake.clear_faults()
            fake.clear()

    def assert_still_serving(self) -> None:
        """A normal request is served by the same Envoy, and nothing crashed."""
        pid = self.envoy.pid
        r = self.post("/v1/chat/completions", {"model": OPENAI_MODEL, "messages": user("alive?")})
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"] == reply_for(user("alive?"))
        assert self.envoy.pid == pid
        assert_no_crash(self.envoy)


@pytest.fixture(scope="module")
def gateway(binaries: Binaries, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    harness = Harness(binaries, tmp_path_factory.mktemp("faults"))
    try:
        control_plane = harness.control_plane(
            env={"TOKENROUTER_PER_TRY_TIMEOUT_MS": str(PER_TRY_TIMEOUT_MS)}
        )
        openai_fake = harness.fake_openai(PROVIDER_SECRET)
        claude_fake = FakeAnthropic(ANTHROPIC_SECRET).start()
        harness._fakes.append(claude_fake)  # stopped with the harness
        control_plane.add_provider("openai", "openai", openai_fake.base_url, PROVIDER_SECRET)
        control_plane.add_provider("claude", "anthropic", claude_fake.base_url, ANTHROPIC_SECRET)
        closed = f"http://127.0.0.1:{free_port()}/v1"
        control_plane.add_provider("dead", "openai", closed, PROVIDER_SECRET)
        _, key = control_plane.create_key("faults")
        chain_id, chain_key = control_plane.create_key("faults-chain")
        dead_id, dead_key = control_plane.create_key("faults-dead-chain")
        for key_id, first in ((chain_id, "openai"), (dead_id, "dead")):
            control_plane.cli(
                "routing", "set", "--key-id", key_id, "--strategy", "fallback",
                "--backend", f"{first}/gpt-4o-mini", "--backend", CLAUDE_MODEL,
            )  # fmt: skip
        envoy = harness.envoy(
            control_plane, providers=["openai", "claude", "dead"], max_request_body_bytes=MAX_BODY
        )
        g = Gateway(
            harness, control_plane, envoy, openai_fake, claude_fake, key, chain_key, dead_key
        )
        for k in (key, chain_key, dead_key):
            envoy.wait_until_serving(k)
        # The later configuration is live on every worker (snapshots are ordered, so the
        # earlier one is too): several requests in a row, each on a new connection.
        probe = {"model": "gpt-4o-mini", "messages": user("settle")}

        def settled() -> bool:
            return all(
                g.post("/v1/chat/completions", probe, key=dead_key).headers.get(
                    "x-tokenrouter-provider"
                )
                == "claude"
                for _ in range(4)
            )

        wait_for(settled, 15, interval=0.1, what="the fallback configurations at the edge")
        yield g
    finally:
        harness.close()


@pytest.fixture
def gw(gateway: Gateway, request: pytest.FixtureRequest) -> Gateway:
    attach_report(request, gateway.harness)
    gateway.reset()
    return gateway


# --------------------------------------------------------------------------------------------
# 1. Bad client input


@dataclass(frozen=True)
class Api:
    path: str
    model: str
    items: str  # the field holding the conversation

    def body(self, n: int = 1, text: str = "hello", **extra: Any) -> dict[str, Any]:
        item = {"role": "user", "content": text}
        body: dict[str, Any] = {"model": self.model, self.items: [item] * n, **extra}
        if self.path == "/v1/messages":
            body.setdefault("max_tokens", 50)
        return body


APIS = {
    "chat": Api("/v1/chat/completions", OPENAI_MODEL, "messages"),
    # Responses is translated to Chat Completions for OpenAI (the "hub" path).
    "responses": Api("/v1/responses", OPENAI_MODEL, "input"),
    # Messages on Anthropic is a pass-through.
    "messages": Api("/v1/messages", CLAUDE_MODEL, "messages"),
}


def deeply_nested(depth: int) -> bytes:
    content = b"[" * depth + b"]" * depth
    return b'{"model":"m","messages":[{"role":"user","content":' + content + b"}]}"


def bad_body(api: Api, case: str) -> tuple[bytes | Iterator[bytes], int, str, str]:
    """(body, status, error type, message part) of a bad-input case."""
    valid = api.body()
    if case == "malformed_json":
        return b'{"model": "m", "messages": [', 400, "invalid_request_error", "not a valid JSON"
    if case == "not_an_object":
        return b'["model"]', 400, "invalid_request_error", "not a valid JSON"
    if case == "model_wrong_type":
        body = json.dumps({**valid, "model": 7}).encode()
        return body, 400, "invalid_request_error", "'model' must be a string"
    if case == "items_wrong_type":
        wrong: Any = "hello" if api.items == "messages" else 7
        body = json.dumps({**valid, api.items: wrong}).encode()
        return body, 400, "invalid_request_error", f"'{api.items}' must be"
    if case == "items_missing":
        body = json.dumps({k: v for k, v in valid.items() if k != api.items}).encode()
        return body, 400, "invalid_request_error", f"'{api.items}'"
    if case == "stream_wrong_type":
        body = json.dumps({**valid, "stream": "yes"}).encode()
        return body, 400, "invalid_request_error", "'stream' must be a boolean"
    if case == "invalid_utf8":
        body = json.dumps(valid).encode().replace(b"hello", b"he\xff\xfello")
        return body, 400, "invalid_request_error", "not a valid JSON"
    if case == "empty_body":
        return b"", 400, "invalid_request_error", "body"
    if case == "deeply_nested_10000":
        return deeply_nested(10_000), 400, "invalid_request_error", "not a valid JSON"
    if case == "too_many_items_10001":
        body = json.dumps(api.body(n=10_001, text="x")).encode()
        return body, 400, "invalid_request_error", "at most 10000"
    if case == "over_body_limit":
        body = json.dumps(api.body(text="x" * (MAX_BODY + 1024))).encode()
        return body, 413, "request_too_large", f"limit of {MAX_BODY} bytes"
    if case == "over_body_limit_chunked":
        # No content-length: the limit holds while the body streams in.
        head = b'{"model":"m","messages":[{"role":"user","content":"'
        chunks = iter([head] + [b"x" * 65536] * 10)
        return chunks, 413, "request_too_large", f"limit of {MAX_BODY} bytes"
    raise AssertionError(case)


BAD_CASES = [
    "malformed_json",
    "not_an_object",
    "model_wrong_type",
    "items_wrong_type",
    "items_missing",
    "stream_wrong_type",
    "invalid_utf8",
    "empty_body",
    "deeply_nested_10000",
    "too_many_items_10001",
    "over_body_limit",
    "over_body_limit_chunked",
]


@pytest.mark.parametrize("case", BAD_CASES)
@pytest.mark.parametrize("api", list(APIS))
def test_bad_client_input_is_a_typed_4xx_and_never_reaches_a_provider(
    gw: Gateway, api: str, case: str
) -> None:
    """Each malformed, mistyped or oversized body is refused by the edge with the envelope's
    typed 4xx; no provider is called; the same Envoy then serves a normal request."""
    body, status, error_type, message = bad_body(APIS[api], case)
    response = gw.post(APIS[api].path, body)
    # A chunked burst larger than the listener buffer's headroom may meet Envoy's own limit
    # before the filter's next callback; that 413 is in the envelope too (the next test).
    assert_envelope(response, status, error_type, message)
    assert gw.calls(gw.openai) == [] and gw.calls(gw.claude) == []
    gw.assert_still_serving()


def test_envoys_own_413_is_in_the_envelope(harness: Harness) -> None:
    """When Envoy's buffer limit answers before the filter (a burst of body larger than the
    listener buffer's headroom between two filter callbacks), the bootstrap's
    local_reply_config renders that 413 in the seeds' envelope, with the gateway's request id.
    Made certain here by a listener buffer smaller than the body limit."""
    control_plane = harness.control_plane()
    _, key = control_plane.create_key("own-413")
    limit = 1_000_000

    def small_buffer(config: str) -> str:
        edited = re.sub(
            r"per_connection_buffer_limit_bytes: \d+",
            "per_connection_buffer_limit_bytes: 32768",
            config,
        )
        assert edited != config
        return edited

    envoy = harness.envoy(control_plane, max_request_body_bytes=limit, edit_bootstrap=small_buffer)
    envoy.wait_until_serving(key)
    body = json.dumps(APIS["chat"].body(text="x" * 200_000)).encode()
    response = envoy.post_chat(key, body)
    error = assert_envelope(response, 413, "request_too_large", f"limit of {limit} bytes")
    assert error["provider"] is None and error["raw"] is None
    assert response.headers["content-type"] == "application/json"
    # The filter's own replies are not rewritten: a small malformed body is its 400.
    assert_envelope(envoy.post_chat(key, b"{"), 400, "invalid_request_error")


def test_oversized_header_is_refused_by_envoy_and_the_gateway_keeps_serving(gw: Gateway) -> None:
    """A 100 KB header is over Envoy's header limit: Envoy answers 431 itself (before any
    filter runs), in the seeds' envelope; nothing reaches a provider, and the gateway keeps
    serving."""
    try:
        response = gw.post(
            "/v1/chat/completions", APIS["chat"].body(), headers={"x-huge": "a" * 100_000}
        )
        status = response.status_code
    except requests.ConnectionError:
        response = None
        status = 0  # Envoy may close before the client finished sending; checked below
    assert status == 431, status
    assert response is not None
    assert_envelope(response, 431, "invalid_request_error", "request headers")
    assert gw.calls(gw.openai) == [] and gw.calls(gw.claude) == []
    gw.assert_still_serving()


def raw_post(gw: Gateway, path: str, body: bytes, headers: list[bytes]) -> tuple[int, bytes]:
    """One HTTP/1.1 request written byte for byte (header values no client library sends)."""
    head = (
        f"POST {path} HTTP/1.1\r\nhost: gateway\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", gw.envoy.port), timeout=30) as sock:
        sock.sendall(head + b"".join(h + b"\r\n" for h in headers) + b"\r\n" + body)
        # The standard library reads the answer (status line, framing, chunked or not).
        response = http.client.HTTPResponse(sock)
        response.begin()
        return response.status, response.read()


def test_header_values_that_are_not_utf8_are_refused_or_served_never_a_crash(
    gw: Gateway,
) -> None:
    """Envoy passes header bytes 0x80-0xFF (obs-text) through to the filter. A key made of them
    is an invalid key (401 in the envelope); in any other header, or in a bring-your-own-key
    header, the request is served; the worker that read them keeps serving (one such request
    used to stop it)."""
    body = json.dumps({"model": OPENAI_MODEL, "messages": user("bytes")}).encode()
    for _ in range(4):  # every worker reads one
        status, reply = raw_post(
            gw, "/v1/chat/completions", body, [b"authorization: Bearer sk-tr-\xff\xfe"]
        )
        assert status == 401, reply
        assert json.loads(reply)["error"]["type"] == "authentication_error"
        auth = f"authorization: Bearer {gw.key}".encode()
        for other in (b"x-note: caf\xe9 \xff", b"x-openai-key: sk-\xff\xfe"):
            status, reply = raw_post(gw, "/v1/chat/completions", body, [auth, other])
            if other.startswith(b"x-openai-key"):
                # That key is the attempt's credential, and the provider refuses it.
                assert status == 401, reply
                assert json.loads(reply)["error"]["type"] == "authentication_error"
            else:
                assert status == 200, reply
                assert json.loads(reply)["choices"], reply
    gw.assert_still_serving()


def test_5000_messages_are_served(gw: Gateway) -> None:
    """5,000 small messages (or Responses input items) are under the engine's limit
    (request::MAX_MESSAGES = 10,000; 10,001 is a 400 above): served on every client API, and
    all of them reach the provider."""
    for name, api in APIS.items():
        gw.reset()
        r = gw.post(api.path, api.body(n=5_000, text="x"))
        assert r.status_code == 200, (name, r.text[:500])
        fake = gw.claude if api.model == CLAUDE_MODEL else gw.openai
        [sent] = gw.calls(fake)
        if name == "responses":
            # Translated: consecutive turns of one role become one message.
            [message] = sent.body["messages"]
            assert message["content"].split() == ["x"] * 5_000
        else:
            assert len(sent.body["messages"]) == 5_000, name
    gw.assert_still_serving()


@pytest.mark.parametrize("compact", [True, False], ids=["compact", "spaced"])
def test_forwarded_body_and_its_content_length_agree(gw: Gateway, compact: bool) -> None:
    """The edge forwards the body it re-serialised (with the upstream model name) and sets
    `content-length` only where the length changed: a compact body with sorted keys under the
    provider's own model name keeps its length (the client's header stands), one with spaces
    gets shorter (the header is set). Either way the provider gets one `content-length`, that of
    the body it received, and the request as sent."""
    body = {"messages": user("the same length"), "model": "gpt-4o-mini", "temperature": 0.5}
    data = json.dumps(body, separators=(",", ":") if compact else None, sort_keys=True).encode()
    r = gw.post("/v1/chat/completions", data)
    assert r.status_code == 200, r.text
    [sent] = gw.calls(gw.openai)
    assert [v for n, v in sent.header_lines if n == "content-length"] == [str(len(sent.raw_body))]
    assert sent.body == body
    assert (len(sent.raw_body) == len(data)) is compact
    gw.assert_still_serving()


@pytest.mark.parametrize("api", list(APIS))
def test_unknown_fields_are_passed_through_or_dropped_never_refused(gw: Gateway, api: str) -> None:
    """The edge interprets only routing fields: an unknown field is not refused. A pass-through
    pair (Chat→OpenAI, Messages→Anthropic) forwards it unchanged (the provider decides); a
    translated pair (Responses→Chat Completions) has no place for it and drops it."""
    extra = {"x_unknown_field": {"nested": [1, "two"]}}
    r = gw.post(APIS[api].path, APIS[api].body(**extra))
    assert r.status_code == 200, r.text
    fake = gw.claude if api == "messages" else gw.openai
    [sent] = gw.calls(fake)
    if api == "responses":
        assert "x_unknown_field" not in sent.body
    else:
        assert sent.body["x_unknown_field"] == extra["x_unknown_field"]
    gw.assert_still_serving()


@pytest.mark.parametrize("api", list(APIS))
def test_mistyped_token_limit_is_a_typed_400(gw: Gateway, api: str) -> None:
    """A string token limit is a typed 400. The edge reads only routing fields: a translated
    pair refuses it in the upstream filter before any provider call; a pass-through pair leaves
    the check to the provider, whose own 400 comes back in the envelope naming it (once: a 4xx
    is not retried)."""
    limit = {"chat": "max_tokens", "responses": "max_output_tokens", "messages": "max_tokens"}[api]
    r = gw.post(APIS[api].path, APIS[api].body(**{limit: "x"}))
    if api == "responses":
        assert_envelope(r, 400, "invalid_request_error", "not a valid Responses body")
        assert gw.calls(gw.openai) == []
    else:
        provider = "claude" if api == "messages" else "openai"
        error = assert_envelope(r, 400, "invalid_request_error", "max_tokens", provider=provider)
        assert error["raw"], "the provider's own error body"
        fake = gw.claude if api == "messages" else gw.openai
        assert len(gw.calls(fake)) == 1
    gw.assert_still_serving()


# --------------------------------------------------------------------------------------------
# 2. Provider faults


# fault → (what the fake does, attempt status in the usage row, status a client gets without a
# fallback, envelope type without a fallback)
PRE_BODY_FAULTS: dict[str, tuple[dict[str, Any] | None, int, int, str]] = {
    "status_500": ({"status": 500}, 500, 500, "provider_error"),
    "status_502": ({"status": 502}, 502, 502, "provider_error"),
    "status_503": ({"status": 503}, 503, 503, "service_unavailable"),
    "status_429": ({"status": 429}, 429, 429, "rate_limit_error"),
    "status_429_retry_after": ({"status": 429, "retry_after": 7}, 429, 429, "rate_limit_error"),
    "connection_refused": (None, 0, 503, "service_unavailable"),
    "reset_before_headers": ({"reset": True}, 0, 503, "service_unavailable"),
    "stall_before_first_byte": ({"hang": STALL_S + 3}, 0, 504, "timeout_error"),
}
# Faults in a 2xx answer's body (non-streamed): the provider answered, but not usably.
BODY_FAULTS: dict[str, dict[str, Any]] = {
    "reset_mid_body": {"reset_mid_body": True},
    "malformed_json_200": {
        "raw": '{"id": "chatcmpl-1", "object": "chat.completion", "choices": [{"index": 0, "mes',
        "content_type": "application/json",
    },
    "html_200": {
        "raw": "<html><body><h1>502 Bad Gateway</h1>cloudflare</body></html>",
        "content_type": "text/html; charset=utf-8",
    },
}


def inject(gw: Gateway, fault: dict[str, Any] | None) -> None:
    if fault is not None:
        gw.openai.inject(fault)


def read(response: requests.Response) -> tuple[str, Exception | None]:
    """The whole body, and the transport error that cut it, if any."""
    chunks: list[bytes] = []
    try:
        for chunk in response.iter_content(chunk_size=None):
            chunks.append(chunk)
    except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as error:
        return b"".join(chunks).decode(errors="replace"), error
    return b"".join(chunks).decode(errors="replace"), None


def assert_served_by_claude(gw: Gateway, r: requests.Response, stream: bool, text: str) -> None:
    body, cut = read(r)
    assert cut is None, cut
    assert r.status_code == 200, body[:2000]
    assert r.headers["x-tokenrouter-provider"] == "claude"
    assert r.headers["x-tokenrouter-attempts"] == "2"
    want = claude_reply(user(text))
    if stream:
        events = sse_events(body)
        assert events[-1] == "[DONE]", events[-3:]
        content = "".join(
            (c["choices"][0]["delta"].get("content") or "")
            for c in map(json.loads, events[:-1])
            if c.get("choices")
        )
        assert content == want
    else:
        assert json.loads(body)["choices"][0]["message"]["content"] == want


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("fault", list(PRE_BODY_FAULTS))
def test_provider_fault_before_the_answer_fails_over(gw: Gateway, fault: str, stream: bool) -> None:
    """With a fallback chain, a provider that fails before answering (status, refused
    connection, reset, stall past the per-try timeout) is skipped: the client gets the
    fallback's answer, and the usage row lists both attempts."""
    spec, attempt_status, _, _ = PRE_BODY_FAULTS[fault]
    inject(gw, spec)
    key = gw.dead_chain_key if fault == "connection_refused" else gw.chain_key
    first = "dead" if fault == "connection_refused" else "openai"
    text = f"fail over from {fault}"
    r = gw.post(
        "/v1/chat/completions",
        {"model": "gpt-4o-mini", "messages": user(text), "stream": stream},
        key=key,
        stream=stream,
    )
    assert_served_by_claude(gw, r, stream, text)
    assert len(gw.calls(gw.openai)) == (0 if fault == "connection_refused" else 1)
    assert len(gw.calls(gw.claude)) == 1
    request_id = r.headers["x-request-id"]
    row = gw.control_plane.wait_for_usage([request_id])[request_id]
    assert [(a["provider"], a["status"]) for a in row["attempts"]] == [
        (first, attempt_status),
        ("claude", 200),
    ], row["attempts"]
    assert (row["status"], row["provider"], row["error_type"]) == (200, "claude", None)
    assert row["input_tokens"] > 0 and row["output_tokens"] > 0
    gw.assert_still_serving()


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("fault", list(PRE_BODY_FAULTS))
def test_provider_fault_without_fallback_is_a_typed_error_naming_the_provider(
    gw: Gateway, fault: str, stream: bool
) -> None:
    """Without a fallback, the provider's failure is the envelope: the provider's status kept
    (so SDK retries on 429/5xx work) with its message, or, when it never answered, Envoy's
    503/504 made into the envelope whose message names the provider. One attempt only."""
    spec, _, status, error_type = PRE_BODY_FAULTS[fault]
    inject(gw, spec)
    provider = "dead" if fault == "connection_refused" else "openai"
    r = gw.post(
        "/v1/chat/completions",
        {"model": f"{provider}/gpt-4o-mini", "messages": user("no fallback"), "stream": stream},
    )
    error = assert_envelope(r, status, error_type, provider=provider)
    if spec is None or "status" not in spec:
        assert provider in error["message"], error
    else:
        assert error["raw"]["error"]["message"], "the provider's own body"
    if fault == "status_429_retry_after":
        assert r.headers.get("retry-after") == "7"
    assert r.headers["x-tokenrouter-attempts"] == "1"
    assert len(gw.calls(gw.openai)) == (0 if fault == "connection_refused" else 1)
    assert gw.calls(gw.claude) == []
    request_id = r.headers["x-request-id"]
    row = gw.control_plane.wait_for_usage([request_id])[request_id]
    assert (row["status"], row["provider"], row["error_type"]) == (
        status,
        provider,
        "provider_error",
    )
    assert Decimal(row["cost_usd"]) == 0
    gw.assert_still_serving()


@pytest.mark.parametrize("fault", list(BODY_FAULTS))
def test_unusable_2xx_answer_fails_over(gw: Gateway, fault: str) -> None:
    """With a fallback chain, a non-streamed 2xx answer that is cut, not JSON, or an HTML page
    is a failed attempt: the client gets the fallback's answer."""
    gw.openai.inject(BODY_FAULTS[fault])
    text = f"fail over from {fault}"
    r = gw.post(
        "/v1/chat/completions",
        {"model": "gpt-4o-mini", "messages": user(text)},
        key=gw.chain_key,
        stream=True,
    )
    try:
        assert_served_by_claude(gw, r, False, text)
    finally:
        gw.assert_still_serving()


@pytest.mark.parametrize("fault", list(BODY_FAULTS))
def test_unusable_2xx_answer_without_fallback_is_a_typed_502(gw: Gateway, fault: str) -> None:
    """Without a fallback, a non-streamed 2xx answer that is cut, not JSON, or an HTML page is
    a 502 `provider_error` naming the provider."""
    gw.openai.inject(BODY_FAULTS[fault])
    r = gw.post(
        "/v1/chat/completions", {"model": OPENAI_MODEL, "messages": user("x")}, stream=True
    )
    body, cut = read(r)
    try:
        assert cut is None, cut
        assert r.status_code == 502, body[:500]
        error = json.loads(body)["error"]
        assert (error["type"], error["provider"]) == ("provider_error", "openai")
        assert "openai" in error["message"]
        request_id = json.loads(body)["request_id"]
        assert r.headers["x-request-id"] == request_id
        row = gw.control_plane.wait_for_usage([request_id])[request_id]
        assert (row["status"], row["provider"], row["error_type"]) == (
            502,
            "openai",
            "provider_error",
        ), row
        assert Decimal(row["cost_usd"]) == 0
    finally:
        gw.assert_still_serving()


# A stream broken after bytes went to the client.
STREAM_FAULTS = {
    # The provider's connection closes after two events.
    "reset_mid_stream": {"reset_mid_body": True},
    # The stream ends cleanly after three events: no usage chunk, no [DONE].
    "truncated_without_done": {"truncate_stream": 3},
}


def delivered_text(events: list[str]) -> str:
    chunks = [json.loads(e) for e in events if e != "[DONE]"]
    return "".join(
        c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices")
    )


@pytest.mark.parametrize("fault", list(STREAM_FAULTS))
def test_broken_stream_is_never_a_silent_success_and_charges_only_what_was_delivered(
    gw: Gateway, fault: str
) -> None:
    """Once bytes went out nothing can fail over (Envoy's rule). A stream the provider ends
    early ends, for the client, with an error event naming the provider and is logged as a
    `provider_error`. A provider connection reset mid-stream makes Envoy reset the client's
    stream too (no filter runs after that): the client's connection is cut before the stream's
    end, which SDKs report as an error. Either way no fallback is called, there is no
    `[DONE]`, and the usage row charges no more than was delivered."""
    gw.openai.inject(STREAM_FAULTS[fault])
    text = "please stream a rather long answer back to me in many small pieces"
    r = gw.post(
        "/v1/chat/completions",
        {"model": "gpt-4o-mini", "messages": user(text), "stream": True},
        key=gw.chain_key,
        stream=True,
    )
    body, cut = read(r)
    assert r.status_code == 200
    events = sse_events(body)
    assert "[DONE]" not in events
    delivered = delivered_text(events)
    assert delivered and reply_for(user(text)).startswith(delivered)
    assert delivered != reply_for(user(text))
    if fault == "reset_mid_stream":
        assert isinstance(cut, requests.exceptions.ChunkedEncodingError), (cut, events[-2:])
    else:
        assert cut is None, f"the stream was cut without an error event: {cut!r}"
        error = json.loads(events[-1])["error"]
        assert (error["type"], error["provider"]) == ("provider_error", "openai"), events[-1]
        assert "openai" in error["message"]
    assert gw.calls(gw.claude) == [], "no failover once bytes went out"

    request_id = r.headers["x-request-id"]
    row = gw.control_plane.wait_for_usage([request_id])[request_id]
    assert row["stream"] is True and row["provider"] == "openai"
    # The provider's usage comes last, so a cut stream reports none: never more than was
    # delivered, and the cost is that of the reported tokens.
    assert row["output_tokens"] <= len(delivered.split())
    full = gw.openai.expected_usage(user(text))
    assert row["input_tokens"] <= full["prompt_tokens"]
    if row["input_tokens"] == row["output_tokens"] == 0:
        assert Decimal(row["cost_usd"]) == 0
    assert row["error_type"] == "provider_error", "a broken stream is not a success"
    gw.assert_still_serving()


def test_client_leaving_mid_stream_is_logged_as_such(gw: Gateway) -> None:
    """A client that closes its connection in the middle of a stream: the row says
    `client_closed_request` (not a provider error, not a success), charges no more than was
    produced, and the gateway keeps serving."""
    gw.openai.inject({"stall_stream": 5, "after": 2})
    text = "please stream a rather long answer back to me in many small pieces"
    body = json.dumps({"model": "gpt-4o-mini", "messages": user(text), "stream": True}).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nhost: gateway\r\n"
        f"authorization: Bearer {gw.key}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    ).encode()
    received = b""
    with socket.create_connection(("127.0.0.1", gw.envoy.port), timeout=30) as sock:
        sock.sendall(head + body)
        while b"data: " not in received.partition(b"\r\n\r\n")[2]:
            data = sock.recv(65536)
            assert data, received
            received += data
        # The client goes away while the provider stalls after its second chunk.
    headers, _, events = received.partition(b"\r\n\r\n")
    assert headers.startswith(b"HTTP/1.1 200"), headers
    assert b"[DONE]" not in events
    match = re.search(rb"(?im)^x-request-id: *(\S+)", headers)
    assert match, headers
    request_id = match.group(1).decode()
    row = gw.control_plane.wait_for_usage([request_id])[request_id]
    assert row["stream"] is True and row["provider"] == "openai"
    assert row["error_type"] == "client_closed_request", row
    full = gw.openai.expected_usage(user(text))
    assert row["output_tokens"] <= full["completion_tokens"]
    gw.assert_still_serving()


def test_stream_stalled_mid_way_past_the_per_try_timeout_completes(gw: Gateway) -> None:
    """The per-try timeout is the time to the response headers: a stream that pauses longer
    than it after its first events is not cut; it completes and is charged in full."""
    gw.openai.inject({"stall_stream": STALL_S, "after": 2})
    text = "a stream that pauses half way"
    started = time.monotonic()
    r = gw.post(
        "/v1/chat/completions",
        {"model": OPENAI_MODEL, "messages": user(text), "stream": True},
        stream=True,
    )
    body, cut = read(r)
    assert time.monotonic() - started >= STALL_S
    assert cut is None and r.status_code == 200, (cut, body[-500:])
    events = sse_events(body)
    assert events[-1] == "[DONE]", events[-3:]
    assert delivered_text(events) == reply_for(user(text))
    request_id = r.headers["x-request-id"]
    row = gw.control_plane.wait_for_usage([request_id])[request_id]
    usage = gw.openai.expected_usage(user(text))
    assert (row["input_tokens"], row["output_tokens"]) == (
        usage["prompt_tokens"],
        usage["completion_tokens"],
    )
    assert row["error_type"] is None
    gw.assert_still_serving()


# --------------------------------------------------------------------------------------------
# Load


@dataclass
class Load:
    """Client threads sending chat requests (plain and streamed, alternately) until stopped;
    every request's outcome is kept."""

    envoy: Envoy
    key: str
    threads: int = 4
    model: str = OPENAI_MODEL
    ok: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __enter__(self) -> Load:
        for n in range(self.threads):
            worker = threading.Thread(target=self._run, args=(n,), daemon=True)
            worker.start()
            self._workers.append(worker)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout=120)

    def _run(self, thread: int) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            text = f"load {thread} {n}"
            try:
                request_id, problem = self._one(text, stream=n % 2 == 0)
            except requests.RequestException as error:
                request_id, problem = "", f"{text}: {error!r}"
            with self._lock:
                if problem:
                    self.failures.append(problem)
                else:
                    self.ok.append(request_id)

    def _one(self, text: str, stream: bool) -> tuple[str, str | None]:
        body = {"model": self.model, "messages": user(text), "stream": stream}
        r = self.envoy.post_chat(self.key, body)
        request_id = r.headers.get("x-request-id", "")
        if r.status_code != 200:
            return request_id, f"{text}: HTTP {r.status_code} {r.text[:300]}"
        if stream:
            events = sse_events(r.text)
            if not events or events[-1] != "[DONE]":
                return request_id, f"{text}: stream without [DONE]: {r.text[-300:]}"
            content = "".join(
                c["choices"][0]["delta"].get("content") or ""
                for c in map(json.loads, events[:-1])
                if c.get("choices")
            )
        else:
            content = r.json()["choices"][0]["message"]["content"]
        if content != reply_for(user(text)):
            return request_id, f"{text}: wrong content {content!r}"
        return request_id, None


def assert_each_recorded_once(control_plane: ControlPlane, key_id: str, ids: Iterable[str]) -> None:
    wanted = set(ids)

    def all_there() -> Counter[str] | None:
        counts = Counter(row["request_id"] for row in all_logs(control_plane, key_id))
        return counts if wanted <= set(counts) else None

    try:
        counts = wait_for(all_there, 90, interval=1, what=f"{len(wanted)} usage rows")
    except TimeoutError:
        counts = Counter(row["request_id"] for row in all_logs(control_plane, key_id))
        missing = wanted - set(counts)
        raise AssertionError(f"{len(missing)} of {len(wanted)} usage rows never arrived") from None
    twice = {rid: c for rid, c in counts.items() if c > 1}
    assert twice == {}, f"recorded more than once: {list(twice.items())[:10]}"


# --------------------------------------------------------------------------------------------
# 3. Control plane faults


def test_control_plane_killed_and_restarted_under_load(stack: Stack) -> None:
    """SIGKILL of the control plane while 4 clients send plain and streamed requests, restart
    3 s later: no client request fails, and every request's usage record arrives exactly once
    (records buffered at the edge while it was away, resent after it came back)."""
    cp = stack.control_plane
    with Load(stack.envoy, stack.key) as load:
        time.sleep(2)
        cp.stop(kill=True)
        during = len(load.ok)
        time.sleep(3)
        assert len(load.ok) > during, "requests were served while the control plane was down"
        cp.start()
        time.sleep(5)
    assert load.failures == [], load.failures[:10]
    assert len(load.ok) > 40, len(load.ok)
    assert_each_recorded_once(cp, stack.key_id, load.ok)
    assert_no_crash(stack.envoy)


def rest(
    cp: ControlPlane, method: str, path: str, token: str | None = None, **kwargs: Any
) -> requests.Response:
    return requests.request(
        method,
        f"{cp.rest_url}/api/v1{path}",
        headers={"authorization": f"Bearer {token or cp.admin_token}"},
        timeout=30,
        **kwargs,
    )


def test_invalid_writes_are_refused_whole_and_the_active_configuration_stays(stack: Stack) -> None:
    """Writes that fail validation (REST admin API) are refused with a typed 400 and change
    nothing: no new cluster, no new rule, the edge keeps the configuration it had (a rule that
    blocked still blocks, normal requests are served), and a valid write afterwards goes
    through (the publisher is not stuck)."""
    cp, envoy = stack.control_plane, stack.envoy
    created = rest(cp, "POST", "/firewall_rules", json={
        "name": "keep me", "priority": 1, "is_enabled": True, "scope": "prompt",
        "type": "substring", "pattern": "keep-blocking", "action": "block",
    })  # fmt: skip
    assert created.status_code in (200, 201), created.text
    blocked = {"model": OPENAI_MODEL, "messages": user("keep-blocking this")}
    wait_for(lambda: all(envoy.post_chat(stack.key, blocked).status_code == 422 for _ in range(4)),
             10, what="the rule at the edge")
    providers_before = rest(cp, "GET", "/providers").json()["data"]
    rules_before = rest(cp, "GET", "/routing_rules").json()["data"]

    invalid = [
        ("POST", "/providers", {"name": "broken", "kind": "openai", "base_url": "ftp://x/v1"}),
        ("POST", "/providers", {"name": "Not A Name!", "kind": "openai",
                                "base_url": "http://127.0.0.1:9/v1"}),
        ("POST", "/providers", {"name": "pigeon", "kind": "carrier-pigeon",
                                "base_url": "http://127.0.0.1:9/v1"}),
        ("POST", "/firewall_rules", {"name": "broken", "priority": 1, "is_enabled": True,
                                     "scope": "prompt", "type": "regex", "pattern": "(",
                                     "action": "block"}),
        ("POST", "/routing_rules", {"name": "broken", "priority": 1,
                                    "match_json": {"no_such_condition": 1},
                                    "action_json": {"set_provider": "openai"}}),
        ("POST", "/routing_rules", {"name": "broken2", "priority": 1,
                                    "match_json": {"task": "x"},
                                    "action_json": {"set_mode": "warp-speed"}}),
        ("PUT", f"/routing_configs/{stack.key_id}", {"strategy": "teleport", "backends": []}),
    ]  # fmt: skip
    for method, path, body in invalid:
        r = rest(cp, method, path, json=body)
        assert r.status_code == 400, (path, body, r.status_code, r.text)
        assert r.json()["error"]["type"] == "invalid_request_error", r.text

    assert rest(cp, "GET", "/providers").json()["data"] == providers_before
    assert rest(cp, "GET", "/routing_rules").json()["data"] == rules_before
    assert [r["name"] for r in rest(cp, "GET", "/firewall_rules").json()["data"]] == ["keep me"]
    assert "tr_provider_broken" not in envoy.clusters()
    time.sleep(0.5)  # what a wrongly accepted write would need to reach the edge
    for _ in range(4):
        assert envoy.post_chat(stack.key, blocked).status_code == 422
        ok = envoy.post_chat(stack.key, {"model": OPENAI_MODEL, "messages": user("still ok")})
        assert ok.status_code == 200, ok.text

    # A valid write still reaches the edge.
    created = rest(cp, "POST", "/firewall_rules", json={
        "name": "after", "priority": 1, "is_enabled": True, "scope": "prompt",
        "type": "substring", "pattern": "after-the-refusals", "action": "block",
    })  # fmt: skip
    assert created.status_code in (200, 201), created.text
    after = {"model": OPENAI_MODEL, "messages": user("after-the-refusals")}
    wait_for(lambda: envoy.post_chat(stack.key, after).status_code == 422, 10,
             what="the valid write at the edge")
    assert_no_crash(envoy)


# --------------------------------------------------------------------------------------------
# 4. Configuration pushed under load


def test_configuration_pushed_under_load_drops_no_request(stack: Stack, harness: Harness) -> None:
    """While 4 clients send requests, three new providers (new clusters through ADS), routing
    rules and firewall rules are added one after another: no client request fails, and each new
    provider serves traffic once added."""
    cp, envoy = stack.control_plane, stack.envoy
    extras: list[FakeOpenAI] = []
    with Load(envoy, stack.key) as load:
        time.sleep(1)
        for i in range(3):
            fake = harness.fake_openai(api_key=None)
            extras.append(fake)
            cp.add_provider(f"extra{i}", "openai-compatible", fake.base_url)
            cp.cli(
                "rules", "create", "--name", f"route {i}", "--priority", str(10 + i),
                "--match", json.dumps({"task": f"never-{i}"}),
                "--action", json.dumps({"set_provider": "openai", "set_model": "gpt-4o-mini"}),
            )  # fmt: skip
            cp.cli(
                "firewall", "add", "--name", f"never {i}", "--scope", "prompt",
                "--type", "substring", "--pattern", f"zz-never-{i}-zz", "--action", "block",
            )  # fmt: skip
            body = {"model": f"extra{i}/local-model", "messages": user(f"to extra {i}")}

            def served(body: dict[str, Any] = body, i: int = i) -> bool:
                r = envoy.post_chat(stack.key, body)
                return r.status_code == 200 and r.headers["x-tokenrouter-provider"] == f"extra{i}"

            wait_for(served, 15, interval=0.1, what=f"extra{i} serving")
            time.sleep(0.5)
        time.sleep(1)
    assert load.failures == [], load.failures[:10]
    assert len(load.ok) > 40, len(load.ok)
    for i, fake in enumerate(extras):
        assert fake.chat_requests(), f"extra{i} got no traffic"
        assert fake.chat_requests()[-1].body["model"] == "local-model"
    assert len(cp.cli("firewall", "list")) == 3
    assert_no_crash(envoy)


# --------------------------------------------------------------------------------------------
# 5. Secrets


def test_no_secret_in_any_file_or_error_body_and_keys_stay_in_their_lane(
    harness: Harness,
) -> None:
    """A mix of requests (stored provider credentials, a BYOK key, two gateway keys, errors,
    streams, stored bodies, an Idempotency-Key), then every file of every process (control plane
    data directory with the SQLite files, its log, the CLI log, Envoy's bootstrap and log) and
    every response is searched for every secret: none appears, except the admin token in
    `<data-dir>/admin_token` and in the Envoy bootstrap, which authenticates Envoy to the control
    plane with it by design. A gateway key is refused by the REST admin routes and the gRPC
    Admin API, and cannot read another key's logs or usage."""
    cp = harness.control_plane(generated_token=True)
    admin_token = (cp.data_dir / "admin_token").read_text().strip()
    assert admin_token
    openai_secret = f"sk-proj-{secrets.token_hex(16)}"
    claude_secret = f"sk-ant-api03-{secrets.token_hex(16)}"
    byok_secret = f"sk-ant-byok-{secrets.token_hex(16)}"
    openai_fake = harness.fake_openai(openai_secret)
    claude_fake = FakeAnthropic(claude_secret).start()
    harness._fakes.append(claude_fake)
    claude_fake.also_accepted = {byok_secret}
    # Secrets go in through REST, never on a command line (the CLI log records those).
    for name, kind, fake, secret in (
        ("openai", "openai", openai_fake, openai_secret),
        ("claude", "anthropic", claude_fake, claude_secret),
    ):
        r = rest(cp, "POST", "/providers", token=admin_token, json={
            "name": name, "kind": kind, "base_url": fake.base_url, "api_key": secret})
        assert r.status_code in (200, 201), r.text
    keys = {}
    for name in ("alice", "bob"):
        r = rest(cp, "POST", "/keys", token=admin_token, json={"name": name})
        assert r.status_code in (200, 201), r.text
        keys[name] = (r.json()["data"]["id"], r.json()["data"]["raw"])
    (alice_id, alice), (bob_id, bob) = keys["alice"], keys["bob"]
    cp.cli("keys", "update", bob_id, "--store-bodies", "true")
    envoy = harness.envoy(cp, providers=["openai", "claude"])
    envoy.wait_until_serving(alice)
    envoy.wait_until_serving(bob)
    secret_values = {
        "alice's gateway key": alice,
        "bob's gateway key": bob,
        "openai credential": openai_secret,
        "claude credential": claude_secret,
        "BYOK key": byok_secret,
        "admin token": admin_token,
    }

    seen: list[requests.Response] = []

    def send(path: str, body: Any, key: str | None, **headers: str) -> requests.Response:
        all_headers = {"content-type": "application/json", **headers}
        if key is not None:
            all_headers["authorization"] = f"Bearer {key}"
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        r = requests.post(f"{envoy.url}{path}", data=data, headers=all_headers, timeout=60)
        seen.append(r)
        return r

    chat = {"model": OPENAI_MODEL, "messages": user("hello secrets")}
    assert send("/v1/chat/completions", chat, alice).status_code == 200
    assert send("/v1/chat/completions", {**chat, "stream": True}, alice).status_code == 200
    messages = {"model": CLAUDE_MODEL, "max_tokens": 20, "messages": user("hi claude")}
    assert send("/v1/messages", messages, alice).status_code == 200
    assert send("/v1/chat/completions", chat, bob, **{"Idempotency-Key": "once"}).status_code == 200
    # BYOK: the claude fake stops accepting the stored credential; the BYOK key works.
    claude_fake.api_key = byok_secret
    byok_chat = {"model": CLAUDE_MODEL, "messages": user("byok please")}
    assert send("/v1/chat/completions", byok_chat, bob).status_code == 401
    r = send("/v1/chat/completions", byok_chat, bob, **{"X-Anthropic-Key": byok_secret})
    assert r.status_code == 200, r.text
    r = send("/v1/messages", {**messages, "stream": True}, bob, **{"X-Anthropic-Key": byok_secret})
    assert r.status_code == 200, r.text
    # A BYOK key sent for another provider's kind reaches nobody.
    r = send("/v1/chat/completions", chat, bob, **{"X-Anthropic-Key": byok_secret})
    assert r.status_code == 200
    assert openai_fake.chat_requests()[-1].headers["authorization"] == f"Bearer {openai_secret}"
    # Errors of every kind.
    openai_fake.inject({"status": 503}, {"status": 429, "retry_after": 3})
    assert send("/v1/chat/completions", chat, alice).status_code == 503
    assert send("/v1/chat/completions", chat, alice).status_code == 429
    assert send("/v1/chat/completions", chat, f"{alice}x").status_code == 401
    assert send("/v1/chat/completions", chat, None, **{"x-api-key": alice[:-1]}).status_code == 401
    assert send("/v1/chat/completions", b"{", alice).status_code == 400
    assert send("/v1/chat/completions", {**chat, "model": "nope/x"}, bob).status_code == 404

    # A gateway key on the admin surfaces: REST admin routes and the gRPC Admin API.
    for method, path in [("GET", "/keys"), ("GET", "/providers"), ("POST", "/providers"),
                         ("GET", "/firewall_rules"), ("POST", "/keys")]:  # fmt: skip
        r = rest(cp, method, path, token=alice, json={"name": "x"})
        assert r.status_code == 403, (method, path, r.text)
        assert r.json()["error"]["type"] == "permission_error"
        seen.append(r)
    for args in (["keys", "list"], ["providers", "list"], ["firewall", "list"]):
        result = cp.run_cli(*args, env={"TOKENROUTER_ADMIN_TOKEN": alice})
        assert result.returncode == 1, (args, result.stdout, result.stderr)
        for text in (result.stdout, result.stderr):
            assert alice not in text

    # Logs and usage: each key sees its own only.
    ids = {r.headers["x-request-id"] for r in seen if "x-request-id" in r.headers}
    rows = cp.wait_for_usage(ids, timeout=30)
    bobs = [rid for rid, row in rows.items() if row["key_id"] == bob_id]
    alices = [rid for rid, row in rows.items() if row["key_id"] == alice_id]
    assert bobs and alices
    assert rest(cp, "GET", f"/logs/{bobs[0]}", token=alice).status_code == 404
    assert rest(cp, "GET", f"/logs/{alices[0]}", token=alice).status_code == 200
    other = rest(cp, "GET", "/logs", token=alice, params={"key_id": bob_id})
    assert other.status_code in (403, 404) or other.json()["data"] == [], other.text
    own = rest(cp, "GET", "/logs", token=alice, params={"limit": 1000}).json()["data"]
    assert {row["key_id"] for row in own} == {alice_id}
    usage = rest(cp, "GET", "/usage", token=alice, params={"days": 1}).json()
    alice_ok = [rid for rid in alices if 200 <= rows[rid]["status"] < 300]
    assert usage["total_requests"] == len(alice_ok), usage
    # Bob's key stores bodies: they are in the database the search below covers.
    stored = [
        rest(cp, "GET", f"/logs/{rid}", token=admin_token).json()["data"]
        for rid in bobs
        if rows[rid]["status"] == 200
    ]
    assert any(row["has_bodies"] for row in stored), stored

    # CLI verbs that print configuration, logs and usage (the CLI log records their output).
    for args in (["providers", "list"], ["keys", "list"], ["logs", "--limit", "100"],
                 ["usage", "--days", "1"], ["firewall", "list"]):  # fmt: skip
        cp.cli(*args)

    # Stop everything, so every log and the database are complete on disk.
    harness.close()

    allowed = {
        ("admin token", (cp.data_dir / "admin_token").resolve()),
        ("admin token", envoy.config_path.resolve()),
    }
    files = [p for p in harness.workdir.rglob("*") if p.is_file()]
    assert any(p.name.endswith(".db") or "sqlite" in p.name for p in files), files
    assert envoy.log_path in files and cp.log_path in files and cp.cli_log_path in files
    found = {
        (what, path.resolve())
        for path in files
        for what, value in secret_values.items()
        if value.encode() in path.read_bytes()
    }
    assert found - allowed == set()
    assert found == allowed, "the search reads the files where the admin token must be"
    for r in seen:
        text = r.text + json.dumps(dict(r.headers))
        found = [what for what, value in secret_values.items() if value in text]
        assert found == [], (r.request.url, r.status_code, found)
