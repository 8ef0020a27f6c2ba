"""The fake Gemini provider itself, checked over raw HTTP (no gateway involved)."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator

import pytest

from fakes.gemini_fake import FakeGemini

KEY = "gemini-provider-secret"
CONTENTS = [{"role": "user", "parts": [{"text": "say hello to the whole wide world"}]}]
TOOLS = [
    {
        "functionDeclarations": [
            {
                "name": "get_weather",
                "parametersJsonSchema": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}},
                    "required": ["city"],
                },
            }
        ]
    }
]


@pytest.fixture
def fake() -> Iterator[FakeGemini]:
    with FakeGemini(KEY) as fake:
        yield fake


def post(fake: FakeGemini, path: str, body: dict, key: str = KEY) -> tuple[int, str, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", fake.port, timeout=10)
    conn.request("POST", path, json.dumps(body), {"content-type": "application/json", "x-goog-api-key": key})
    response = conn.getresponse()
    return response.status, response.getheader("content-type") or "", response.read()


def sse_chunks(raw: bytes) -> list[dict]:
    events = [e for e in raw.decode().split("\r\n\r\n") if e.strip()]
    assert all(e.startswith("data: ") for e in events), events
    return [json.loads(e[len("data: ") :]) for e in events]


def test_generate_content(fake: FakeGemini) -> None:
    body = {"contents": CONTENTS, "systemInstruction": {"parts": [{"text": "Be terse."}]}}
    status, _, raw = post(fake, "/v1beta/models/gemini-2.5-flash:generateContent", body)
    assert status == 200
    reply = json.loads(raw)
    candidate = reply["candidates"][0]
    assert candidate["content"] == {"role": "model", "parts": [{"text": "echo: say hello to the whole wide world"}]}
    assert candidate["finishReason"] == "STOP"
    # 2 system words + 7 message words + 5 overhead; 8 reply words.
    assert reply["usageMetadata"] == {"promptTokenCount": 14, "candidatesTokenCount": 8, "totalTokenCount": 22}
    [request] = fake.generate_requests()
    assert request.headers["x-goog-api-key"] == KEY


def test_stream_generate_content_sse(fake: FakeGemini) -> None:
    status, content_type, raw = post(
        fake, "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse", {"contents": CONTENTS}
    )
    assert (status, content_type) == (200, "text/event-stream")
    chunks = sse_chunks(raw)
    assert len(chunks) > 1
    text = "".join(p["text"] for c in chunks for p in c["candidates"][0]["content"]["parts"])
    assert text == "echo: say hello to the whole wide world"
    assert [("finishReason" in c["candidates"][0]) for c in chunks] == [False] * (len(chunks) - 1) + [True]
    assert chunks[-1]["usageMetadata"]["candidatesTokenCount"] == 8


def test_function_call_round_trip(fake: FakeGemini) -> None:
    path = "/v1beta/models/gemini-2.5-flash:generateContent"
    _, _, raw = post(fake, path, {"contents": CONTENTS, "tools": TOOLS})
    call = json.loads(raw)["candidates"][0]["content"]["parts"][0]["functionCall"]
    assert call == {"name": "get_weather", "args": {"city": "say hello to the whole wide world"}}
    contents = [
        *CONTENTS,
        {"role": "model", "parts": [{"functionCall": call}]},
        {"role": "user", "parts": [{"functionResponse": {"name": "get_weather", "response": {"sky": "blue"}}}]},
    ]
    _, _, raw = post(fake, path, {"contents": contents, "tools": TOOLS})
    assert json.loads(raw)["candidates"][0]["content"]["parts"][0]["text"] == 'tool result: {"sky": "blue"}'


@pytest.mark.parametrize(
    ("path", "body", "key", "status", "want"),
    [
        ("/v1beta/models/m:generateContent", {"contents": CONTENTS}, "wrong", 400, "API key not valid"),
        ("/v1beta/models/m:generateContent", {"contents": []}, KEY, 400, "contents is not specified"),
        (
            "/v1beta/models/m:generateContent",
            {"contents": [{"role": "user", "parts": [{"functionResponse": {"response": {}}}]}]},
            KEY,
            400,
            "Name cannot be empty",
        ),
        ("/v1beta/models/m:streamGenerateContent", {"contents": CONTENTS}, KEY, 400, "alt=sse"),
        ("/v1/chat/completions", {"contents": CONTENTS}, KEY, 404, "Invalid path"),
        ("/v1beta/models/gemini-overloaded:generateContent", {"contents": CONTENTS}, KEY, 503, "overloaded"),
    ],
)
def test_errors_have_gemini_shape(fake: FakeGemini, path: str, body: dict, key: str, status: int, want: str) -> None:
    got_status, _, raw = post(fake, path, body, key)
    error = json.loads(raw)["error"]
    assert got_status == status
    assert error["code"] == status and isinstance(error["status"], str)
    assert want in error["message"]


def test_truncated_stream_has_no_finish_reason(fake: FakeGemini) -> None:
    _, _, raw = post(fake, "/v1beta/models/gemini-truncate:streamGenerateContent?alt=sse", {"contents": CONTENTS})
    chunks = sse_chunks(raw)
    assert chunks and all("finishReason" not in c["candidates"][0] for c in chunks)
