"""A fake Google Gemini provider speaking the ``generateContent`` wire format.

It serves ``POST /v1beta/models/{model}:generateContent`` and
``POST /v1beta/models/{model}:streamGenerateContent?alt=sse`` as Google documents them: the key
comes in ``x-goog-api-key``, errors are ``{"error": {"code", "message", "status"}}``, a stream is
a series of ``data: <GenerateContentResponse>`` events (CRLF-separated, as Google sends them)
whose last one carries ``finishReason`` and the final ``usageMetadata``.

Deterministic answers, like the OpenAI fake:

* text: ``"echo: <text of the last user turn>"``; after a ``functionResponse``:
  ``"tool result: <its JSON>"``;
* with ``tools`` (mode not ``NONE``) and a plain user turn last: a ``functionCall`` of the first
  declared function (arguments from ``tool_arguments``), ``finishReason`` ``STOP`` as Gemini does;
* ``promptTokenCount``: words of the system instruction and every turn's text, plus 5;
  ``candidatesTokenCount``: words of the reply (of the args JSON for a function call);
* model names trigger failures: ``*overloaded*`` → 503 ``UNAVAILABLE``; ``*truncate*`` → a
  stream that stops after its first chunk (no ``finishReason``).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from http import HTTPStatus
from typing import Any

from fakes.openai_fake import (
    PROMPT_OVERHEAD_TOKENS,
    FakeOpenAI,
    RecordedRequest,
    _Handler,
    embedding_for,
    split_reply,
    tool_arguments,
    word_count,
)

PATH = re.compile(
    r"^/v1beta/models/(?P<model>[^/:]+)"
    r":(?P<method>generateContent|streamGenerateContent|batchEmbedContents)$"
)
STATUS_NAMES = {400: "INVALID_ARGUMENT", 403: "PERMISSION_DENIED", 404: "NOT_FOUND", 503: "UNAVAILABLE"}


def gemini_error(code: int, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "status": STATUS_NAMES.get(code, "UNKNOWN")}}


def parts_text(parts: Any) -> str:
    texts = [p.get("text", "") for p in parts or [] if isinstance(p, dict) and "text" in p]
    return " ".join(texts)


def last_function_response(contents: list[dict[str, Any]]) -> Any:
    for part in contents[-1].get("parts") or []:
        if isinstance(part, dict) and "functionResponse" in part:
            return part["functionResponse"].get("response")
    return None


def prompt_tokens(body: dict[str, Any]) -> int:
    words = word_count(parts_text((body.get("systemInstruction") or {}).get("parts")))
    words += sum(word_count(parts_text(c.get("parts"))) for c in body["contents"])
    return words + PROMPT_OVERHEAD_TOKENS


def reply_text(contents: list[dict[str, Any]]) -> str:
    result = last_function_response(contents)
    if result is not None:
        return f"tool result: {json.dumps(result)}"
    users = [parts_text(c.get("parts")) for c in contents if c.get("role", "user") == "user"]
    return f"echo: {users[-1] if users else ''}"


def function_call(body: dict[str, Any]) -> dict[str, Any] | None:
    """The functionCall the fake answers with, or None for a text answer."""
    declarations = [d for t in body.get("tools") or [] for d in t.get("functionDeclarations") or []]
    mode = ((body.get("toolConfig") or {}).get("functionCallingConfig") or {}).get("mode")
    contents = body["contents"]
    if not declarations or mode == "NONE" or last_function_response(contents) is not None:
        return None
    first = declarations[0]
    schema = first.get("parametersJsonSchema") or first.get("parameters")
    return {"name": first.get("name", ""), "args": tool_arguments(schema, parts_text(contents[-1].get("parts")))}


def validation_error(body: Any) -> str | None:
    """Why Gemini would refuse this body (the checks that catch translation bugs)."""
    if not isinstance(body, dict):
        return "Invalid JSON payload received."
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        return "* GenerateContentRequest.contents: contents is not specified"
    for i, c in enumerate(contents):
        if c.get("role", "user") not in ("user", "model"):
            return f"* GenerateContentRequest.contents[{i}].role: Please use a valid role: user, model."
        parts = c.get("parts")
        if not isinstance(parts, list) or not parts:
            return f"* GenerateContentRequest.contents[{i}].parts: contents.parts must not be empty."
        for j, p in enumerate(parts):
            keys = set(p) - {"thought", "thoughtSignature"}
            if len(keys) != 1 or not keys <= {"text", "inlineData", "fileData", "functionCall", "functionResponse"}:
                return f"* GenerateContentRequest.contents[{i}].parts[{j}]: unknown or ambiguous part {sorted(keys)}"
            if "functionResponse" in p and not p["functionResponse"].get("name"):
                return f"* GenerateContentRequest.contents[{i}].parts[{j}].function_response.name: Name cannot be empty."
            if "inlineData" in p and not p["inlineData"].get("mimeType"):
                return f"* GenerateContentRequest.contents[{i}].parts[{j}].inline_data.mime_type: required"
    return None


class FakeGemini(FakeOpenAI):
    """A fake Gemini API on ``127.0.0.1:<random port>``."""

    def __init__(self, api_key: str | None = "gemini-provider-secret", **kwargs: Any) -> None:
        super().__init__(api_key, **kwargs)

    def _handler_class(self) -> type:
        return _GeminiHandler

    @property
    def base_url(self) -> str:
        """What a provider's ``--base-url`` should be (the host; paths start at ``/v1beta``)."""
        return f"http://127.0.0.1:{self.port}"

    def generate_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if PATH.match(r.path)]

    def expected_usage(self, body: dict[str, Any]) -> dict[str, Any]:  # type: ignore[override]
        """``usageMetadata`` of the reply to ``body`` (a generateContent request)."""
        call = function_call(body)
        reply = json.dumps(call["args"]) if call else reply_text(body["contents"])
        prompt, candidates = prompt_tokens(body), word_count(reply)
        return {
            "promptTokenCount": prompt,
            "candidatesTokenCount": candidates,
            "totalTokenCount": prompt + candidates,
        }


class _GeminiHandler(_Handler):
    server_version = "fake-gemini/1.0"

    def do_POST(self) -> None:
        request = self._read_request()
        self.server.fake.record(request)
        if self.fault():
            return
        if not self._authorized(request):
            return
        match = PATH.match(request.path)
        if match is None:
            self._send_gemini_error(HTTPStatus.NOT_FOUND, f"Invalid path {request.path}.")
            return
        if match["method"] == "batchEmbedContents":
            self._batch_embed(match["model"], request.body)
            return
        stream = match["method"] == "streamGenerateContent"
        if stream and "alt=sse" not in (self.path.split("?", 1) + [""])[1]:
            self._send_gemini_error(HTTPStatus.BAD_REQUEST, "This fake only streams with alt=sse.")
            return
        problem = validation_error(request.body)
        if problem is not None:
            self._send_gemini_error(HTTPStatus.BAD_REQUEST, problem)
            return
        model = match["model"]
        if "overloaded" in model:
            self._send_gemini_error(HTTPStatus.SERVICE_UNAVAILABLE, "The model is overloaded. Please try again later.")
            return
        if stream:
            self._stream(model, request.body)
        else:
            self._send_json(HTTPStatus.OK, self._response(model, request.body, None, final=True))

    def _batch_embed(self, model: str, body: Any) -> None:
        """``batchEmbedContents``: one ``values`` vector per request, in order (no token counts,
        as Gemini documents)."""
        requests = body.get("requests") if isinstance(body, dict) else None
        ok = isinstance(requests, list) and requests and all(
            isinstance(r, dict)
            and r.get("model") == f"models/{model}"
            and isinstance(parts_text(((r.get("content") or {}).get("parts"))), str)
            for r in requests
        )
        if not ok:
            self._send_gemini_error(
                HTTPStatus.BAD_REQUEST,
                "Each request needs model 'models/<the URL's model>' and content.parts.",
            )
            return
        embeddings = [
            {"values": embedding_for(parts_text(r["content"]["parts"]))} for r in requests
        ]
        self._send_json(HTTPStatus.OK, {"embeddings": embeddings})

    def do_GET(self) -> None:
        request = self._read_request()
        self.server.fake.record(request)
        self._send_gemini_error(HTTPStatus.NOT_FOUND, f"Invalid path {request.path}.")

    def _send_gemini_error(self, status: int, message: str) -> None:
        self._send_json(status, gemini_error(status, message))

    def _send_fault(self, status: int, headers: dict[str, str]) -> None:
        message = "Resource has been exhausted (e.g. check quota)." if status == 429 else "The model is overloaded. Please try again later."
        self._send_json(status, gemini_error(status, message), headers)

    def _authorized(self, request: RecordedRequest) -> bool:
        api_key = self.server.fake.api_key
        if api_key is None or request.headers.get("x-goog-api-key") == api_key:
            return True
        self._send_gemini_error(HTTPStatus.BAD_REQUEST, "API key not valid. Please pass a valid API key.")
        return False

    def _response(self, model: str, body: dict[str, Any], parts: list[dict[str, Any]] | None, *, final: bool) -> dict[str, Any]:
        if parts is None:
            call = function_call(body)
            parts = [{"functionCall": call}] if call else [{"text": reply_text(body["contents"])}]
        candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}, "index": 0}
        usage = self.server.fake.expected_usage(body)
        if final:
            candidate["finishReason"] = "STOP"
        else:
            usage = {"promptTokenCount": usage["promptTokenCount"], "totalTokenCount": usage["promptTokenCount"]}
        return {
            "candidates": [candidate],
            "usageMetadata": usage,
            "modelVersion": model,
            "responseId": uuid.uuid4().hex[:24],
        }

    def _chunks(self, model: str, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        call = function_call(body)
        if call:
            yield self._response(model, body, [{"functionCall": call}], final=True)
            return
        pieces = split_reply(reply_text(body["contents"]), self.server.fake.words_per_chunk)
        for n, piece in enumerate(pieces):
            yield self._response(model, body, [{"text": piece}], final=n + 1 == len(pieces))

    def _stream(self, model: str, body: dict[str, Any]) -> None:
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for n, chunk in enumerate(self._chunks(model, body)):
            if "truncate" in model and n == 1:
                break
            self._write_chunk(f"data: {json.dumps(chunk)}\r\n\r\n".encode())
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()
