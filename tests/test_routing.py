"""The routing engine end to end: modes, seed routing rules with their trace, per-key
configurations (fallback, traffic split), preview, and in-process failover across provider
wire formats through real Envoy retries."""

from __future__ import annotations

import json
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest
import requests
from openai import OpenAI

from fakes.anthropic_fake import FakeAnthropic
from fakes.gemini_fake import FakeGemini
from fakes.openai_fake import FakeOpenAI
from harness import PROVIDER_SECRET, ControlPlane, Envoy, Harness, filter_stats, wait_for

ANTHROPIC_SECRET = "sk-ant-provider-secret"
GEMINI_SECRET = "gemini-provider-secret"
# Short enough for a "provider hangs" test, long enough for a loaded CI machine.
PER_TRY_TIMEOUT_MS = 2000


@dataclass
class Fleet:
    control_plane: ControlPlane
    envoy: Envoy
    fakes: dict[str, FakeOpenAI]
    key_id: str
    key: str

    def openai(self) -> OpenAI:
        return OpenAI(base_url=f"{self.envoy.url}/v1", api_key=self.key, max_retries=0)

    def post(self, path: str, body: dict[str, Any], **headers: str) -> requests.Response:
        return requests.post(
            f"{self.envoy.url}{path}",
            json=body,
            headers={"Authorization": f"Bearer {self.key}", **headers},
            timeout=30,
        )

    def posts(self, provider: str) -> list[Any]:
        return [r for r in self.fakes[provider].requests if r.method == "POST"]

    def set_routing(self, *args: str) -> dict[str, Any]:
        return self.control_plane.cli("routing", "set", "--key-id", self.key_id, *args)

    def settle(self, probe: dict[str, Any], want_first: str) -> None:
        """Waits until the edge has the configuration a preview shows (first attempt)."""

        def routed() -> bool:
            r = self.post("/v1/chat/completions", probe)
            return r.status_code == 200 and r.headers.get("x-tokenrouter-provider") == want_first

        wait_for(routed, 10, interval=0.1, what=f"requests routed to {want_first}")
        for fake in self.fakes.values():
            fake.clear()


@pytest.fixture
def fleet(harness: Harness) -> Fleet:
    control_plane = harness.control_plane(
        env={"TOKENROUTER_PER_TRY_TIMEOUT_MS": str(PER_TRY_TIMEOUT_MS)}
    )
    openai_fake = harness.fake_openai(PROVIDER_SECRET)
    claude_fake = FakeAnthropic(ANTHROPIC_SECRET).start()
    gemini_fake = FakeGemini(GEMINI_SECRET).start()
    harness._fakes += [claude_fake, gemini_fake]  # stopped with the harness
    control_plane.add_provider("openai", "openai", openai_fake.base_url, PROVIDER_SECRET)
    control_plane.add_provider("claude", "anthropic", claude_fake.base_url, ANTHROPIC_SECRET)
    control_plane.add_provider("gem", "gemini", gemini_fake.base_url, GEMINI_SECRET)
    key_id, key = control_plane.create_key("routing")
    envoy = harness.envoy(control_plane, providers=["openai", "claude", "gem"])
    envoy.wait_until_serving(key)
    fakes = {"openai": openai_fake, "claude": claude_fake, "gem": gemini_fake}
    return Fleet(control_plane, envoy, fakes, key_id, key)


def chat(model: str, text: str = "hello there", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


def trace_of(response: requests.Response) -> list[dict[str, Any]]:
    return json.loads(response.headers["x-tokenrouter-rule-trace"])


# --------------------------------------------------------------------------------------------
# Failover


FAULTS = {
    "503": {"status": 503},
    "429": {"status": 429, "retry_after": 7},
    "hang": {"hang": PER_TRY_TIMEOUT_MS / 1000 + 3},
    "reset": {"reset": True},
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_primary_fails_and_a_different_format_secondary_answers(fleet: Fleet, fault: str) -> None:
    fleet.set_routing(
        "--strategy", "fallback", "--backend", "openai/gpt-4o-mini",
        "--backend", "claude/claude-haiku-4-5",
    )
    fleet.settle(chat("anything"), "openai")
    fleet.fakes["openai"].inject(FAULTS[fault])

    raw = fleet.openai().chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "fail over please"}]
    )
    completion = raw.parse()

    # One response for the client, from Anthropic, in the OpenAI format it asked for.
    assert completion.choices[0].message.content
    assert raw.headers["x-tokenrouter-provider"] == "claude"
    assert raw.headers["x-tokenrouter-model"] == "claude-haiku-4-5"
    assert raw.headers["x-tokenrouter-attempts"] == "2"
    assert "x-envoy-attempt-count" not in raw.headers
    [first] = fleet.posts("openai")
    [second] = fleet.posts("claude")
    assert first.body["model"] == "gpt-4o-mini"
    assert second.path == "/v1/messages" and second.body["model"] == "claude-haiku-4-5"
    assert second.headers["x-api-key"] == ANTHROPIC_SECRET
    assert not [h for h in second.headers if h.startswith(("x-tr-", "x-envoy-"))]

    row = fleet.control_plane.wait_for_usage([raw.headers["x-request-id"]])[
        raw.headers["x-request-id"]
    ]
    assert [(a["provider"], a["status"]) for a in row["attempts"]] == [
        ("openai", {"503": 503, "429": 429, "hang": 0, "reset": 0}[fault]),
        ("claude", 200),
    ]
    assert row["provider"] == "claude" and row["status"] == 200
    assert row["input_tokens"] > 0 and row["cost_usd"] != "0"

    # Envoy's own stats count the fallback and the tokens by provider and model.
    stats = wait_for(
        lambda: (
            s if (s := filter_stats(fleet.envoy.admin_url)).get("tokenrouter.fallbacks") == 1
            else None
        ),
        5,
        interval=0.1,
        what="the filter's counters",
    )
    assert stats.get("tokenrouter.failed_attempts") == 1, stats
    assert stats.get("tokenrouter.provider.claude.model.claude-haiku-4-5.requests") == 1, stats
    assert stats.get("tokenrouter.provider.claude.model.claude-haiku-4-5.input_tokens", 0) > 0
    prometheus = requests.get(f"{fleet.envoy.admin_url}/stats/prometheus", timeout=5).text
    assert "tokenrouter_fallbacks" in prometheus


def test_streamed_failover_openai_to_anthropic(fleet: Fleet) -> None:
    fleet.set_routing(
        "--strategy", "fallback", "--backend", "openai/gpt-4o-mini",
        "--backend", "claude/claude-haiku-4-5",
    )
    fleet.settle(chat("anything"), "openai")
    fleet.fakes["openai"].inject({"status": 503})
    stream = fleet.openai().chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "stream after failover"}],
        stream=True,
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text
    assert len(fleet.posts("openai")) == 1 and len(fleet.posts("claude")) == 1


def test_exhausted_chain_is_a_typed_error_naming_the_provider(fleet: Fleet) -> None:
    fleet.set_routing(
        "--strategy", "fallback", "--backend", "openai/gpt-4o-mini",
        "--backend", "claude/claude-haiku-4-5",
    )
    fleet.settle(chat("anything"), "openai")
    fleet.fakes["openai"].inject({"status": 503})
    fleet.fakes["claude"].inject({"status": 529})
    r = fleet.post("/v1/chat/completions", chat("gpt-4o-mini"))
    assert r.status_code == 529, r.text
    error = r.json()["error"]
    assert error["provider"] == "claude"
    assert r.headers["x-tokenrouter-attempts"] == "2"

    # Both fail without answering: Envoy's own reply becomes the envelope.
    fleet.fakes["openai"].inject({"reset": True})
    fleet.fakes["claude"].inject({"reset": True})
    r = fleet.post("/v1/chat/completions", chat("gpt-4o-mini"))
    assert r.status_code in (502, 503), r.text
    assert r.json()["error"]["provider"] == "claude"
    row = fleet.control_plane.wait_for_usage([r.headers["x-request-id"]])[
        r.headers["x-request-id"]
    ]
    assert [a["error"] for a in row["attempts"]] == ["no_response", "no_response"]


# --------------------------------------------------------------------------------------------
# Per-key configurations


def test_traffic_split_of_1000_requests_follows_the_weights(fleet: Fleet) -> None:
    fleet.set_routing(
        "--strategy", "split",
        "--backend", "openai/gpt-4o-mini", "--weight", "3",
        "--backend", "claude/claude-haiku-4-5", "--weight", "1",
    )

    def one(i: int) -> str:
        r = fleet.post("/v1/chat/completions", chat("gpt-4o", f"split {i}"))
        assert r.status_code == 200, r.text
        return r.headers["x-tokenrouter-provider"]

    # Wait for the configuration (the first requests may predate it).
    wait_for(lambda: one(-1) == "claude" or None, 10, interval=0.05, what="split active")
    with ThreadPoolExecutor(8) as pool:
        counts = Counter(pool.map(one, range(1000)))
    assert set(counts) == {"openai", "claude"}
    assert 700 <= counts["openai"] <= 800, counts


def test_inactive_configuration_is_kept_but_not_enforced(fleet: Fleet) -> None:
    fleet.set_routing("--strategy", "fallback", "--backend", "claude/claude-haiku-4-5")
    fleet.settle(chat("openai/gpt-4o-mini"), "openai")  # a pinned provider is honoured
    fleet.settle(chat("gpt-4o-mini"), "claude")  # the model is a hint
    fleet.control_plane.cli("routing", "deactivate", fleet.key_id)
    fleet.settle(chat("gpt-4o-mini"), "openai")


# --------------------------------------------------------------------------------------------
# Rules and modes


def test_seed_routing_rule_fires_with_its_trace(fleet: Fleet) -> None:
    fleet.control_plane.cli(
        "rules", "create", "--name", "Coding Tasks → OpenAI", "--priority", "100",
        "--match", json.dumps({"task": "coding"}),
        "--action", json.dumps({"set_provider": "openai", "set_model": "gpt-4o"}),
    )
    fleet.control_plane.cli(
        "rules", "create", "--name", "Simple Tasks → Cost Mode", "--priority", "50",
        "--match", json.dumps({"contains": ["summarize", "list"]}),
        "--action", json.dumps({"set_mode": "cost", "add_warning": {"message": "Using beta routing"}}),
    )
    body = {
        "model": "auto:balance",
        "metadata": {"task": "coding"},
        "input": [{"role": "user", "content": [{"type": "input_text", "text": "Write a parser."}]}],
    }

    def routed() -> requests.Response | None:
        r = fleet.post("/v1/responses", body, **{"OpenAI-Beta": "responses=v1"})
        rules = [t for t in trace_of(r) if "rule" in t] if r.status_code == 200 else []
        return r if len(rules) == 2 else None

    r = wait_for(routed, 10, interval=0.1, what="both rules at the edge")
    assert r.status_code == 200 and r.json()["object"] == "response"
    assert r.headers["x-tokenrouter-provider"] == "openai"
    trace = trace_of(r)
    [coding] = [t for t in trace if t.get("rule") == "Coding Tasks → OpenAI"]
    assert coding["matched"] is True
    assert coding["conditions"] == [
        {"condition": "task", "expected": "coding", "actual": "coding", "matched": True}
    ]
    assert coding["applied"] == ["set_provider=openai", "set_model=gpt-4o"]
    [simple] = [t for t in trace if t.get("rule") == "Simple Tasks → Cost Mode"]
    assert simple["matched"] is False
    row = fleet.control_plane.wait_for_usage([r.headers["x-request-id"]])[r.headers["x-request-id"]]
    assert json.loads(row["rule_trace"]) == trace

    # The second rule: contains → cost mode and a warning.
    r = fleet.post("/v1/chat/completions", chat("auto:balance", "Please summarize this memo"))
    assert r.status_code == 200, r.text
    assert r.headers["x-tokenrouter-mode"] == "cost"
    assert "Using beta routing" in r.headers["x-tokenrouter-warnings"]


def test_runs_of_equal_traces_are_sent_once_and_logged_whole(fleet: Fleet) -> None:
    """Requests the same rules decide alike carry the same trace: the edge sends a run of equal
    traces once per usage batch, and every log row still holds its own request's whole trace."""
    for i in range(6):
        fleet.control_plane.cli(
            "rules", "create", "--name", f"Task {i} → OpenAI", "--priority", str(10 + i),
            "--match", json.dumps({"task": f"task-{i}"}),
            "--action", json.dumps({"set_provider": "openai"}),
        )

    def body(task: str) -> dict[str, Any]:
        return chat("gpt-4o-mini", metadata={"task": task})

    def traced() -> bool:
        r = fleet.post("/v1/chat/completions", body("other"))
        return r.status_code == 200 and len([t for t in trace_of(r) if "rule" in t]) == 6

    wait_for(traced, 10, interval=0.1, what="six rules at the edge")

    def runs() -> int:
        text = requests.get(f"{fleet.control_plane.rest_url}/metrics", timeout=5).text
        [value] = [line.split()[1] for line in text.splitlines()
                   if line.startswith("tokenrouter_usage_trace_runs_total ")]
        return int(value)

    before = runs()
    tasks = ["other", "other", "other", "task-1", "task-1", "other", "other", "task-4"]
    # Runs are a worker's: one keep-alive connection keeps the requests on one of Envoy's
    # workers (a new connection each could spread the repeats so no worker saw two in a row).
    with requests.Session() as session:
        responses = [
            session.post(f"{fleet.envoy.url}/v1/chat/completions", json=body(t),
                         headers={"Authorization": f"Bearer {fleet.key}"}, timeout=30)
            for t in tasks
        ]
    assert all(r.status_code == 200 for r in responses)
    traces = [r.headers["x-tokenrouter-rule-trace"] for r in responses]
    assert len(set(traces)) == 3 and len(traces[0]) >= 512  # stored once, in rule_traces
    rows = fleet.control_plane.wait_for_usage([r.headers["x-request-id"] for r in responses])
    for r in responses:
        assert json.loads(rows[r.headers["x-request-id"]]["rule_trace"]) == trace_of(r)
    # Some of the five repeats travelled as "the previous record's" (a batch can end between
    # any two requests, but not between all of them).
    assert runs() > before


def test_modes_follow_prices_quality_and_live_latency(fleet: Fleet) -> None:
    text = "Draft an onboarding email for new customers."
    r = fleet.post("/v1/chat/completions", chat("auto:quality", text))
    assert r.status_code == 200, r.text
    quality_first = r.headers["x-tokenrouter-provider"]
    r = fleet.post("/v1/chat/completions", chat("auto:cost", text))
    assert r.status_code == 200
    cost_first = r.headers["x-tokenrouter-model"]
    assert r.headers["x-tokenrouter-tier"] in ("simple", "medium", "complex", "reasoning")
    # The catalogue says which is cheapest / best; the preview (same engine) agrees.
    preview = fleet.control_plane.cli(
        "preview", "--key-id", fleet.key_id, "--body", json.dumps(chat("auto:cost", text))
    )
    assert preview["attempts"][0]["model"] == cost_first
    preview = fleet.control_plane.cli(
        "preview", "--key-id", fleet.key_id, "--body", json.dumps(chat("auto:quality", text))
    )
    assert preview["attempts"][0]["provider"] == quality_first

    # Latency: make the provider auto:latency picks slow; after a few measured requests the
    # live scores move traffic elsewhere.
    r = fleet.post("/v1/chat/completions", chat("auto:latency", text))
    fast = r.headers["x-tokenrouter-provider"]
    slow_model = f"{fast}/{r.headers['x-tokenrouter-model']}"
    fleet.fakes[fast].inject(*[{"delay": 1.0}] * 4)
    for i in range(4):
        assert fleet.post("/v1/chat/completions", chat(slow_model, f"slow {i}")).status_code == 200
    others = {p for p in fleet.fakes if p != fast}
    for p in others:
        for i in range(3):
            model = {"openai": "openai/gpt-4o-mini", "claude": "claude/claude-haiku-4-5",
                     "gem": "gem/gemini-1.5-flash"}[p]
            assert fleet.post("/v1/chat/completions", chat(model, f"fast {i}")).status_code == 200

    def moved() -> str | None:
        r = fleet.post("/v1/chat/completions", chat("auto:latency", text))
        return r.headers["x-tokenrouter-provider"] if r.headers["x-tokenrouter-provider"] != fast else None

    assert wait_for(moved, 15, interval=0.3, what="latency scores moved traffic") in others


def test_preview_equals_the_live_decision(fleet: Fleet) -> None:
    fleet.set_routing(
        "--strategy", "fallback", "--backend", "claude/claude-sonnet-4-5",
        "--backend", "openai/gpt-4o",
    )
    body = chat("gpt-4o-mini", "preview me")
    fleet.settle(body, "claude")
    preview = fleet.control_plane.cli(
        "preview", "--key-id", fleet.key_id, "--body", json.dumps(body)
    )
    assert [(a["provider"], a["model"]) for a in preview["attempts"]] == [
        ("claude", "claude-sonnet-4-5"), ("openai", "gpt-4o"),
    ]
    assert preview["cluster"] == "tr_chain_claude+openai"
    live = fleet.post("/v1/chat/completions", body)
    assert trace_of(live) == preview["rule_trace"]
    # A refused request previews as the error the client would get.
    refused = fleet.control_plane.cli(
        "preview", "--key-id", fleet.key_id, "--body", json.dumps(chat("nope/model"))
    )
    assert refused["error"]["error"]["type"] == "not_found_error" or refused["attempts"]


# --------------------------------------------------------------------------------------------
# Bring your own key


def test_byok_header_is_the_attempts_credential_and_is_never_kept(fleet: Fleet) -> None:
    byok = "sk-byok-0123456789abcdef"
    fleet.fakes["openai"].api_key = byok  # the stored credential no longer works
    r = fleet.post("/v1/chat/completions", chat("openai/gpt-4o-mini"))
    assert r.status_code == 401, r.text
    r = fleet.post("/v1/chat/completions", chat("openai/gpt-4o-mini"), **{"X-OpenAI-Key": byok})
    assert r.status_code == 200, r.text
    sent = fleet.posts("openai")[-1]
    assert sent.headers["authorization"] == f"Bearer {byok}"
    assert "x-openai-key" not in sent.headers
    # A BYOK key for another provider is not sent to this one.
    r = fleet.post("/v1/chat/completions", chat("openai/gpt-4o-mini"), **{"X-Anthropic-Key": byok})
    assert r.status_code == 401
    assert fleet.posts("openai")[-1].headers["authorization"] == f"Bearer {PROVIDER_SECRET}"

    request_id = r.headers["x-request-id"]
    fleet.control_plane.wait_for_usage([request_id])
    # Never stored or logged: not in any log row, the database files or the process logs.
    assert byok not in json.dumps(fleet.control_plane.logs())
    for path in fleet.control_plane.data_dir.rglob("*"):
        if path.is_file():
            assert byok.encode() not in path.read_bytes(), path
    assert byok not in fleet.control_plane.log_path.read_text(errors="replace")
