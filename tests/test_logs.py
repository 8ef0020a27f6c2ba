"""Request logs, usage summaries, metrics and `Idempotency-Key` end to end: a mix of streamed,
failed, blocked and fallback requests through real Envoy, then the control plane's logs,
summaries, filters and `/metrics`, and Envoy's own stats."""

from __future__ import annotations

import json
import re
import time
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import pytest
import requests

from fakes.anthropic_fake import FakeAnthropic
from harness import (
    PROVIDER_SECRET,
    ControlPlane,
    Envoy,
    Harness,
    filter_stats,
    settled_filter_stats,
    wait_for,
)

ANTHROPIC_SECRET = "sk-ant-provider-secret"
CATALOGUE = json.loads(
    (Path(__file__).resolve().parent.parent / "filter/engine/catalogue.json").read_text()
)


def price(kind: str, model: str) -> tuple[Decimal, Decimal]:
    """USD per token (input, output) from the built-in catalogue."""
    [entry] = [m for m in CATALOGUE if m["provider_kind"] == kind and m["id"] == model]
    million = Decimal(1_000_000)
    return (
        Decimal(entry["input_usd_per_mtok"]) / million,
        Decimal(entry["output_usd_per_mtok"]) / million,
    )


PRICES = {
    ("openai", "gpt-4o-mini"): price("openai", "gpt-4o-mini"),
    ("claude", "claude-haiku-4-5"): price("anthropic", "claude-haiku-4-5"),
}


class Gateway:
    def __init__(self, control_plane: ControlPlane, envoy: Envoy, fakes: dict[str, Any],
                 key_id: str, key: str) -> None:
        self.control_plane = control_plane
        self.envoy = envoy
        self.fakes = fakes
        self.key_id = key_id
        self.key = key

    def post(self, path: str, body: Any, key: str | None = None, **headers: str
             ) -> requests.Response:
        kwargs: dict[str, Any] = {"data": body} if isinstance(body, (bytes, str)) else {"json": body}
        return requests.post(
            f"{self.envoy.url}{path}",
            headers={"authorization": f"Bearer {key or self.key}",
                     "content-type": "application/json", **headers},
            timeout=30,
            **kwargs,
        )

    def rest(self, path: str, token: str | None = None, **params: Any) -> requests.Response:
        return requests.get(
            f"{self.control_plane.rest_url}/api/v1{path}",
            params=params,
            headers={"authorization": f"Bearer {token or self.control_plane.admin_token}"},
            timeout=10,
        )

    def openai_calls(self) -> int:
        return len([r for r in self.fakes["openai"].requests if r.method == "POST"])


@pytest.fixture
def gateway(harness: Harness) -> Gateway:
    control_plane = harness.control_plane(env={"TOKENROUTER_PER_TRY_TIMEOUT_MS": "5000"})
    openai_fake = harness.fake_openai(PROVIDER_SECRET)
    claude_fake = FakeAnthropic(ANTHROPIC_SECRET).start()
    harness._fakes.append(claude_fake)  # stopped with the harness
    control_plane.add_provider("openai", "openai", openai_fake.base_url, PROVIDER_SECRET)
    control_plane.add_provider("claude", "anthropic", claude_fake.base_url, ANTHROPIC_SECRET)
    key_id, key = control_plane.create_key("logs")
    envoy = harness.envoy(control_plane, providers=["openai", "claude"])
    envoy.wait_until_serving(key)
    return Gateway(control_plane, envoy, {"openai": openai_fake, "claude": claude_fake},
                   key_id, key)


def chat(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}], **extra}


def settled(check: Any, what: str) -> None:
    """Waits until ``check()`` holds several times in a row: each request is a new connection,
    so it lands on any worker, and every worker picks a new snapshot up on its own tick."""
    wait_for(lambda: all(check() for _ in range(4)), 10, what=what)


def expected_cost(row: dict[str, Any]) -> Decimal:
    per_in, per_out = PRICES[(row["provider"], row["model"])]
    return row["input_tokens"] * per_in + row["output_tokens"] * per_out


def test_logs_summaries_and_stats_show_exactly_the_mix(gateway: Gateway) -> None:
    g = gateway
    g.control_plane.cli("routing", "set", "--key-id", g.key_id, "--strategy", "fallback",
                        "--backend", "openai/gpt-4o-mini", "--backend", "claude/claude-haiku-4-5")
    g.control_plane.cli("firewall", "add", "--name", "No secrets", "--scope", "prompt",
                        "--type", "substring", "--pattern", "top-secret", "--action", "block")
    # Both writes must be live on every worker before the measured mix (snapshots are ordered:
    # the rule's holds the routing configuration too).
    settled(lambda: g.post("/v1/chat/completions", chat("top-secret probe")).status_code == 422,
            "the firewall rule at the edge")
    stats_before = settled_filter_stats(g.envoy.admin_url)
    sent: dict[str, str] = {}  # request id -> what it was

    client = openai.OpenAI(base_url=f"{g.envoy.url}/v1", api_key=g.key, max_retries=0)
    for i in range(2):
        raw = client.chat.completions.with_raw_response.create(
            **chat(f"plain request number {i}"), metadata={"team": "alpha", "ticket": f"T-{i}"},
            store=True,
        )
        assert raw.http_response.status_code == 200
        sent[raw.headers["x-request-id"]] = "plain"
    stream = client.chat.completions.with_raw_response.create(
        **chat("a streamed one please"), stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream.parse())
    streamed_usage = chunks[-1].usage
    sent[stream.headers["x-request-id"]] = "stream"

    blocked = g.post("/v1/chat/completions", chat("this is top-secret"))
    assert blocked.status_code == 422
    sent[blocked.headers["x-request-id"]] = "blocked"

    g.fakes["openai"].inject({"status": 503})
    fallback = g.post("/v1/chat/completions", chat("fall over to claude"))
    assert fallback.status_code == 200 and fallback.headers["x-tokenrouter-provider"] == "claude"
    sent[fallback.headers["x-request-id"]] = "fallback"

    g.fakes["openai"].inject({"status": 503})
    g.fakes["claude"].inject({"status": 529})
    failed = g.post("/v1/chat/completions", chat("everyone is down"))
    assert failed.status_code >= 500, failed.text
    sent[failed.headers["x-request-id"]] = "failed"

    invalid = g.post("/v1/chat/completions", b'{"model": "gpt-4o-mini", "messages": [')
    assert invalid.status_code == 400
    sent[invalid.headers["x-request-id"]] = "invalid"

    # The log: exactly these requests for the key (the probes before them aside).
    rows = g.control_plane.wait_for_usage(sent)
    by_kind = {kind: rows[rid] for rid, kind in sent.items() if kind != "plain"}
    plain = [rows[rid] for rid, kind in sent.items() if kind == "plain"]

    for row in plain:
        assert row["status"] == 200 and row["provider"] == "openai"
        assert row["metadata"]["team"] == "alpha"
        assert row["key_name"] == "logs" and row["key_id"] == g.key_id
        assert row["input_tokens"] > 0 and row["output_tokens"] > 0
        assert Decimal(row["cost_usd"]) == expected_cost(row)
    s = by_kind["stream"]
    assert s["stream"] is True and s["status"] == 200
    assert (s["input_tokens"], s["output_tokens"]) == (
        streamed_usage.prompt_tokens, streamed_usage.completion_tokens)
    assert Decimal(s["cost_usd"]) == expected_cost(s)
    b = by_kind["blocked"]
    assert (b["status"], b["error_type"], b["provider"]) == (422, "firewall_error", "")
    assert b["firewall_actions"] == ["block:prompt:No secrets"]
    assert Decimal(b["cost_usd"]) == 0
    f = by_kind["fallback"]
    assert (f["status"], f["provider"], f["model"]) == (200, "claude", "claude-haiku-4-5")
    assert [(a["provider"], a["status"]) for a in f["attempts"]] == [("openai", 503), ("claude", 200)]
    assert Decimal(f["cost_usd"]) == expected_cost(f) > 0
    x = by_kind["failed"]
    assert x["status"] >= 500 and [a["status"] for a in x["attempts"]] == [503, 529]
    assert Decimal(x["cost_usd"]) == 0
    assert (by_kind["invalid"]["status"], by_kind["invalid"]["error_type"]) == (
        400, "invalid_request_error")

    # Filters and pagination.
    def ids(**params: Any) -> set[str]:
        out, cursor = set(), None
        while True:
            page = g.rest("/logs", key_id=g.key_id, limit=2,
                          **({"cursor": cursor} if cursor else {}), **params).json()
            out |= {r["request_id"] for r in page["data"]}
            cursor = page.get("next_cursor")
            if not cursor:
                return out & set(sent)

    assert ids(metadata_contains="ALPHA") == {rid for rid, k in sent.items() if k == "plain"}
    # The failed request's last attempt was at claude too.
    assert ids(provider="claude") == {
        rid for rid, k in sent.items() if k in ("fallback", "failed")}
    assert ids(status="4xx") == {rid for rid, k in sent.items() if k in ("blocked", "invalid")}
    assert ids(status="5xx") == {rid for rid, k in sent.items() if k == "failed"}

    # Summaries: only successful requests count as spend and tokens.
    ok = [rows[rid] for rid in sent if 200 <= rows[rid]["status"] < 300]
    probes = [r for r in g.control_plane.logs() if r["request_id"] not in sent
              and r["key_id"] == g.key_id and 200 <= r["status"] < 300]
    counted = ok + probes
    summary = g.rest("/usage", days=1).json()
    assert summary["total_requests"] == len(counted)
    assert summary["total_tokens_in"] == sum(r["input_tokens"] for r in counted)
    assert summary["total_tokens_out"] == sum(r["output_tokens"] for r in counted)
    assert Decimal(summary["total_cost_usd"]) == sum(Decimal(r["cost_usd"]) for r in counted)
    by_provider = {r["provider"]: r for r in
                   g.rest("/usage", days=1, group_by="provider").json()["breakdown"]}
    assert by_provider["claude"]["requests"] >= 1
    assert Decimal(by_provider["claude"]["cost_usd"]) == expected_cost(f)
    by_key = g.rest("/usage", days=1, group_by="key").json()["breakdown"]
    # Requests refused before authentication (e.g. the harness's readiness probes) have no key.
    assert [r["key_id"] for r in by_key if r["key_id"]] == [g.key_id]
    assert all(r["cost_usd"] in ("0", "0.00") or Decimal(r["cost_usd"]) == 0
               for r in by_key if not r["key_id"])
    by_day = g.rest("/usage", days=1, group_by="day").json()["breakdown"]
    assert len(by_day) == 1 and Decimal(by_day[0]["cost_usd"]) == Decimal(
        summary["total_cost_usd"])
    keys = g.rest("/keys").json()["data"]
    [mine] = [k for k in keys if k["id"] == g.key_id]
    assert Decimal(mine["spend_usd"]) == Decimal(summary["total_cost_usd"])

    # Envoy's stats count the same requests (a request is counted when it starts, the rest
    # when its log runs, just after the client has its answer: wait for all of them).
    openai_in = sum(r["input_tokens"] for r in plain) + s["input_tokens"]
    want = {
        "tokenrouter.requests": len(sent),
        "tokenrouter.fallbacks": 1,
        "tokenrouter.firewall_hits": 1,
        "tokenrouter.provider.claude.model.claude-haiku-4-5.requests": 2,
        "tokenrouter.provider.openai.model.gpt-4o-mini.input_tokens": openai_in,
    }

    def counted_by_envoy() -> dict[str, int] | None:
        now = filter_stats(g.envoy.admin_url)
        delta = {k: now.get(k, 0) - stats_before.get(k, 0) for k in want}
        return delta if delta == want else None

    try:
        wait_for(counted_by_envoy, 10, what="Envoy's tokenrouter stats")
    except Exception:
        now = filter_stats(g.envoy.admin_url)
        assert {k: now.get(k, 0) - stats_before.get(k, 0) for k in want} == want

    # The control plane's metrics use OpenTelemetry's GenAI names.
    metrics = requests.get(f"{g.control_plane.rest_url}/metrics", timeout=5).text
    assert re.search(r'gen_ai_client_token_usage_count\{[^}]*gen_ai_provider_name="claude"', metrics)
    assert "gen_ai_client_operation_duration_seconds_bucket" in metrics


def test_idempotent_replay_returns_the_same_body_and_charges_once(gateway: Gateway) -> None:
    g = gateway
    body = chat("say it once")
    first = g.post("/v1/chat/completions", body, **{"Idempotency-Key": "order-1"})
    assert first.status_code == 200
    again = g.post("/v1/chat/completions", body, **{"Idempotency-Key": "order-1"})
    assert again.status_code == 200
    assert again.content == first.content
    assert again.headers["x-tokenrouter-replay-of"] == first.headers["x-request-id"]
    assert g.openai_calls() == 1, "the provider was called once"

    # Another body under the same key is refused; a new key is a new request.
    other = g.post("/v1/chat/completions", chat("something else"), **{"Idempotency-Key": "order-1"})
    assert other.status_code == 400 and "Idempotency-Key" in other.json()["error"]["message"]
    assert g.post("/v1/chat/completions", body, **{"Idempotency-Key": "order-2"}).status_code == 200
    assert g.openai_calls() == 2

    # A retry while the first is still running waits for it and gets its answer.
    g.fakes["openai"].inject({"delay": 1.5})
    with ThreadPoolExecutor(2) as pool:
        slow = pool.submit(g.post, "/v1/chat/completions", chat("slow one"),
                           **{"Idempotency-Key": "order-3"})
        time.sleep(0.3)
        retry = pool.submit(g.post, "/v1/chat/completions", chat("slow one"),
                            **{"Idempotency-Key": "order-3"})
        slow_r, retry_r = slow.result(), retry.result()
    assert slow_r.status_code == retry_r.status_code == 200
    assert retry_r.content == slow_r.content
    assert g.openai_calls() == 3

    # Streams are replayed as they were sent.
    stream_body = chat("stream me", stream=True)
    s1 = g.post("/v1/chat/completions", stream_body, **{"Idempotency-Key": "order-4"})
    s2 = g.post("/v1/chat/completions", stream_body, **{"Idempotency-Key": "order-4"})
    assert s1.text == s2.text and "data: [DONE]" in s2.text
    assert s2.headers["content-type"].startswith("text/event-stream")
    assert g.openai_calls() == 4

    # A failed request releases its key: the retry calls the provider again.
    g.fakes["openai"].inject({"status": 500})
    failed = g.post("/v1/chat/completions", chat("flaky"), **{"Idempotency-Key": "order-5"})
    assert failed.status_code >= 500
    wait_for(lambda: g.post("/v1/chat/completions", chat("flaky"),
                            **{"Idempotency-Key": "order-5"}).status_code == 200,
             10, what="the retry to go through")

    # Charged once: the replay's row costs nothing and points at the original.
    rows = g.control_plane.wait_for_usage(
        [first.headers["x-request-id"], again.headers["x-request-id"]])
    original, replay = rows[first.headers["x-request-id"]], rows[again.headers["x-request-id"]]
    assert Decimal(original["cost_usd"]) > 0
    assert replay["replay_of"] == original["request_id"]
    assert replay["idempotency_key"] == "order-1"
    assert Decimal(replay["cost_usd"]) == 0 and replay["input_tokens"] == 0
    assert replay["provider"] == ""


def test_bodies_are_stored_only_for_keys_that_opt_in(gateway: Gateway) -> None:
    g = gateway
    g.control_plane.cli("firewall", "add", "--name", "Mask cards", "--scope", "prompt",
                        "--type", "regex", "--pattern", r"\d{4}-\d{4}", "--action", "mask",
                        "--replacement", "[CARD]")
    keeper_id, keeper = g.control_plane.create_key("keeper")
    g.control_plane.cli("keys", "update", keeper_id, "--store-bodies", "true")

    def sent_by(key: str) -> requests.Response:
        return g.post("/v1/chat/completions", chat("card 1234-5678 please"), key=key)

    settled(lambda: "[CARD]" in sent_by(keeper).text, "the mask rule and store_bodies at the edge")
    kept = wait_for(lambda: (r := sent_by(keeper)).status_code == 200 and r, 10,
                    what="a kept request")
    plain = sent_by(g.key)
    rid, plain_id = kept.headers["x-request-id"], plain.headers["x-request-id"]

    def detail(request_id: str) -> dict[str, Any] | None:
        r = g.rest(f"/logs/{request_id}")
        return r.json()["data"] if r.status_code == 200 else None

    row = wait_for(lambda: detail(rid), 15, what="the kept row")
    assert row["has_bodies"] is True
    assert "[CARD]" in row["request_body"] and "1234-5678" not in row["request_body"]
    assert json.loads(row["response_body"]) == kept.json()
    other = wait_for(lambda: detail(plain_id), 15, what="the plain row")
    assert other["has_bodies"] is False and other["request_body"] is None
    # A gateway key reads its own row, not another key's.
    assert g.rest(f"/logs/{rid}", token=keeper).status_code == 200
    assert g.rest(f"/logs/{rid}", token=g.key).status_code in (403, 404)


def test_a_held_answer_is_timed_to_its_end(gateway: Gateway) -> None:
    """A non-streamed answer is held until it is whole and judged; the request's latency in its
    log row runs to that end (the provider's delay included, within what the client waited),
    and its time to first byte lies inside it."""
    g = gateway
    g.fakes["openai"].inject({"delay": 0.4})
    started = time.monotonic()
    r = g.post("/v1/chat/completions", chat("take your time"))
    waited_ms = (time.monotonic() - started) * 1000
    assert r.status_code == 200, r.text
    rid = r.headers["x-request-id"]

    def detail() -> dict[str, Any] | None:
        got = g.rest(f"/logs/{rid}")
        return got.json()["data"] if got.status_code == 200 else None

    row = wait_for(detail, 15, what="the delayed request's row")
    assert row["status"] == 200
    assert 400 <= row["ttfb_ms"] <= row["latency_ms"] <= waited_ms + 1, row
