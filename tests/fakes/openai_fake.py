"""A fake OpenAI provider speaking the Chat Completions wire format.

It serves ``POST /v1/chat/completions`` (plain JSON and SSE streaming), ``POST /v1/embeddings``
and ``GET /v1/models`` exactly as OpenAI documents them, with deterministic answers so tests can
predict tokens and cost:

* reply content: ``"echo: <text of the last user message>"``, except that a last user message
  starting with ``"reply-with: "`` makes the reply exactly the rest of that message (tests use it
  to choose what the "model" says, e.g. an email address for the response firewall);
* with ``tools`` (and ``tool_choice`` not ``"none"``) and a user message last: a call of the first
  tool, arguments from ``tool_arguments`` (finish reason ``tool_calls``); with a tool result last:
  ``"tool result: <its text>"`` (a tool call round trip);
* ``prompt_tokens``: whitespace-separated words over all messages' text, plus 5;
* ``completion_tokens``: words of the reply (of the arguments JSON for a tool call);
* embeddings: ``EMBEDDING_DIMENSIONS`` floats per input, ``prompt_tokens`` = words of the inputs;
* Azure OpenAI deployment URLs (``/openai/deployments/<name>/chat/completions?api-version=…``,
  ``api-key`` header) are served like ``/v1/chat/completions``.

Every request is recorded (method, path, lowercased headers, parsed JSON body) before it is
answered, so tests can assert what reached the provider, including that nothing did.
"""

from __future__ import annotations

import json
import re
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

PROMPT_OVERHEAD_TOKENS = 5
REPLY_WITH_PREFIX = "reply-with: "
# Azure OpenAI serves Chat Completions per deployment (`?api-version=` in the query).
AZURE_CHAT_PATH = re.compile(r"/openai/deployments/[A-Za-z0-9._~-]+/chat/completions")
SYSTEM_FINGERPRINT = "fp_fake0001"
KNOWN_MODELS = ("gpt-4o-mini", "gpt-4o")
# Injected faults applied while an answer's body is written (see `FakeOpenAI.inject`).
BODY_FAULTS = frozenset({"reset_mid_body", "truncate_stream", "stall_stream"})


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    """Header names lowercased (a repeated header keeps its last value)."""
    raw_body: bytes
    body: Any
    """The parsed JSON body, or None when the body is empty or not JSON."""
    query: str = ""
    """The query string, without ``?``."""
    header_lines: tuple[tuple[str, str], ...] = ()
    """Every header line as it came, in order, names lowercased (repeats kept)."""


# --------------------------------------------------------------------------------------------
# Deterministic model behaviour


def content_text(content: Any) -> str:
    """Text of a message's content: a string or a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [part.get("text") for part in content if isinstance(part, dict)]
        return " ".join(part for part in parts if isinstance(part, str) and part)
    return ""


def word_count(text: str) -> int:
    return len(text.split())


def prompt_tokens(messages: list[dict[str, Any]]) -> int:
    words = sum(word_count(content_text(message.get("content"))) for message in messages)
    return words + PROMPT_OVERHEAD_TOKENS


def reply_for(messages: list[dict[str, Any]]) -> str:
    if messages and messages[-1].get("role") == "tool":
        return f"tool result: {content_text(messages[-1].get('content'))}"
    user_texts = [content_text(m.get("content")) for m in messages if m.get("role") == "user"]
    last = user_texts[-1] if user_texts else ""
    if last.startswith(REPLY_WITH_PREFIX):
        return last[len(REPLY_WITH_PREFIX) :]
    return f"echo: {last}"


def usage_for(messages: list[dict[str, Any]], cached_tokens: int = 0) -> dict[str, Any]:
    """The ``usage`` object the fake returns for these messages."""
    prompt = prompt_tokens(messages)
    completion = word_count(reply_for(messages))
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": min(cached_tokens, prompt), "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


EMBEDDING_DIMENSIONS = 8


def tool_arguments(parameters: Any, text: str) -> dict[str, Any]:
    """Arguments for a tool call: each required property of the JSON schema, strings set to
    ``text``, numbers to 1, booleans to true (so every provider's answer is predictable)."""
    if not isinstance(parameters, dict):
        return {}
    properties = parameters.get("properties") or {}
    args: dict[str, Any] = {}
    for name in parameters.get("required") or []:
        kind = (properties.get(name) or {}).get("type")
        args[name] = {"number": 1, "integer": 1, "boolean": True}.get(kind, text)
    return args


def embedding_for(text: str) -> list[float]:
    """A deterministic unit-free vector for ``text``."""
    seed = sum(text.encode()) or 1
    return [((seed * (i + 1)) % 1000) / 1000 for i in range(EMBEDDING_DIMENSIONS)]


def split_reply(reply: str, words_per_chunk: int) -> list[str]:
    """Content deltas that join back to exactly ``reply``."""
    words = re.findall(r"\S+\s*", reply) or [reply]
    return ["".join(words[i : i + words_per_chunk]) for i in range(0, len(words), words_per_chunk)]


def openai_error(message: str, type_: str, code: str | None, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


# --------------------------------------------------------------------------------------------
# The server


class FakeOpenAI:
    """A fake OpenAI on ``127.0.0.1:<random port>``; use as a context manager or start()/stop()."""

    def __init__(
        self,
        api_key: str | None = "sk-provider-secret",
        *,
        cached_tokens: int = 0,
        words_per_chunk: int = 2,
        chars_per_chunk: int | None = None,
    ) -> None:
        # None: accept any (or no) Authorization header.
        self.api_key = api_key
        # Keys accepted besides `api_key` (a provider accepts old and new keys for a while
        # when a key is rotated).
        self.also_accepted: set[str] = set()
        self.cached_tokens = cached_tokens
        self.words_per_chunk = words_per_chunk
        # When set, streamed content is cut every N characters instead (splitting words, so a
        # test can put one email address across several SSE events).
        self.chars_per_chunk = chars_per_chunk
        self._requests: list[RecordedRequest] = []
        self._faults: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), self._handler_class())
        self._server.fake = self
        self._thread = threading.Thread(
            target=self._server.serve_forever, name=f"fake-openai-{self.port}", daemon=True
        )

    def _handler_class(self) -> type:
        """The request handler; other fakes reuse this class's lifecycle with their own."""
        return _Handler

    # lifecycle

    def start(self) -> Any:
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # addresses

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        """What a provider's ``--base-url`` should be (OpenAI's includes ``/v1``)."""
        return f"http://127.0.0.1:{self.port}/v1"

    # recorded traffic

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def chat_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path == "/v1/chat/completions"]

    def embeddings_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path == "/v1/embeddings"]

    def clear(self) -> None:
        with self._lock:
            self._requests.clear()

    def record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)

    def inject(self, *faults: dict[str, Any]) -> None:
        """Queues faults for the next POST requests, one each, in order:
        ``{"status": 503}`` / ``{"status": 429, "retry_after": 2}`` (the provider's own error
        body), ``{"hang": seconds}`` (no answer, then the connection closes),
        ``{"reset": True}`` (the connection closes without an answer), ``{"delay": seconds}``
        (then the normal answer), ``{"raw": text, "content_type": ..., "status": 200}`` (that
        body as the answer, e.g. malformed JSON or an HTML page).

        Faults of the answer's body (Chat Completions only; the request is answered normally
        up to the fault): ``{"reset_mid_body": True}`` (a JSON answer's headers and half its
        body, or a stream's first two events, then the connection closes without the rest),
        ``{"truncate_stream": n}`` (a stream ends cleanly after ``n`` events, without its usage
        chunk and ``data: [DONE]``), ``{"stall_stream": seconds, "after": n}`` (a stream pauses
        for ``seconds`` after ``n`` events, then goes on)."""
        with self._lock:
            self._faults.extend(faults)

    def next_fault(self) -> dict[str, Any] | None:
        with self._lock:
            return self._faults.pop(0) if self._faults else None

    def clear_faults(self) -> None:
        """Forgets the faults not yet applied."""
        with self._lock:
            self._faults.clear()

    def expected_usage(self, messages: list[dict[str, Any]]) -> dict[str, Any]:
        return usage_for(messages, self.cached_tokens)

    def describe(self) -> str:
        """A short summary of the recorded requests (for failure reports)."""
        lines = [f"fake provider {self.base_url}: {len(self.requests)} request(s)"]
        for r in self.requests:
            model = r.body.get("model") if isinstance(r.body, dict) else None
            lines.append(f"  {r.method} {r.path} model={model!r} stream={_is_stream(r.body)}")
        return "\n".join(lines)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    fake: FakeOpenAI

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client closing its keep-alive connection is normal, not worth a traceback.
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)


def _tool_call(body: dict[str, Any]) -> dict[str, Any] | None:
    """The tool call the fake answers with, or None for a text answer."""
    tools = body.get("tools")
    messages = body.get("messages") or []
    if not tools or body.get("tool_choice") == "none" or messages[-1].get("role") != "user":
        return None
    function = tools[0].get("function") or {}
    text = content_text(messages[-1].get("content"))
    arguments = json.dumps(tool_arguments(function.get("parameters"), text))
    call_id = f"call_{uuid.uuid5(uuid.NAMESPACE_OID, arguments).hex[:24]}"
    return {
        "id": call_id,
        "type": "function",
        "function": {"name": function.get("name", ""), "arguments": arguments},
    }


def _is_stream(body: Any) -> bool:
    return isinstance(body, dict) and body.get("stream") is True


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fake-openai/1.0"
    # An idle keep-alive connection frees its thread after this long.
    timeout = 120
    server: _Server

    # http.server plumbing

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib signature)
        pass

    def do_POST(self) -> None:
        request = self._read_request()
        self.server.fake.record(request)
        if self.fault():
            return
        if not self._authorized(request):
            return
        path = request.path.split("?", 1)[0]
        if path == "/v1/embeddings":
            self._embeddings(request)
            return
        if path != "/v1/chat/completions" and not AZURE_CHAT_PATH.fullmatch(path):
            self._send_not_found(request)
            return
        self._chat_completions(request)

    def do_GET(self) -> None:
        request = self._read_request()
        self.server.fake.record(request)
        if not self._authorized(request):
            return
        if request.path != "/v1/models":
            self._send_not_found(request)
            return
        created = int(time.time())
        models = [
            {"id": model, "object": "model", "created": created, "owned_by": "openai"}
            for model in KNOWN_MODELS
        ]
        self._send_json(HTTPStatus.OK, {"object": "list", "data": models})

    def _read_request(self) -> RecordedRequest:
        headers = {name.lower(): value for name, value in self.headers.items()}
        raw = self._read_body(headers)
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        path, _, query = self.path.partition("?")
        lines = tuple((name.lower(), value) for name, value in self.headers.items())
        return RecordedRequest(self.command, path, headers, raw, body, query, lines)

    def _read_body(self, headers: dict[str, str]) -> bytes:
        if "chunked" in headers.get("transfer-encoding", "").lower():
            return self._read_chunked()
        length = int(headers.get("content-length") or 0)
        return self.rfile.read(length) if length else b""

    def _read_chunked(self) -> bytes:
        body = bytearray()
        while True:
            size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                # Trailers (if any) end with an empty line.
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return bytes(body)
            body += self.rfile.read(size)
            self.rfile.readline()  # the CRLF after each chunk

    # injected faults

    def fault(self) -> bool:
        """Applies the next injected fault, if any; True when the request was answered by it."""
        # A fault of the answer's body is applied while the answer is written.
        self.body_fault: dict[str, Any] | None = None
        fault = self.server.fake.next_fault()
        if fault is None:
            return False
        if BODY_FAULTS & fault.keys():
            self.body_fault = fault
            return False
        if "raw" in fault:
            self._send_raw(
                int(fault.get("status", HTTPStatus.OK)),
                str(fault.get("content_type", "application/json")),
                str(fault["raw"]).encode(),
            )
            return True
        if "delay" in fault:
            time.sleep(float(fault["delay"]))
            return False
        if "hang" in fault:
            time.sleep(float(fault["hang"]))
            self.close_connection = True
            return True
        if fault.get("reset"):
            self.close_connection = True
            self.connection.shutdown(2)
            return True
        status = int(fault["status"])
        headers = {}
        if "retry_after" in fault:
            headers["Retry-After"] = str(fault["retry_after"])
        self._send_fault(status, headers)
        return True

    def _send_fault(self, status: int, headers: dict[str, str]) -> None:
        """The provider's documented error body for an injected status."""
        if status == 429:
            payload = openai_error("Rate limit reached for requests", "requests", "rate_limit_exceeded")
        else:
            payload = openai_error("The server had an error while processing your request.", "server_error", None)
        self._send_json(status, payload, headers)

    def _send_raw(self, status: int, content_type: str, data: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _reset_connection(self) -> None:
        """Closes the connection at once (what a provider crashing mid-answer looks like)."""
        self.wfile.flush()
        self.close_connection = True
        self.connection.shutdown(2)

    # responses

    def _send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("x-request-id", f"req_{uuid.uuid4().hex}")
        self.end_headers()
        fault = getattr(self, "body_fault", None) or {}
        if fault.get("reset_mid_body"):
            self.wfile.write(data[: len(data) // 2])
            self._reset_connection()
            return
        self.wfile.write(data)

    def _send_error(self, status: int, message: str, type_: str, code: str | None) -> None:
        self._send_json(status, openai_error(message, type_, code))

    def _send_not_found(self, request: RecordedRequest) -> None:
        self._send_error(
            HTTPStatus.NOT_FOUND,
            f"Invalid URL ({request.method} {request.path})",
            "invalid_request_error",
            None,
        )

    def _authorized(self, request: RecordedRequest) -> bool:
        api_key = self.server.fake.api_key
        accepted = {f"Bearer {k}" for k in {api_key, *self.server.fake.also_accepted} if k}
        if api_key is None or request.headers.get("authorization") in accepted:
            return True
        # Azure OpenAI authenticates deployment URLs with an `api-key` header.
        if AZURE_CHAT_PATH.fullmatch(request.path.split("?", 1)[0]) and (
            request.headers.get("api-key") == api_key
        ):
            return True
        self._send_error(
            HTTPStatus.UNAUTHORIZED,
            "Incorrect API key provided. You can find your API key at "
            "https://platform.openai.com/account/api-keys.",
            "invalid_request_error",
            "invalid_api_key",
        )
        return False

    # chat completions

    def _chat_completions(self, request: RecordedRequest) -> None:
        body = request.body
        if not isinstance(body, dict):
            self._send_error(
                HTTPStatus.BAD_REQUEST,
                "We could not parse the JSON body of your request.",
                "invalid_request_error",
                None,
            )
            return
        messages = body.get("messages")
        if not isinstance(body.get("model"), str) or not isinstance(messages, list) or not messages:
            self._send_error(
                HTTPStatus.BAD_REQUEST,
                "Missing required parameter: 'model' or 'messages'.",
                "invalid_request_error",
                "missing_required_parameter",
            )
            return
        for limit in ("max_tokens", "max_completion_tokens"):
            value = body.get(limit)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                self._send_json(
                    HTTPStatus.BAD_REQUEST,
                    openai_error(
                        f"Invalid type for '{limit}': expected an integer, but got "
                        f"{type(value).__name__} instead.",
                        "invalid_request_error",
                        "invalid_type",
                        limit,
                    ),
                )
                return
        if _is_stream(body):
            self._stream_completion(body, messages)
        elif _tool_call(body) is not None:
            self._send_json(HTTPStatus.OK, self._tool_completion(body))
        else:
            self._send_json(HTTPStatus.OK, self._completion(body["model"], messages))

    def _tool_completion(self, body: dict[str, Any]) -> dict[str, Any]:
        call = _tool_call(body) or {}
        completion = self._completion(body["model"], body["messages"])
        choice = completion["choices"][0]
        choice["message"]["content"] = None
        choice["message"]["tool_calls"] = [call]
        choice["finish_reason"] = "tool_calls"
        usage = completion["usage"]
        usage["completion_tokens"] = word_count(call["function"]["arguments"])
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        return completion

    def _embeddings(self, request: RecordedRequest) -> None:
        body = request.body
        inputs = body.get("input") if isinstance(body, dict) else None
        if isinstance(inputs, str):
            inputs = [inputs]
        if (
            not isinstance(body, dict)
            or not isinstance(body.get("model"), str)
            or not isinstance(inputs, list)
            or not inputs
            or not all(isinstance(i, str) for i in inputs)
        ):
            self._send_error(
                HTTPStatus.BAD_REQUEST,
                "'input' must be a string or a non-empty array of strings.",
                "invalid_request_error",
                None,
            )
            return
        tokens = sum(word_count(i) for i in inputs)
        self._send_json(
            HTTPStatus.OK,
            {
                "object": "list",
                "data": [
                    {"object": "embedding", "index": n, "embedding": embedding_for(text)}
                    for n, text in enumerate(inputs)
                ],
                "model": body["model"],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            },
        )

    def _completion(self, model: str, messages: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": reply_for(messages),
                        "refusal": None,
                        "annotations": [],
                    },
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": self.server.fake.expected_usage(messages),
            "service_tier": "default",
            "system_fingerprint": SYSTEM_FINGERPRINT,
        }

    def _stream_completion(self, body: dict[str, Any], messages: list[dict[str, Any]]) -> None:
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("x-request-id", f"req_{uuid.uuid4().hex}")
        self.end_headers()
        fault = getattr(self, "body_fault", None) or {}
        for n, event in enumerate(self._stream_events(body, messages)):
            if fault.get("reset_mid_body") and n == 2:
                self._reset_connection()
                return
            if "truncate_stream" in fault and n == int(fault["truncate_stream"]):
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()
                return
            if "stall_stream" in fault and n == int(fault.get("after", 2)):
                time.sleep(float(fault["stall_stream"]))
            self._write_chunk(f"data: {event}\n\n".encode())
        self._write_chunk(b"data: [DONE]\n\n")
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _stream_events(self, body: dict[str, Any], messages: list[dict[str, Any]]) -> Iterator[str]:
        fake = self.server.fake
        stream_options = body.get("stream_options")
        include_usage = (
            isinstance(stream_options, dict) and stream_options.get("include_usage") is True
        )
        base = {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": body["model"],
            "service_tier": "default",
            "system_fingerprint": SYSTEM_FINGERPRINT,
        }

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> str:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            event: dict[str, Any] = {**base, "choices": [choice]}
            if include_usage:
                event["usage"] = None
            return json.dumps(event)

        yield chunk({"role": "assistant", "content": "", "refusal": None})
        call = _tool_call(body)
        usage = fake.expected_usage(messages)
        if call is not None:
            arguments = call["function"]["arguments"]
            head = {**call, "index": 0, "function": {**call["function"], "arguments": ""}}
            yield chunk({"tool_calls": [head]})
            for piece in split_reply(arguments, fake.words_per_chunk):
                yield chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
            yield chunk({}, "tool_calls")
            usage["completion_tokens"] = word_count(arguments)
            usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        else:
            reply = reply_for(messages)
            pieces = (
                [reply[i : i + fake.chars_per_chunk] for i in range(0, len(reply), fake.chars_per_chunk)]
                if fake.chars_per_chunk
                else split_reply(reply, fake.words_per_chunk)
            )
            for piece in pieces:
                yield chunk({"content": piece})
            yield chunk({}, "stop")
        if include_usage:
            yield json.dumps({**base, "choices": [], "usage": usage})

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()
