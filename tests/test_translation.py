"""Every client API against every provider wire format, end to end: official SDKs → Envoy with
the filter → fake OpenAI, Anthropic and Gemini providers speaking their documented formats."""

from __future__ import annotations

import base64
import http.client
import json
from dataclasses import dataclass
from typing import Any

import anthropic
import pytest
import requests
from openai import OpenAI

from fakes.anthropic_fake import FakeAnthropic
from fakes.gemini_fake import FakeGemini
from fakes.openai_fake import FakeOpenAI
from harness import PROVIDER_SECRET, ControlPlane, Envoy, Harness, wait_for

ANTHROPIC_SECRET = "sk-ant-provider-secret"
GEMINI_SECRET = "gemini-provider-secret"

# provider name → model the tests ask for
MODELS = {
    "openai": "openai/gpt-4o-mini",
    "claude": "claude/claude-haiku-4-5",
    "gem": "gem/gemini-1.5-flash",
    "azure": "azure/gpt-4o-mini",
}
PROVIDERS = list(MODELS)

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}

# 1×1 transparent PNG
PIXEL_PNG = base64.b64encode(
    bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
        "1f15c4890000000d49444154789c6360000002000100ffff03000006000557bfab"
        "d40000000049454e44ae426082"
    )
).decode()


@dataclass
class Matrix:
    control_plane: ControlPlane
    envoy: Envoy
    fakes: dict[str, FakeOpenAI]
    key_id: str
    key: str

    def openai(self) -> OpenAI:
        return self.envoy.openai(self.key)

    def anthropic(self) -> anthropic.Anthropic:
        return anthropic.Anthropic(base_url=self.envoy.url, api_key=self.key, max_retries=0)

    def received(self, provider: str) -> list[Any]:
        """Requests the provider's fake received (models listing excluded)."""
        return [r for r in self.fakes[provider].requests if r.method == "POST"]


@pytest.fixture
def matrix(harness: Harness) -> Matrix:
    control_plane = harness.control_plane()
    openai_fake = harness.fake_openai(PROVIDER_SECRET)
    azure_fake = harness.fake_openai(PROVIDER_SECRET)
    claude_fake = FakeAnthropic(ANTHROPIC_SECRET).start()
    gemini_fake = FakeGemini(GEMINI_SECRET).start()
    harness._fakes += [claude_fake, gemini_fake]  # stopped with the harness
    control_plane.add_provider("openai", "openai", openai_fake.base_url, PROVIDER_SECRET)
    control_plane.add_provider("claude", "anthropic", claude_fake.base_url, ANTHROPIC_SECRET)
    control_plane.add_provider("gem", "gemini", gemini_fake.base_url, GEMINI_SECRET)
    azure_base = azure_fake.base_url.removesuffix("/v1")
    control_plane.add_provider("azure", "azure", azure_base, PROVIDER_SECRET)
    key_id, key = control_plane.create_key("matrix")
    envoy = harness.envoy(control_plane, providers=PROVIDERS)
    envoy.wait_until_serving(key)
    fakes = {"openai": openai_fake, "claude": claude_fake, "gem": gemini_fake, "azure": azure_fake}
    return Matrix(control_plane, envoy, fakes, key_id, key)


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def assert_provider_saw_its_own_format(matrix: Matrix, provider: str) -> dict[str, Any]:
    """The provider got exactly one request, in its wire format, with its credential and never
    the gateway key or an internal header; returns the body it got."""
    [sent] = matrix.received(provider)
    headers = sent.headers
    assert matrix.key not in json.dumps(headers) and matrix.key not in json.dumps(sent.body)
    assert not [h for h in headers if h.startswith("x-tr-")]
    if provider == "claude":
        assert sent.path == "/v1/messages"
        assert headers["x-api-key"] == ANTHROPIC_SECRET
        assert headers["anthropic-version"]
    elif provider == "gem":
        assert sent.path.startswith("/v1beta/models/gemini-1.5-flash:")
        assert headers["x-goog-api-key"] == GEMINI_SECRET
    elif provider == "azure":
        assert sent.path == "/openai/deployments/gpt-4o-mini/chat/completions"
        assert sent.query.startswith("api-version=")
        assert headers["api-key"] == PROVIDER_SECRET
    else:
        assert sent.path == "/v1/chat/completions"
        assert headers["authorization"] == f"Bearer {PROVIDER_SECRET}"
    return sent.body


# --------------------------------------------------------------------------------------------
# Chat Completions


@pytest.mark.parametrize("provider", PROVIDERS)
def test_chat_completion_against_every_provider(matrix: Matrix, provider: str) -> None:
    raw = matrix.openai().chat.completions.with_raw_response.create(
        model=MODELS[provider], messages=user("hello from chat")
    )
    completion = raw.parse()

    assert completion.choices[0].message.content == "echo: hello from chat"
    assert completion.choices[0].finish_reason == "stop"
    assert raw.headers["x-tokenrouter-provider"] == provider
    assert completion.usage is not None and completion.usage.prompt_tokens > 0
    assert_provider_saw_its_own_format(matrix, provider)
    row = matrix.control_plane.wait_for_usage([raw.headers["x-request-id"]])[
        raw.headers["x-request-id"]
    ]
    assert (row["input_tokens"], row["output_tokens"]) == (
        completion.usage.prompt_tokens,
        completion.usage.completion_tokens,
    )
    assert row["status"] == 200 and row["client_api"] == "chat.completions"


@pytest.mark.parametrize("provider", PROVIDERS)
def test_streamed_chat_completion_against_every_provider(matrix: Matrix, provider: str) -> None:
    stream = matrix.openai().chat.completions.create(
        model=MODELS[provider], messages=user("stream this please"), stream=True
    )
    chunks = list(stream)

    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "echo: stream this please"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert all(c.choices for c in chunks), "the usage chunk the client did not ask for is removed"


@pytest.mark.parametrize("provider", PROVIDERS)
def test_chat_tool_call_round_trip(matrix: Matrix, provider: str) -> None:
    client = matrix.openai()
    first = client.chat.completions.create(
        model=MODELS[provider], messages=user("weather in Paris"), tools=[WEATHER_TOOL]
    )
    [call] = first.choices[0].message.tool_calls or []
    assert first.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments)["city"]

    second = client.chat.completions.create(
        model=MODELS[provider],
        tools=[WEATHER_TOOL],
        messages=[
            *user("weather in Paris"),
            {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
            {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"},
        ],
    )
    # Gemini takes a tool result as an object ({"result": …}); its fake echoes that object.
    answer = second.choices[0].message.content or ""
    assert answer.startswith("tool result: ") and "sunny, 21 C" in answer


@pytest.mark.parametrize("provider", ["openai", "claude", "gem"])
def test_chat_image_input_reaches_the_provider_in_its_format(
    matrix: Matrix, provider: str
) -> None:
    content = [
        {"type": "text", "text": "what is in this picture"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PIXEL_PNG}"}},
    ]
    completion = matrix.openai().chat.completions.create(
        model=MODELS[provider], messages=[{"role": "user", "content": content}]
    )

    assert completion.choices[0].message.content == "echo: what is in this picture"
    sent = json.dumps(assert_provider_saw_its_own_format(matrix, provider))
    assert PIXEL_PNG in sent
    if provider == "claude":
        assert '"media_type": "image/png"' in sent
    elif provider == "gem":
        assert '"mime' in sent.replace("mimeType", "mime_type")


# --------------------------------------------------------------------------------------------
# Responses API


@pytest.mark.parametrize("provider", PROVIDERS)
def test_responses_api_against_every_provider(matrix: Matrix, provider: str) -> None:
    client = matrix.openai()
    response = client.responses.create(
        model=MODELS[provider],
        instructions="Answer briefly.",
        input=[{"role": "user", "content": [{"type": "input_text", "text": "hello responses"}]}],
        extra_headers={"OpenAI-Beta": "responses=v1"},
    )

    assert response.output_text == "echo: hello responses"
    assert response.status == "completed"
    assert response.usage is not None and response.usage.input_tokens > 0
    assert_provider_saw_its_own_format(matrix, provider)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_streamed_responses_api_against_every_provider(matrix: Matrix, provider: str) -> None:
    events = list(
        matrix.openai().responses.create(
            model=MODELS[provider], input="stream responses", stream=True
        )
    )

    types = [e.type for e in events]
    assert types[0] == "response.created" and types[-1] == "response.completed"
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == "echo: stream responses"
    assert events[-1].response.output_text == "echo: stream responses"


# --------------------------------------------------------------------------------------------
# Anthropic Messages


@pytest.mark.parametrize("provider", PROVIDERS)
def test_messages_api_against_every_provider(matrix: Matrix, provider: str) -> None:
    message = matrix.anthropic().messages.create(
        model=MODELS[provider],
        max_tokens=256,
        system="Be brief.",
        messages=[{"role": "user", "content": "hello messages"}],
    )

    assert message.content[0].type == "text"
    assert message.content[0].text == "echo: hello messages"
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens > 0
    assert_provider_saw_its_own_format(matrix, provider)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_streamed_messages_api_against_every_provider(matrix: Matrix, provider: str) -> None:
    with matrix.anthropic().messages.stream(
        model=MODELS[provider],
        max_tokens=256,
        messages=[{"role": "user", "content": "stream messages"}],
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()

    assert text == "echo: stream messages"
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens > 0


@pytest.mark.parametrize("provider", PROVIDERS)
def test_messages_tool_use_round_trip(matrix: Matrix, provider: str) -> None:
    tool = {
        "name": "get_weather",
        "description": "Current weather of a city.",
        "input_schema": WEATHER_TOOL["function"]["parameters"],
    }
    client = matrix.anthropic()
    first = client.messages.create(
        model=MODELS[provider],
        max_tokens=256,
        tools=[tool],
        messages=[{"role": "user", "content": "weather in Paris"}],
    )
    [use] = [block for block in first.content if block.type == "tool_use"]
    assert first.stop_reason == "tool_use"
    assert use.name == "get_weather" and use.input["city"]

    second = client.messages.create(
        model=MODELS[provider],
        max_tokens=256,
        tools=[tool],
        messages=[
            {"role": "user", "content": "weather in Paris"},
            {"role": "assistant", "content": [use.model_dump()]},
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": use.id, "content": "sunny, 21 C"}
                ],
            },
        ],
    )
    answer = second.content[0].text
    assert answer.startswith("tool result: ") and "sunny, 21 C" in answer


# --------------------------------------------------------------------------------------------
# Embeddings, models, errors


def test_embeddings_on_openai(matrix: Matrix) -> None:
    result = matrix.openai().embeddings.create(
        model="openai/text-embedding-3-small", input=["one two", "three"]
    )
    assert len(result.data) == 2 and len(result.data[0].embedding) > 0
    assert result.usage.prompt_tokens == 3


def test_embeddings_on_gemini(matrix: Matrix) -> None:
    result = matrix.openai().embeddings.create(
        model="gem/text-embedding-004", input=["one two", "three"]
    )
    assert [d.index for d in result.data] == [0, 1]
    assert result.data[0].embedding != result.data[1].embedding
    [sent] = matrix.received("gem")
    assert sent.path == "/v1beta/models/text-embedding-004:batchEmbedContents"
    assert sent.headers["x-goog-api-key"] == GEMINI_SECRET


def test_embeddings_on_a_provider_without_them_is_a_clear_4xx(matrix: Matrix) -> None:
    response = requests.post(
        f"{matrix.envoy.url}/v1/embeddings",
        headers={"Authorization": f"Bearer {matrix.key}"},
        json={"model": "claude/claude-haiku-4-5", "input": "x"},
        timeout=10,
    )
    assert 400 <= response.status_code < 500, response.text
    error = response.json()["error"]
    assert error["provider"] == "claude" and error["message"]
    assert matrix.received("claude") == []


def test_models_lists_the_catalogue_in_openai_shape(matrix: Matrix) -> None:
    models = matrix.openai().models.list()
    by_id = {m.id: m for m in models.data}
    mini = by_id["openai/gpt-4o-mini"].model_dump()
    assert mini["object"] == "model" and mini["owned_by"] == "openai"
    assert mini["pricing"]["input_usd_per_mtok"] == "0.15"
    assert mini["context_window"] == 128000
    assert {"chat.completions", "responses", "messages"} <= set(mini["capabilities"])
    assert mini["available"] is True
    embedding = by_id["openai/text-embedding-3-small"].model_dump()
    assert embedding["capabilities"] == ["embeddings"]
    assert mini["enabled"] is True


def test_provider_error_is_mapped_to_the_envelope(matrix: Matrix) -> None:
    # The OpenAI fake refuses a wrong credential with its own 401 body.
    matrix.control_plane.cli(
        "providers", "add", "--name", "openai", "--kind", "openai",
        "--base-url", matrix.fakes["openai"].base_url, "--api-key", "sk-wrong", "--replace",
    )  # fmt: skip

    def refused() -> list[requests.Response] | None:
        response = requests.post(
            f"{matrix.envoy.url}/v1/messages",
            headers={"x-api-key": matrix.key, "anthropic-version": "2023-06-01"},
            json={"model": MODELS["openai"], "max_tokens": 10, "messages": user("hi")},
            timeout=10,
        )
        return [response] if response.status_code == 401 else None

    [response] = wait_for(refused, what="the wrong provider credential to reach the edge")
    body = response.json()
    assert body["type"] == "error", "the Anthropic SDK's error shape"
    assert body["error"]["provider"] == "openai"
    assert body["error"]["http_status"] == 401
    assert body["error"]["raw"]["error"]["message"]
    assert body["request_id"]


CREDENTIAL_HEADERS = ("authorization", "x-api-key", "api-key", "x-goog-api-key")


@pytest.mark.parametrize("provider", PROVIDERS)
def test_repeated_gateway_key_headers_never_reach_the_provider(matrix: Matrix, provider: str) -> None:
    """A client may send its key in both places an SDK uses, and repeat one (Envoy joins a
    repeated `authorization` into one value, but keeps each `x-api-key` line): the provider
    gets one credential header, its own, and no line of the gateway key (the edge replaces a
    lone header in place and removes a repeated one whole)."""
    body = json.dumps({"model": MODELS[provider], "messages": user("twice")})
    conn = http.client.HTTPConnection("127.0.0.1", matrix.envoy.port, timeout=10)
    conn.putrequest("POST", "/v1/chat/completions", skip_accept_encoding=True)
    for name, value in [
        ("authorization", f"Bearer {matrix.key}"),
        ("x-api-key", matrix.key),
        ("x-api-key", matrix.key),
        ("content-type", "application/json"),
        ("content-length", str(len(body))),
    ]:
        conn.putheader(name, value)
    conn.endheaders(body.encode())
    response = conn.getresponse()
    answer = response.read()
    conn.close()
    assert response.status == 200, answer

    [sent] = matrix.received(provider)
    assert not [line for line in sent.header_lines if matrix.key in line[1]]
    credentials = [line for line in sent.header_lines if line[0] in CREDENTIAL_HEADERS]
    expected = {
        "openai": ("authorization", f"Bearer {PROVIDER_SECRET}"),
        "claude": ("x-api-key", ANTHROPIC_SECRET),
        "gem": ("x-goog-api-key", GEMINI_SECRET),
        "azure": ("api-key", PROVIDER_SECRET),
    }[provider]
    assert credentials == [expected]


@pytest.mark.parametrize("provider", PROVIDERS)
def test_responses_function_call_round_trip(matrix: Matrix, provider: str) -> None:
    tool = {"type": "function", **WEATHER_TOOL["function"]}
    client = matrix.openai()
    first = client.responses.create(model=MODELS[provider], input="weather in Paris", tools=[tool])
    [call] = [item for item in first.output if item.type == "function_call"]
    assert call.name == "get_weather" and json.loads(call.arguments)["city"]

    second = client.responses.create(
        model=MODELS[provider],
        tools=[tool],
        input=[
            {"role": "user", "content": "weather in Paris"},
            {
                "type": "function_call",
                "call_id": call.call_id,
                "name": call.name,
                "arguments": call.arguments,
            },
            {"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21 C"},
        ],
    )
    answer = second.output_text
    assert answer.startswith("tool result: ") and "sunny, 21 C" in answer


@pytest.mark.parametrize("provider", ["openai", "claude", "gem"])
def test_responses_and_messages_image_input(matrix: Matrix, provider: str) -> None:
    data_url = f"data:image/png;base64,{PIXEL_PNG}"
    response = matrix.openai().responses.create(
        model=MODELS[provider],
        input=[
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "describe the image"},
                    {"type": "input_image", "image_url": data_url},
                ],
            }
        ],
    )
    assert response.output_text == "echo: describe the image"
    message = matrix.anthropic().messages.create(
        model=MODELS[provider],
        max_tokens=64,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "and this one"},
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": PIXEL_PNG},
                    },
                ],
            }
        ],
    )
    assert message.content[0].text == "echo: and this one"
    sent = [json.dumps(r.body) for r in matrix.received(provider)]
    assert len(sent) == 2 and all(PIXEL_PNG in body for body in sent)


# --------------------------------------------------------------------------------------------
# The seeds' curl examples (getting started guide), verbatim, through the whole stack


def seed_input(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [{"type": "input_text", "text": text}]}]


SEED_REQUESTS = {
    "standard": {
        "model": "auto:balance",
        "input": seed_input("Summarize what TokenRouter does in one sentence."),
    },
    "auto_routing": {
        "model": "auto:quality",
        "metadata": {"workspace": "docs-demo", "priority": "launch"},
        "input": seed_input("Draft an onboarding email for new customers."),
    },
    "modes": {
        "model": "auto:latency",
        "router_mode": "latency",
        "input": seed_input("Respond quickly with a short acknowledgement."),
    },
    "tools": {
        "model": "auto:quality",
        "tools": [
            {
                "type": "function",
                "name": "lookup_customer",
                "description": "Fetch CRM profile by email",
                "parameters": {
                    "type": "object",
                    "properties": {"email": {"type": "string", "format": "email"}},
                    "required": ["email"],
                    "additionalProperties": False,
                },
            }
        ],
        "tool_choice": "auto",
        "input": seed_input("Find the CRM record for sara@acme.dev and suggest next steps."),
    },
}


def seed_post(matrix: Matrix, body: dict[str, Any], **headers: str) -> requests.Response:
    return requests.post(
        f"{matrix.envoy.url}/v1/responses",
        json=body,
        headers={
            "Authorization": f"Bearer {matrix.key}",
            "Content-Type": "application/json",
            "OpenAI-Beta": "responses=v1",
            **headers,
        },
        timeout=30,
        stream=bool(body.get("stream")),
    )


@pytest.mark.parametrize("example", list(SEED_REQUESTS))
def test_seed_curl_examples(matrix: Matrix, example: str) -> None:
    r = seed_post(matrix, SEED_REQUESTS[example])
    assert r.status_code == 200, r.text
    response = r.json()
    assert response["object"] == "response" and response["status"] == "completed"
    assert r.headers["x-request-id"].startswith("req_")
    assert r.headers["x-tokenrouter-mode"] == {
        "standard": "balance", "auto_routing": "quality", "modes": "latency", "tools": "quality"
    }[example]
    provider = r.headers["x-tokenrouter-provider"]
    assert provider in PROVIDERS
    kinds = [item["type"] for item in response["output"]]
    if example == "tools":
        [call] = [i for i in response["output"] if i["type"] == "function_call"]
        assert call["name"] == "lookup_customer"
        assert json.loads(call["arguments"])
    else:
        assert kinds == ["message"], kinds
        assert response["output"][0]["content"][0]["text"]
    assert response["usage"]["input_tokens"] > 0
    # The provider got one request in its own wire format (and never the gateway key).
    [sent] = matrix.received(provider)
    assert matrix.key not in json.dumps(sent.headers) and matrix.key not in json.dumps(sent.body)
    assert not [h for h in sent.headers if h.startswith("x-tr-")]
    model = r.headers["x-tokenrouter-model"]
    expected_path = {
        "openai": "/v1/chat/completions",
        "claude": "/v1/messages",
        "azure": f"/openai/deployments/{model}/chat/completions",
    }.get(provider, f"/v1beta/models/{model}:generateContent")
    assert sent.path == expected_path


def test_seed_stream_example(matrix: Matrix) -> None:
    body = {
        "model": "auto:balance",
        "stream": True,
        "input": seed_input("Stream a short haiku about resilient infrastructure."),
    }
    r = seed_post(matrix, body, Accept="text/event-stream")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    events = [
        line.split(":", 1)[1].strip()
        for line in r.iter_lines(decode_unicode=True)
        if line and line.startswith("event:")
    ]
    assert events[0] == "response.created"
    assert "response.output_text.delta" in events
    assert events[-1] == "response.completed"
