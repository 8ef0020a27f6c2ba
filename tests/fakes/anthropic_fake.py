"""A fake Anthropic provider speaking the Messages wire format.

It serves ``POST /v1/messages`` (JSON and SSE) as Anthropic documents it: it requires the key
(``x-api-key``, or ``Authorization: Bearer``, which recent official SDKs send) and an
``anthropic-version`` header, answers errors as
``{"type": "error", "error": {"type", "message"}}``, and streams ``message_start``,
``content_block_start``, ``ping``, ``content_block_delta`` (``text_delta`` /
``input_json_delta``), ``content_block_stop``, ``message_delta`` and ``message_stop``.

Deterministic answers, like the OpenAI fake:

* text: ``"echo: <text of the last user turn>"``; after a ``tool_result``:
  ``"tool result: <its text>"``;
* with ``tools`` (``tool_choice`` not ``none``) and a plain user turn last: a ``tool_use`` of the
  first tool (arguments from ``tool_arguments``), ``stop_reason`` ``tool_use``;
* ``input_tokens``: words of the system prompt and every turn's text, plus 5;
  ``output_tokens``: words of the reply (of the input JSON for a tool call);
* model names trigger failures: ``*overloaded*`` → 529 ``overloaded_error``;
  ``*truncate*`` → a stream that stops after its first text delta (no ``message_stop``).

Requests are recorded like the OpenAI fake's (``requests``, ``messages_requests()``).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from http import HTTPStatus
from typing import Any

from fakes.openai_fake import (
    PROMPT_OVERHEAD_TOKENS,
    FakeOpenAI,
    RecordedRequest,
    _Handler,
    split_reply,
    tool_arguments,
    word_count,
)

ANTHROPIC_VERSION = "2023-06-01"
OVERLOADED_STATUS = 529


def anthropic_error(type_: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": type_, "message": message}}


def block_text(content: Any) -> str:
    """Text of a turn's content (string or blocks), tool results included."""
    if isinstance(content, str):
        return content
    texts: list[str] = []
    for block in content if isinstance(content, list) else []:
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text":
            texts.append(block.get("text", ""))
        elif block.get("type") == "tool_result":
            texts.append(block_text(block.get("content", "")))
    return " ".join(texts)


def last_tool_result(messages: list[dict[str, Any]]) -> str | None:
    """Text of the tool result in the last turn, if that turn carries one."""
    content = messages[-1].get("content") if messages else None
    if isinstance(content, list):
        for block in content:
            if isinstance(block, dict) and block.get("type") == "tool_result":
                return block_text(block.get("content", ""))
    return None


def input_tokens(body: dict[str, Any]) -> int:
    words = word_count(block_text(body.get("system") or ""))
    words += sum(word_count(block_text(m.get("content"))) for m in body["messages"])
    return words + PROMPT_OVERHEAD_TOKENS


def reply_text(messages: list[dict[str, Any]]) -> str:
    result = last_tool_result(messages)
    if result is not None:
        return f"tool result: {result}"
    users = [block_text(m.get("content")) for m in messages if m.get("role") == "user"]
    return f"echo: {users[-1] if users else ''}"


def tool_use(body: dict[str, Any]) -> dict[str, Any] | None:
    """The tool_use block the fake answers with, or None for a text answer."""
    tools = body.get("tools")
    choice = body.get("tool_choice") or {}
    messages = body["messages"]
    if not tools or choice.get("type") == "none" or last_tool_result(messages) is not None:
        return None
    text = block_text(messages[-1].get("content"))
    args = tool_arguments(tools[0].get("input_schema"), text)
    return {
        "type": "tool_use",
        "id": f"toolu_{uuid.uuid5(uuid.NAMESPACE_OID, json.dumps(args)).hex[:24]}",
        "name": tools[0].get("name", ""),
        "input": args,
    }


def validation_error(body: Any) -> str | None:
    """Why Anthropic would refuse this body (the checks that catch translation bugs)."""
    if not isinstance(body, dict):
        return "Request body must be a JSON object."
    if not isinstance(body.get("model"), str):
        return "model: Field required"
    if not isinstance(body.get("max_tokens"), int):
        return "max_tokens: Field required"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages: at least one message is required"
    tool_ids: set[str] = set()
    for i, m in enumerate(messages):
        if m.get("role") not in ("user", "assistant"):
            return f"messages.{i}.role: Input should be 'user' or 'assistant'"
        content = m.get("content")
        if isinstance(content, str):
            continue
        if not isinstance(content, list) or not content:
            return f"messages.{i}.content: must be a string or a non-empty list of blocks"
        for j, block in enumerate(content):
            kind = block.get("type") if isinstance(block, dict) else None
            if kind == "tool_use":
                if not isinstance(block.get("input"), dict):
                    return f"messages.{i}.content.{j}.tool_use.input: Input should be a valid dictionary"
                tool_ids.add(block.get("id"))
            elif kind == "tool_result":
                if block.get("tool_use_id") not in tool_ids:
                    return f"messages.{i}.content.{j}: unexpected `tool_use_id` found in `tool_result` blocks"
            elif kind == "image":
                source = block.get("source") or {}
                if source.get("type") not in ("base64", "url"):
                    return f"messages.{i}.content.{j}.image.source: unknown source type"
            elif kind == "text":
                if not block.get("text"):
                    return f"messages.{i}.content.{j}.text: text content blocks must be non-empty"
            else:
                return f"messages.{i}.content.{j}: unknown block type {kind!r}"
    return None


class FakeAnthropic(FakeOpenAI):
    """A fake Anthropic on ``127.0.0.1:<random port>``."""

    def __init__(self, api_key: str | None = "sk-ant-provider-secret", **kwargs: Any) -> None:
        super().__init__(api_key, **kwargs)

    def _handler_class(self) -> type:
        return _AnthropicHandler

    @property
    def base_url(self) -> str:
        """What a provider's ``--base-url`` should be (Anthropic's has no ``/v1``)."""
        return f"http://127.0.0.1:{self.port}"

    def messages_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path == "/v1/messages"]

    def expected_usage(self, body: dict[str, Any]) -> dict[str, Any]:  # type: ignore[override]
        """``usage`` of the reply to ``body`` (a Messages request)."""
        call = tool_use(body)
        reply = json.dumps(call["input"]) if call else reply_text(body["messages"])
        return {
            "input_tokens": input_tokens(body),
            "output_tokens": word_count(reply),
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        }


class _AnthropicHandler(_Handler):
    server_version = "fake-anthropic/1.0"

    def do_POST(self) -> None:
        request = self._read_request()
        self.server.fake.record(request)
        if self.fault():
            return
        if not self._authorized(request):
            return
        if request.path != "/v1/messages":
            self._send_error(HTTPStatus.NOT_FOUND, "Not found", "not_found_error", None)
            return
        if not request.headers.get("anthropic-version"):
            self._send_error(
                HTTPStatus.BAD_REQUEST,
                "anthropic-version: header is required",
                "invalid_request_error",
                None,
            )
            return
        problem = validation_error(request.body)
        if problem is not None:
            self._send_error(HTTPStatus.BAD_REQUEST, problem, "invalid_request_error", None)
            return
        body = request.body
        if "overloaded" in body["model"]:
            self._send_error(OVERLOADED_STATUS, "Overloaded", "overloaded_error", None)
            return
        if body.get("stream") is True:
            self._stream(body)
        else:
            self._send_json(HTTPStatus.OK, self._message(body))

    def do_GET(self) -> None:
        request = self._read_request()
        self.server.fake.record(request)
        self._send_error(HTTPStatus.NOT_FOUND, "Not found", "not_found_error", None)

    def _send_error(self, status: int, message: str, type_: str, code: str | None) -> None:
        self._send_json(status, anthropic_error(type_, message))

    def _send_fault(self, status: int, headers: dict[str, str]) -> None:
        if status == 429:
            payload = anthropic_error("rate_limit_error", "Number of request tokens has exceeded your rate limit.")
        elif status == 529:
            payload = anthropic_error("overloaded_error", "Overloaded")
        else:
            payload = anthropic_error("api_error", "Internal server error")
        self._send_json(status, payload, headers)

    def _authorized(self, request: RecordedRequest) -> bool:
        api_key = self.server.fake.api_key
        given = request.headers.get("x-api-key")
        if given is None and request.headers.get("authorization", "").startswith("Bearer "):
            given = request.headers["authorization"][len("Bearer ") :]
        if api_key is None or given == api_key:
            return True
        self._send_error(
            HTTPStatus.UNAUTHORIZED, "invalid x-api-key", "authentication_error", None
        )
        return False

    def _message(self, body: dict[str, Any]) -> dict[str, Any]:
        call = tool_use(body)
        content = [call] if call else [{"type": "text", "text": reply_text(body["messages"])}]
        return {
            "id": f"msg_{uuid.uuid4().hex[:24]}",
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": content,
            "stop_reason": "tool_use" if call else "end_turn",
            "stop_sequence": None,
            "usage": self.server.fake.expected_usage(body),
        }

    def _stream(self, body: dict[str, Any]) -> None:
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("request-id", f"req_{uuid.uuid4().hex}")
        self.end_headers()
        truncate = "truncate" in body["model"]
        deltas = 0
        for name, data in self._events(body):
            self._write_chunk(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())
            deltas += name == "content_block_delta"
            if truncate and deltas == 1:
                break
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _events(self, body: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
        fake = self.server.fake
        usage = fake.expected_usage(body)
        message = self._message(body)
        start = {**message, "content": [], "stop_reason": None}
        start["usage"] = {**usage, "output_tokens": 1}
        yield "message_start", {"type": "message_start", "message": start}
        call = tool_use(body)
        if call:
            head = {**call, "input": {}}
            yield "content_block_start", {"type": "content_block_start", "index": 0, "content_block": head}
            yield "ping", {"type": "ping"}
            for piece in split_reply(json.dumps(call["input"]), fake.words_per_chunk):
                delta = {"type": "input_json_delta", "partial_json": piece}
                yield "content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta}
        else:
            block = {"type": "text", "text": ""}
            yield "content_block_start", {"type": "content_block_start", "index": 0, "content_block": block}
            yield "ping", {"type": "ping"}
            for piece in split_reply(reply_text(body["messages"]), fake.words_per_chunk):
                delta = {"type": "text_delta", "text": piece}
                yield "content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta}
        yield "content_block_stop", {"type": "content_block_stop", "index": 0}
        yield "message_delta", {
            "type": "message_delta",
            "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
            "usage": {"output_tokens": usage["output_tokens"]},
        }
        yield "message_stop", {"type": "message_stop"}
