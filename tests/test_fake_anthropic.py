"""The fake Anthropic provider itself, checked with the official SDK (no gateway involved)."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator

import anthropic
import pytest
from anthropic import Anthropic

from fakes.anthropic_fake import ANTHROPIC_VERSION, FakeAnthropic

KEY = "sk-ant-provider-secret"
MESSAGES = [{"role": "user", "content": "say hello to the whole wide world"}]
TOOLS = [
    {
        "name": "get_weather",
        "description": "Get the weather",
        "input_schema": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city", "days"],
        },
    }
]


@pytest.fixture
def fake() -> Iterator[FakeAnthropic]:
    with FakeAnthropic(KEY) as fake:
        yield fake


def client_for(fake: FakeAnthropic, api_key: str = KEY) -> Anthropic:
    return Anthropic(base_url=fake.base_url, api_key=api_key, max_retries=0, timeout=10)


def test_message(fake: FakeAnthropic) -> None:
    message = client_for(fake).messages.create(
        model="claude-haiku-4-5", max_tokens=64, system="Be terse.", messages=MESSAGES
    )
    assert message.type == "message" and message.role == "assistant"
    assert message.content[0].type == "text"
    assert message.content[0].text == "echo: say hello to the whole wide world"
    assert message.stop_reason == "end_turn"
    # 2 system words + 7 message words + 5 overhead; 8 reply words.
    assert (message.usage.input_tokens, message.usage.output_tokens) == (14, 8)
    [request] = fake.messages_requests()
    # Recent SDKs authenticate with a bearer token; the gateway sends x-api-key (below).
    assert KEY in (request.headers.get("x-api-key"), request.headers.get("authorization", "")[7:])
    assert request.headers["anthropic-version"]


def test_x_api_key_is_accepted(fake: FakeAnthropic) -> None:
    status, payload = _raw_post(
        fake,
        {"model": "m", "max_tokens": 8, "messages": MESSAGES},
        {"x-api-key": KEY, "anthropic-version": ANTHROPIC_VERSION},
    )
    assert (status, payload["content"][0]["text"]) == (200, "echo: say hello to the whole wide world")
    status, payload = _raw_post(
        fake,
        {"model": "m", "max_tokens": 8, "messages": MESSAGES},
        {"x-api-key": "wrong", "anthropic-version": ANTHROPIC_VERSION},
    )
    assert (status, payload["error"]["type"]) == (401, "authentication_error")


def test_stream_event_sequence(fake: FakeAnthropic) -> None:
    client = client_for(fake)
    with client.messages.stream(model="claude-haiku-4-5", max_tokens=64, messages=MESSAGES) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert kinds[:3] == ["message_start", "content_block_start", "ping"] or kinds[0] == "message_start"
    raw = [e for e in kinds if e in ("message_start", "content_block_start", "content_block_stop", "message_delta", "message_stop")]
    assert raw == ["message_start", "content_block_start", "content_block_stop", "message_delta", "message_stop"]
    assert final.content[0].text == "echo: say hello to the whole wide world"
    assert final.usage.output_tokens == 8


def test_tool_use_round_trip(fake: FakeAnthropic) -> None:
    client = client_for(fake)
    first = client.messages.create(model="m", max_tokens=64, tools=TOOLS, messages=MESSAGES)
    assert first.stop_reason == "tool_use"
    [call] = first.content
    assert call.type == "tool_use" and call.name == "get_weather"
    assert call.input == {"city": "say hello to the whole wide world", "days": 1}
    second = client.messages.create(
        model="m",
        max_tokens=64,
        tools=TOOLS,
        messages=[
            *MESSAGES,
            {"role": "assistant", "content": [call.model_dump()]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "sunny"}]},
        ],
    )
    assert second.content[0].text == "tool result: sunny"


def test_streamed_tool_use_accumulates_input(fake: FakeAnthropic) -> None:
    with client_for(fake).messages.stream(model="m", max_tokens=64, tools=TOOLS, messages=MESSAGES) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    assert final.content[0].input == {"city": "say hello to the whole wide world", "days": 1}


@pytest.mark.parametrize(
    ("case", "status", "error_type"),
    [("wrong key", 401, "authentication_error"), ("overloaded", 529, "overloaded_error")],
)
def test_errors_have_anthropic_shape(fake: FakeAnthropic, case: str, status: int, error_type: str) -> None:
    client = client_for(fake, "wrong" if case == "wrong key" else KEY)
    model = "claude-overloaded" if case == "overloaded" else "m"
    with pytest.raises(anthropic.APIStatusError) as info:
        client.messages.create(model=model, max_tokens=8, messages=MESSAGES)
    assert info.value.status_code == status
    assert info.value.body["type"] == "error"
    assert info.value.body["error"]["type"] == error_type


def _raw_post(fake: FakeAnthropic, body: dict, headers: dict[str, str]) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", fake.port, timeout=10)
    conn.request("POST", "/v1/messages", json.dumps(body), {"content-type": "application/json", **headers})
    response = conn.getresponse()
    return response.status, json.loads(response.read())


@pytest.mark.parametrize(
    ("headers", "body", "want"),
    [
        ({"x-api-key": KEY}, {"model": "m", "max_tokens": 8, "messages": MESSAGES}, "anthropic-version"),
        ({"x-api-key": KEY, "anthropic-version": ANTHROPIC_VERSION}, {"model": "m", "messages": MESSAGES}, "max_tokens"),
        (
            {"x-api-key": KEY, "anthropic-version": ANTHROPIC_VERSION},
            {"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "x", "content": "y"}]}]},
            "tool_use_id",
        ),
    ],
)
def test_invalid_requests_are_400(fake: FakeAnthropic, headers: dict, body: dict, want: str) -> None:
    status, payload = _raw_post(fake, body, headers)
    assert status == 400
    assert payload["type"] == "error" and want in payload["error"]["message"]


def test_truncated_stream_has_no_message_stop(fake: FakeAnthropic) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", fake.port, timeout=10)
    body = {"model": "claude-truncate", "max_tokens": 8, "messages": MESSAGES, "stream": True}
    conn.request("POST", "/v1/messages", json.dumps(body), {"x-api-key": KEY, "anthropic-version": ANTHROPIC_VERSION})
    text = conn.getresponse().read().decode()
    assert "event: content_block_delta" in text
    assert "message_stop" not in text
