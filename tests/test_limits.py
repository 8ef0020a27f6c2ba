"""Balances and limits, enforced by the control plane for every Envoy (issue: keys, workspaces,
balances, rate limits). Real Envoy + filter + control plane; the fake OpenAI provider."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

import requests

from harness import PROVIDER_SECRET, Harness, wait_for

MODEL = "openai/gpt-4o-mini"


def chat_body(text: str, max_tokens: int = 50) -> bytes:
    return json.dumps(
        {"model": MODEL, "messages": [{"role": "user", "content": text}], "max_tokens": max_tokens}
    ).encode()


def setup(harness: Harness, env: dict[str, Any] | None = None, envoys: int = 1):
    control_plane = harness.control_plane(env=env)
    provider = harness.fake_openai(PROVIDER_SECRET)
    control_plane.add_provider("openai", "openai", provider.base_url, PROVIDER_SECRET)
    probe_id, probe = control_plane.create_key("probe")
    # The probe key must not be limited by a default rate while the stack starts.
    control_plane.cli("keys", "update", probe_id, "--rps", "0")
    started = [harness.envoy(control_plane, providers=["openai"]) for _ in range(envoys)]
    for envoy in started:
        envoy.wait_until_serving(probe)
    return control_plane, provider, started


def error_of(response: requests.Response) -> dict[str, Any]:
    body = response.json()
    assert "error" in body, body
    return body["error"]


def usd(value: str) -> Decimal:
    return Decimal(value)


def test_zero_balance_is_402_and_credit_admits(harness: Harness) -> None:
    control_plane, provider, (envoy,) = setup(harness)
    created = control_plane.cli("keys", "create", "--name", "broke", "--balance", "0")
    key_id, key = created["id"], created["raw"]
    envoy.wait_until_serving(key, 15)

    refused = envoy.post_chat(key, chat_body("hello"))
    assert refused.status_code == 402, refused.text
    error = error_of(refused)
    assert error["type"] == "insufficient_quota"
    assert error["code"] == 402
    assert "balance" in error["message"].lower()
    assert not provider.chat_requests(), "a refused request must not reach the provider"

    control_plane.cli("credit", "grant", "--key", key_id, "--amount", "1")
    served = envoy.post_chat(key, chat_body("hello again"))
    assert served.status_code == 200, served.text
    request_id = served.headers["x-request-id"]
    row = control_plane.wait_for_usage([request_id])[request_id]
    cost = usd(row["cost_usd"])
    assert cost > 0

    def charged() -> dict[str, Any] | None:
        balance = control_plane.cli("balance", "--key", key_id)
        return balance if usd(balance["balance_usd"]) < 1 else None

    balance = wait_for(charged, 10, interval=0.2, what="the charge")
    assert usd(balance["balance_usd"]) == 1 - cost
    assert balance["currency"] == "USD"
    # Refused requests are logged too (and cost nothing).
    refused_id = refused.headers["x-request-id"]
    refused_row = control_plane.wait_for_usage([refused_id])[refused_id]
    assert refused_row["status"] == 402


def test_fifty_concurrent_requests_never_overdraw_a_balance_for_five(harness: Harness) -> None:
    control_plane, provider, (envoy,) = setup(harness)
    body = chat_body("race " * 10, max_tokens=100)
    model = next(m for m in control_plane.cli("models") if m["id"] == MODEL)
    picos_per_usd_per_m = Decimal(10**6)  # USD per million tokens -> picos per token
    input_price = usd(model["input_usd_per_mtok"]) * picos_per_usd_per_m
    output_price = usd(model["output_usd_per_mtok"]) * picos_per_usd_per_m
    # The edge reserves the prompt estimate (body bytes / 4) and max_tokens at the model's price.
    reservation = (len(body) // 4) * input_price + 100 * output_price
    balance_picos = 5 * reservation + reservation / 2
    balance = (balance_picos / Decimal(10**12)).quantize(Decimal("0.000001"), "ROUND_DOWN")
    created = control_plane.cli(
        "keys", "create", "--name", "race", "--balance", str(balance), "--rps", "0"
    )
    key_id, key = created["id"], created["raw"]
    envoy.wait_until_serving(key, 15)
    # Every admitted request stays in flight for a second: the 50 overlap completely.
    provider.inject(*[{"delay": 1.5} for _ in range(50)])

    with ThreadPoolExecutor(50) as pool:
        responses = list(pool.map(lambda _: envoy.post_chat(key, body), range(50)))
    statuses = sorted(r.status_code for r in responses)
    assert statuses.count(200) == 5, statuses
    assert statuses.count(402) == 45, statuses
    for r in responses:
        if r.status_code == 402:
            assert error_of(r)["type"] == "insufficient_quota"

    served = [r.headers["x-request-id"] for r in responses if r.status_code == 200]
    rows = control_plane.wait_for_usage(served)
    spent = sum(usd(row["cost_usd"]) for row in rows.values())

    def settled() -> dict[str, Any] | None:
        view = control_plane.cli("balance", "--key", key_id)
        return view if usd(view["reserved_usd"]) == 0 else None

    view = wait_for(settled, 10, interval=0.2, what="reservations to settle")
    assert usd(view["balance_usd"]) == balance - spent
    assert usd(view["balance_usd"]) >= 0


def test_request_rate_burst_is_429_with_retry_after(harness: Harness) -> None:
    control_plane, provider, (envoy,) = setup(harness)
    created = control_plane.cli("keys", "create", "--name", "burst", "--rps", "3")
    key = created["raw"]
    envoy.wait_until_serving(key, 15)
    # Admission is taken at the control plane: fire faster than 3 per second.
    with ThreadPoolExecutor(10) as pool:
        responses = list(pool.map(lambda i: envoy.post_chat(key, chat_body(f"b{i}")), range(10)))
    ok = [r for r in responses if r.status_code == 200]
    limited = [r for r in responses if r.status_code == 429]
    assert 3 <= len(ok) <= 4 and len(ok) + len(limited) == 10, [r.status_code for r in responses]
    for r in limited:
        retry_after = int(r.headers["retry-after"])
        assert 1 <= retry_after <= 2
        error = error_of(r)
        assert error["type"] == "rate_limit_error"
        assert "3 requests per second" in error["message"]
    time.sleep(int(limited[0].headers["retry-after"]))
    assert envoy.post_chat(key, chat_body("after")).status_code == 200
    assert len(provider.chat_requests()) == len(ok) + 1


def test_default_rate_is_ten_per_second(harness: Harness) -> None:
    control_plane, _, (envoy,) = setup(harness, env={"TOKENROUTER_DEFAULT_RPS": None})
    created = control_plane.cli("keys", "create", "--name", "default-rate")
    assert created["effective_limits"]["rps"] == 10
    key = created["raw"]
    envoy.wait_until_serving(key, 15)
    with ThreadPoolExecutor(25) as pool:
        responses = list(pool.map(lambda i: envoy.post_chat(key, chat_body(f"d{i}")), range(25)))
    statuses = [r.status_code for r in responses]
    assert 10 <= statuses.count(200) <= 13, statuses
    assert statuses.count(429) == 25 - statuses.count(200), statuses


def test_hourly_token_budget_counts_streamed_responses(harness: Harness) -> None:
    control_plane, _, (envoy,) = setup(harness)
    created = control_plane.cli(
        "keys", "create", "--name", "budget", "--rps", "0", "--hour-tokens", "120"
    )
    key = created["raw"]
    envoy.wait_until_serving(key, 15)
    used = 0
    for i in range(20):
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": f"count these words please {i}"}],
            "stream": True,
        }
        response = envoy.post_chat(key, body)
        if response.status_code == 429:
            error = error_of(response)
            assert error["type"] == "rate_limit_error"
            assert "total tokens per hour" in error["message"]
            retry_after = int(response.headers["retry-after"])
            assert 60 < retry_after <= 3600
            break
        assert response.status_code == 200, response.text
        assert "data: [DONE]" in response.text
        request_id = response.headers["x-request-id"]
        # Tokens count once the usage record arrived; wait for it so the next check sees it.
        row = control_plane.wait_for_usage([request_id])[request_id]
        assert row["stream"] and row["output_tokens"] > 0
        used += row["input_tokens"] + row["output_tokens"]
    else:
        raise AssertionError("the hourly token budget never refused a request")
    # Refused once the budget was spent, less this request's prompt estimate (body bytes / 4).
    assert 120 - 40 <= used, used


def test_a_limit_holds_across_two_envoys(harness: Harness) -> None:
    control_plane, _, envoys = setup(harness, envoys=2)
    created = control_plane.cli("keys", "create", "--name", "fleet", "--rps", "4")
    key = created["raw"]
    for envoy in envoys:
        envoy.wait_until_serving(key, 15)
    jobs = [(envoys[i % 2], i) for i in range(16)]
    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(lambda j: j[0].post_chat(key, chat_body(f"f{j[1]}")), jobs))
    statuses = [r.status_code for r in responses]
    # One bucket of 4 for both Envoys (a refill of one during the burst at most).
    assert 4 <= statuses.count(200) <= 5, statuses
    by_envoy = {
        envoy.url: [r.status_code for (e, _), r in zip(jobs, responses) if e is envoy]
        for envoy in envoys
    }
    assert all(429 in s for s in by_envoy.values()), by_envoy


def test_control_plane_away_keeps_rate_limited_keys_serving_and_refuses_metered_ones(
    harness: Harness,
) -> None:
    control_plane, _, (envoy,) = setup(harness)
    limited = control_plane.cli("keys", "create", "--name", "limited", "--rps", "100")["raw"]
    metered = control_plane.cli("keys", "create", "--name", "metered", "--balance", "5")["raw"]
    envoy.wait_until_serving(limited, 15)
    envoy.wait_until_serving(metered, 15)
    assert envoy.post_chat(metered, chat_body("before")).status_code == 200
    control_plane.stop()

    served = envoy.post_chat(limited, chat_body("while away"))
    assert served.status_code == 200, served.text
    assert "Rate limits could not be checked" in served.headers.get("x-tokenrouter-warnings", "")
    refused = envoy.post_chat(metered, chat_body("while away"))
    assert refused.status_code == 503, refused.text
    assert error_of(refused)["type"] == "service_unavailable"
