"""The fake OpenAI provider itself, checked with the official SDK (no gateway involved)."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator

import openai
import pytest
from openai import OpenAI

from fakes.openai_fake import FakeOpenAI, reply_for, split_reply, usage_for

MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "say hello to the whole wide world"},
]


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI("sk-provider-secret") as fake:
        yield fake


def client_for(fake: FakeOpenAI, api_key: str = "sk-provider-secret") -> OpenAI:
    return OpenAI(base_url=fake.base_url, api_key=api_key, max_retries=0, timeout=10)


def test_deterministic_model() -> None:
    assert reply_for(MESSAGES) == "echo: say hello to the whole wide world"
    usage = usage_for(MESSAGES)
    assert usage["prompt_tokens"] == 3 + 7 + 5
    assert usage["completion_tokens"] == 8
    assert usage["total_tokens"] == 23
    assert "".join(split_reply("echo: a b  c", 2)) == "echo: a b  c"


def test_sync_completion(fake: FakeOpenAI) -> None:
    completion = client_for(fake).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert completion.object == "chat.completion"
    assert completion.id.startswith("chatcmpl-")
    assert completion.model == "gpt-4o-mini"
    assert completion.choices[0].message.content == reply_for(MESSAGES)
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.model_dump()["prompt_tokens"] == usage_for(MESSAGES)["prompt_tokens"]
    [request] = fake.chat_requests()
    assert request.headers["authorization"] == "Bearer sk-provider-secret"
    assert request.body["model"] == "gpt-4o-mini"


@pytest.mark.parametrize("include_usage", [False, True])
def test_streaming_completion(fake: FakeOpenAI, include_usage: bool) -> None:
    options = {"stream_options": {"include_usage": True}} if include_usage else {}
    stream = client_for(fake).chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True, **options
    )
    chunks = list(stream)
    content = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert "".join(content) == reply_for(MESSAGES)
    assert len([piece for piece in content if piece]) > 1, "content arrives in several deltas"
    finish = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finish == ["stop"]
    usage_chunks = [c for c in chunks if c.usage is not None]
    if include_usage:
        assert [c.choices for c in usage_chunks] == [[]]
        assert usage_chunks[0].usage.completion_tokens == usage_for(MESSAGES)["completion_tokens"]
    else:
        assert usage_chunks == []


def test_wrong_key_gets_openai_error(fake: FakeOpenAI) -> None:
    with pytest.raises(openai.AuthenticationError) as error:
        client_for(fake, "sk-wrong").chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert error.value.status_code == 401
    assert error.value.code == "invalid_api_key"
    assert len(fake.requests) == 1, "rejected requests are recorded too"


def test_models(fake: FakeOpenAI) -> None:
    ids = [model.id for model in client_for(fake).models.list()]
    assert "gpt-4o-mini" in ids


def test_chunked_request_body_and_keep_alive(fake: FakeOpenAI) -> None:
    body = json.dumps({"model": "gpt-4o-mini", "messages": MESSAGES}).encode()
    connection = http.client.HTTPConnection("127.0.0.1", fake.port, timeout=10)
    headers = {"authorization": "Bearer sk-provider-secret", "content-type": "application/json"}
    for _ in range(2):  # the same connection twice
        connection.request(
            "POST", "/v1/chat/completions", body=iter([body[:10], body[10:]]), headers=headers
        )
        response = connection.getresponse()
        assert response.status == 200
        assert json.loads(response.read())["choices"][0]["message"]["content"] == reply_for(
            MESSAGES
        )
    connection.close()
    assert [r.body["model"] for r in fake.chat_requests()] == ["gpt-4o-mini", "gpt-4o-mini"]


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                "required": ["city", "days"],
            },
        },
    }
]


@pytest.mark.parametrize("stream", [False, True])
def test_tool_call_round_trip(fake: FakeOpenAI, stream: bool) -> None:
    client = client_for(fake)
    if stream:
        with client.chat.completions.stream(model="gpt-4o-mini", messages=MESSAGES, tools=TOOLS) as s:
            first = s.get_final_completion()
    else:
        first = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, tools=TOOLS)
    assert first.choices[0].finish_reason == "tool_calls"
    [call] = first.choices[0].message.tool_calls
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "say hello to the whole wide world", "days": 1}
    second = client.chat.completions.create(
        model="gpt-4o-mini",
        tools=TOOLS,
        messages=[
            *MESSAGES,
            first.choices[0].message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
        ],
    )
    assert second.choices[0].message.content == "tool result: sunny"


def test_embeddings(fake: FakeOpenAI) -> None:
    result = client_for(fake).embeddings.create(model="text-embedding-3-small", input=["a b c", "d"])
    assert [d.index for d in result.data] == [0, 1]
    assert all(len(d.embedding) == 8 for d in result.data)
    assert result.data[0].embedding != result.data[1].embedding
    assert (result.usage.prompt_tokens, result.usage.total_tokens) == (4, 4)
    [request] = fake.embeddings_requests()
    assert request.body["input"] == ["a b c", "d"]
    with pytest.raises(openai.BadRequestError):
        client_for(fake).embeddings.create(model="m", input=[])
