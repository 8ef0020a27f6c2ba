"""Stored provider credentials: a primary and fallbacks per provider, encrypted at rest, rotated
without dropping traffic. Real Envoy + filter + control plane; the fake OpenAI provider, whose
accepted key the tests change the way a provider's console would."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from harness import Harness

OLD = "sk-provider-old-0123456789"
NEW = "sk-provider-new-9876543210"
BODY = {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def authorizations(provider) -> list[str]:
    return [r.headers.get("authorization", "") for r in provider.chat_requests()]


def files_contain(directory: Path, secret: str) -> list[str]:
    needle = secret.encode()
    return [str(p) for p in directory.rglob("*") if p.is_file() and needle in p.read_bytes()]


def test_a_refused_primary_is_retried_with_the_fallback(harness: Harness) -> None:
    control_plane = harness.control_plane()
    provider = harness.fake_openai(OLD)
    control_plane.cli(
        "providers", "add", "--name", "openai", "--kind", "openai",
        "--base-url", provider.base_url, "--api-key", "sk-provider-revoked",
        "--fallback-key", OLD,
    )
    listed = control_plane.cli("providers", "list")
    assert listed[0]["fallback_credentials"] == 1
    key_id, key = control_plane.create_key("fallbacks")
    envoy = harness.envoy(control_plane, providers=["openai"])
    envoy.wait_until_serving(key)

    response = envoy.post_chat(key, BODY)
    assert response.status_code == 200, response.text
    assert authorizations(provider) == ["Bearer sk-provider-revoked", f"Bearer {OLD}"]
    request_id = response.headers["x-request-id"]
    row = control_plane.wait_for_usage([request_id])[request_id]
    assert [(a["provider"], a["status"]) for a in row["attempts"]] == [
        ("openai", 401),
        ("openai", 200),
    ]
    # Encrypted at rest: no credential in any file of the control plane's data directory,
    # nor in its log.
    for secret in (OLD, "sk-provider-revoked"):
        assert files_contain(control_plane.data_dir, secret) == []
        assert secret not in control_plane.log_path.read_text()


def test_rotation_under_load_drops_no_request(harness: Harness) -> None:
    control_plane = harness.control_plane()
    provider = harness.fake_openai(OLD)
    control_plane.add_provider("openai", "openai", provider.base_url, OLD)
    _, key = control_plane.create_key("rotation")
    envoy = harness.envoy(control_plane, providers=["openai"])
    envoy.wait_until_serving(key)

    statuses: list[int] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            statuses.append(envoy.post_chat(key, BODY).status_code)

    workers = [threading.Thread(target=load) for _ in range(2)]
    for w in workers:
        w.start()
    try:
        time.sleep(0.5)
        # 1. The new key is primary, the old one its fallback; the provider does not know the
        #    new key yet: every request is served with the old one.
        control_plane.cli("providers", "rotate-key", "openai", "--api-key", NEW, "--keep-previous")
        time.sleep(1.0)
        # 2. The provider activates the new key (both are valid for a while), then revokes the
        #    old one.
        provider.also_accepted = {NEW}
        time.sleep(1.0)
        provider.api_key, provider.also_accepted = NEW, set()
        time.sleep(1.0)
        # 3. The old key is dropped.
        control_plane.cli("providers", "rotate-key", "openai", "--api-key", NEW, "--clear-fallbacks")
        time.sleep(1.0)
    finally:
        stop.set()
        for w in workers:
            w.join()
    assert len(statuses) > 20
    assert set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
    assert control_plane.cli("providers", "list")[0]["fallback_credentials"] == 0
    sent = authorizations(provider)
    assert f"Bearer {NEW}" in sent and f"Bearer {OLD}" in sent
    assert sent[-1] == f"Bearer {NEW}"
    for secret in (OLD, NEW):
        assert files_contain(control_plane.data_dir, secret) == []
