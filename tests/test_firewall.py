"""The firewall end to end: rules made with the CLI, enforced by the wasm filter in real Envoy,
observed with the official OpenAI SDK and at the fake provider."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import openai
import pytest
import requests

from fakes.openai_fake import REPLY_WITH_PREFIX
from harness import PROVIDER_SECRET, Harness, Stack, wait_for

EXIT_USER_ERROR = 1
MODEL = "openai/gpt-4o-mini"
SEED_CARD_PATTERN = r"\d{4}[\s-]?\d{4}[\s-]?\d{4}[\s-]?\d{4}"
EMAIL_PATTERN = r"[a-zA-Z0-9._%+-]+@[a-zA-Z0-9.-]+\.[a-zA-Z]{2,}"


def user(content: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": content}]


def add_rule(stack: Stack, name: str, scope: str, kind: str, pattern: str, action: str,
             *extra: str) -> dict[str, Any]:
    return stack.control_plane.cli(
        "firewall", "add", "--name", name, "--scope", scope, "--type", kind,
        "--pattern", pattern, "--action", action, *extra,
    )


def wait_until_enforced(stack: Stack, probe: dict[str, Any], enforced) -> None:
    """Sends ``probe`` until ``enforced(response)`` holds (the snapshot with the rule reached
    the edge), then forgets what the provider saw."""
    # Every worker picks the snapshot up on its own tick: several probes in a row (each on a
    # new connection, so on any worker) must see the rule.
    wait_for(
        lambda: all(enforced(stack.envoy.post_chat(stack.key, probe)) for _ in range(4)),
        timeout=10,
        what="the firewall rule to reach every worker of the edge",
    )
    stack.provider.clear()


def firewall_header_items(value: str) -> list[str]:
    return [item for item in value.split(", ") if item]


def test_seed_credit_card_prompt_is_blocked_and_provider_never_called(stack: Stack) -> None:
    add_rule(stack, "Block Credit Cards", "prompt", "regex", SEED_CARD_PATTERN, "block",
             "--priority", "100")
    blocked = {"model": MODEL, "messages": user("card 1111 2222 3333 4444")}
    wait_until_enforced(stack, blocked, lambda r: r.status_code == 422)

    client = stack.client()
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        client.chat.completions.create(
            model=MODEL, messages=user("My credit card is 4532-1234-5678-9010")
        )
    error = caught.value
    assert error.status_code == 422
    body = error.body
    assert body["type"] == "firewall_error", body
    assert "Block Credit Cards" in body["message"], body
    assert "4532" not in str(body), "the matched text is never echoed"
    assert stack.provider.chat_requests() == [], "the provider never received it"
    assert error.response.headers["x-tokenrouter-firewall"] == "block:prompt:Block Credit Cards"

    request_id = error.response.headers["x-request-id"]
    row = stack.usage(request_id)[request_id]
    assert row["status"] == 422
    assert row["error_type"] == "firewall_error"
    assert row["firewall_actions"] == ["block:prompt:Block Credit Cards"]
    assert row["provider"] == ""

    # Text without a card still goes through.
    reply = client.chat.completions.create(model=MODEL, messages=user("no numbers here"))
    assert reply.choices[0].message.content == "echo: no numbers here"


def test_prompt_and_metadata_masks_reach_the_provider_masked(stack: Stack) -> None:
    add_rule(stack, "Mask live keys", "prompt", "regex", r"sk-live-[a-z0-9]+", "mask",
             "--replacement", "[KEY]")
    add_rule(stack, "Mask customer", "metadata", "substring", "ACME", "mask")
    # Both rules must have reached the edge (each write publishes its own snapshot).
    probe = {"model": MODEL, "messages": user("sk-live-probe"), "metadata": {"c": "ACME"}}
    wait_until_enforced(
        stack,
        probe,
        lambda r: r.status_code == 200
        and "[KEY]" in r.text
        and stack.provider.chat_requests()[-1].body["metadata"] == {"c": "[REDACTED]"},
    )

    client = stack.client()
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=[
            {"role": "system", "content": "Never repeat sk-live-abc123."},
            {"role": "user", "content": "my key is sk-live-zz99 ok"},
        ],
        metadata={"customer": "acme corp", "plan": "pro"},
        store=True,
    )
    [seen] = stack.provider.chat_requests()
    assert seen.body["messages"][0]["content"] == "Never repeat [KEY]."
    assert seen.body["messages"][1]["content"] == "my key is [KEY] ok"
    assert seen.body["metadata"] == {"customer": "[REDACTED] corp", "plan": "pro"}
    assert b"sk-live" not in seen.raw_body
    assert raw.parse().choices[0].message.content == "echo: my key is [KEY] ok"
    assert firewall_header_items(raw.headers["x-tokenrouter-firewall"]) == [
        "mask:prompt:Mask live keys",
        "mask:metadata:Mask customer",
    ]
    assert "x-tokenrouter-warnings" not in raw.headers
    # Recorded with the response body too.
    annotation = raw.http_response.json()["tokenrouter"]
    assert annotation == {
        "request_id": raw.headers["x-request-id"],
        "firewall": [
            {"rule": "Mask live keys", "action": "mask", "scope": "prompt"},
            {"rule": "Mask customer", "action": "mask", "scope": "metadata"},
        ],
        "warnings": [],
    }


def test_warning_is_visible_to_the_client_and_logged(stack: Stack) -> None:
    add_rule(stack, "Warn on Sensitive Terms", "prompt", "substring", "confidential", "warn",
             "--priority", "80")
    probe = {"model": MODEL, "messages": user("confidential probe")}
    wait_until_enforced(
        stack, probe, lambda r: r.status_code == 200 and "x-tokenrouter-warnings" in r.headers
    )

    raw = stack.client().chat.completions.with_raw_response.create(
        model=MODEL, messages=user("This is CONFIDENTIAL, but fine.")
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == "echo: This is CONFIDENTIAL, but fine."
    warning = "firewall rule 'Warn on Sensitive Terms' matched the prompt"
    assert raw.headers["x-tokenrouter-warnings"] == warning
    assert raw.headers["x-tokenrouter-firewall"] == "warn:prompt:Warn on Sensitive Terms"
    # The body's `tokenrouter` member says the same (SDKs keep unknown members).
    annotation = (completion.model_extra or {})["tokenrouter"]
    assert annotation["warnings"] == [warning]
    assert annotation["firewall"] == [
        {"rule": "Warn on Sensitive Terms", "action": "warn", "scope": "prompt"}
    ]

    [seen] = stack.provider.chat_requests()
    assert seen.body["messages"][0]["content"] == "This is CONFIDENTIAL, but fine."

    request_id = raw.headers["x-request-id"]
    row = stack.usage(request_id)[request_id]
    assert row["warnings"] == [warning]
    assert row["firewall_actions"] == ["warn:prompt:Warn on Sensitive Terms"]
    assert row["error_type"] is None

    # Streamed: one more chunk before [DONE] carries it.
    chunks = list(stack.client().chat.completions.create(
        model=MODEL, messages=user("confidential, streamed"), stream=True
    ))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "echo: confidential, streamed"
    [note] = [c for c in chunks if (c.model_extra or {}).get("tokenrouter")]
    assert note.choices == [] and note is chunks[-1]
    assert note.model_extra["tokenrouter"]["warnings"] == [warning]


@pytest.fixture
def split_stack(harness: Harness) -> Stack:
    """Like ``stack``, but the fake provider cuts streamed text every 3 characters, so an email
    address spans several SSE events (and usually several TCP reads)."""
    control_plane = harness.control_plane()
    provider = harness.fake_openai(PROVIDER_SECRET, chars_per_chunk=3)
    control_plane.add_provider("openai", "openai", provider.base_url, PROVIDER_SECRET)
    key_id, key = control_plane.create_key("e2e")
    envoy = harness.envoy(control_plane, providers=["openai"])
    envoy.wait_until_serving(key)
    return Stack(control_plane, envoy, provider, key_id, key)


def test_email_in_streamed_response_arrives_masked(split_stack: Stack) -> None:
    stack = split_stack
    rule = stack.control_plane.cli("firewall", "enable-template", "email")
    assert rule["scope"] == "response" and rule["action"] == "mask"
    probe = {"model": MODEL, "messages": user(f"{REPLY_WITH_PREFIX}a@b.io")}
    wait_until_enforced(
        stack, probe, lambda r: r.status_code == 200 and "[EMAIL_REDACTED]" in r.text
    )

    reply = "Write to jane.doe@example.com or JOHN@mail.example.org, thanks."
    stream = stack.client().chat.completions.with_raw_response.create(
        model=MODEL, messages=user(REPLY_WITH_PREFIX + reply), stream=True
    )
    request_id = stream.headers["x-request-id"]
    chunks = list(stream.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Write to [EMAIL_REDACTED] or [EMAIL_REDACTED], thanks."
    assert len(chunks) > 10, "the reply really was streamed in small pieces"
    # The masks found in the stream are recorded with it: a last chunk before [DONE].
    *content, note = chunks
    assert content[-1].choices[0].finish_reason == "stop"
    assert note.choices == []
    assert note.model_extra["tokenrouter"]["firewall"] == [
        {"rule": "Email addresses", "action": "mask", "scope": "response"}
    ]

    row = stack.usage(request_id)[request_id]
    assert row["firewall_actions"] == ["mask:response:Email addresses"]
    assert row["stream"] is True
    assert row["output_tokens"] > 0, "usage is still counted"


def test_blocked_response_is_not_leaked(stack: Stack) -> None:
    add_rule(stack, "No launch codes", "response", "regex", r"code \d{4}-\d{4}", "block")
    probe = {"model": MODEL, "messages": user(f"{REPLY_WITH_PREFIX}code 0000-0000")}
    wait_until_enforced(stack, probe, lambda r: r.status_code == 422)

    secret = "The code 1234-5678 opens it."
    # Not streamed: the whole answer becomes a 422 in the gateway's envelope.
    response = stack.envoy.post_chat(
        stack.key, {"model": MODEL, "messages": user(REPLY_WITH_PREFIX + secret)}
    )
    assert response.status_code == 422, response.text
    assert response.json()["error"]["type"] == "firewall_error"
    assert "No launch codes" in response.json()["error"]["message"]
    assert "1234" not in response.text
    assert response.headers["x-tokenrouter-firewall"] == "block:response:No launch codes"

    # Streamed: the SDK gets the error event; no part of the code reaches the client.
    raw = requests.post(
        f"{stack.envoy.url}/v1/chat/completions",
        json={"model": MODEL, "messages": user(REPLY_WITH_PREFIX + secret), "stream": True},
        headers={"authorization": f"Bearer {stack.key}"},
        timeout=30,
    )
    assert raw.status_code == 200
    assert "1234" not in raw.text and "5678" not in raw.text, raw.text
    assert '"firewall_error"' in raw.text
    assert "[DONE]" not in raw.text

    with pytest.raises(openai.APIError) as caught:
        stream = stack.client().chat.completions.create(
            model=MODEL, messages=user(REPLY_WITH_PREFIX + secret), stream=True
        )
        for _ in stream:
            pass
    assert "No launch codes" in str(caught.value)


def test_invalid_rules_are_refused_by_the_cli(stack: Stack) -> None:
    cases = [
        (["--type", "regex", "--pattern", "(unclosed"], "invalid regex"),
        (["--type", "regex", "--pattern", "x" * 2000], "at most 1024"),
        (["--type", "regex", "--pattern", "((a{50}){50}){50}"], "too large"),
        (["--type", "glob", "--pattern", "x"], "unknown type"),
    ]
    for extra, want in cases:
        result = stack.control_plane.run_cli(
            "firewall", "add", "--name", "bad", "--scope", "prompt", "--action", "block", *extra
        )
        assert result.returncode == EXIT_USER_ERROR, result
        error = json.loads(result.stdout)["error"]
        assert error["type"] == "invalid_argument"
        assert want in error["message"], error
    assert stack.control_plane.cli("firewall", "list") == []

    human = stack.control_plane.run_cli(
        "firewall", "add", "--name", "bad", "--scope", "prompt", "--action", "block",
        "--type", "regex", "--pattern", "[", json=False,
    )
    assert human.returncode == EXIT_USER_ERROR
    assert "invalid regex" in human.stderr


def test_cli_crud_and_templates(stack: Stack) -> None:
    cp = stack.control_plane
    created = add_rule(stack, "Warn on Profanity", "response", "substring", "inappropriate",
                       "warn", "--priority", "50")
    assert created["id"] > 0 and created["is_enabled"] is True
    assert created["type"] == "substring"
    assert cp.cli("firewall", "get", str(created["id"])) == created

    updated = cp.cli("firewall", "update", str(created["id"]), "--disable", "--action", "mask")
    assert updated["is_enabled"] is False and updated["action"] == "mask"
    assert updated["pattern"] == "inappropriate"

    templates = {t["name"]: t for t in cp.cli("firewall", "templates")}
    assert set(templates) == {"ssn", "credit_card", "email", "phone", "openai_key"}
    assert templates["credit_card"]["check"] == "luhn"
    ssn = cp.cli("firewall", "enable-template", "ssn", "--priority", "120")
    assert ssn["template"] == "ssn" and ssn["priority"] == 120
    again = cp.cli("firewall", "enable-template", "ssn")
    assert again["id"] == ssn["id"], "enabling twice keeps one rule"

    listed = cp.cli("firewall", "list")
    assert [r["name"] for r in listed] == [ssn["name"], "Warn on Profanity"]
    table = cp.cli("firewall", "list", json=False)
    assert "Warn on Profanity" in table and not table.lstrip().startswith("[")

    assert cp.cli("firewall", "remove", str(created["id"])) == {"removed": created["id"]}
    missing = cp.run_cli("firewall", "get", str(created["id"]))
    assert missing.returncode == EXIT_USER_ERROR
    unknown = cp.run_cli("firewall", "enable-template", "nope")
    assert unknown.returncode == EXIT_USER_ERROR

    # A template rule enforced end to end: SSNs in prompts are blocked.
    probe = {"model": MODEL, "messages": user("ssn 123-45-6789")}
    wait_until_enforced(stack, probe, lambda r: r.status_code == 422)
    assert stack.provider.chat_requests() == []


# --------------------------------------------------------------------------------------------
# Responses and Messages streams (the OpenAI fake reached through translation)


def anthropic_client(stack: Stack) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=stack.envoy.url, api_key=stack.key, max_retries=0)


def enable_email_masking(stack: Stack) -> None:
    stack.control_plane.cli("firewall", "enable-template", "email")
    probe = {"model": MODEL, "messages": user(f"{REPLY_WITH_PREFIX}a@b.io")}
    wait_until_enforced(
        stack, probe, lambda r: r.status_code == 200 and "[EMAIL_REDACTED]" in r.text
    )


EMAIL_REPLY = "Write to jane.doe@example.com or JOHN@mail.example.org, thanks."
EMAIL_MASKED = "Write to [EMAIL_REDACTED] or [EMAIL_REDACTED], thanks."


def test_email_in_streamed_responses_reply_arrives_masked(split_stack: Stack) -> None:
    stack = split_stack
    enable_email_masking(stack)

    raw = stack.client().responses.with_raw_response.create(
        model=MODEL, input=REPLY_WITH_PREFIX + EMAIL_REPLY, stream=True
    )
    request_id = raw.headers["x-request-id"]
    events = list(raw.parse())

    # The masks found in the stream are recorded with it: a last event after completion.
    *events, note = events
    assert note.type == "tokenrouter.metadata"
    assert note.model_extra["tokenrouter"]["firewall"] == [
        {"rule": "Email addresses", "action": "mask", "scope": "response"}
    ]
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert "".join(deltas) == EMAIL_MASKED
    assert len(deltas) > 10, "the reply really was streamed in small pieces"
    [done] = [e for e in events if e.type == "response.output_text.done"]
    assert done.text == EMAIL_MASKED, "the whole-text events carry the masked text too"
    assert events[-1].type == "response.completed"
    assert events[-1].response.output_text == EMAIL_MASKED
    seqs = [e.sequence_number for e in events]
    assert seqs == list(range(len(events)))
    assert "jane" not in str([e.model_dump() for e in events])

    row = stack.usage(request_id)[request_id]
    assert row["firewall_actions"] == ["mask:response:Email addresses"]
    assert row["client_api"] == "responses"
    assert row["output_tokens"] > 0, "usage is still counted"


def test_email_in_streamed_messages_reply_arrives_masked(split_stack: Stack) -> None:
    stack = split_stack
    enable_email_masking(stack)

    with anthropic_client(stack).messages.stream(
        model=MODEL, max_tokens=256, messages=user(REPLY_WITH_PREFIX + EMAIL_REPLY)
    ) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
        request_id = stream.response.headers["x-request-id"]

    assert "".join(pieces) == EMAIL_MASKED
    assert len(pieces) > 10, "the reply really was streamed in small pieces"
    assert final.content[0].text == EMAIL_MASKED
    assert final.stop_reason == "end_turn"

    # The masks are recorded with the stream as a last `tokenrouter.metadata` event (which the
    # Anthropic SDK passes over, as above).
    raw = requests.post(
        f"{stack.envoy.url}/v1/messages",
        json={"model": MODEL, "max_tokens": 256, "stream": True,
              "messages": user(REPLY_WITH_PREFIX + EMAIL_REPLY)},
        headers={"x-api-key": stack.key, "anthropic-version": "2023-06-01"},
        timeout=30,
    )
    last = raw.text.rstrip("\n").split("\n\n")[-1]
    name, data = last.split("\n", 1)
    assert name == "event: tokenrouter.metadata", raw.text
    note = json.loads(data.removeprefix("data: "))
    assert note["tokenrouter"]["firewall"] == [
        {"rule": "Email addresses", "action": "mask", "scope": "response"}
    ]

    row = stack.usage(request_id)[request_id]
    assert row["firewall_actions"] == ["mask:response:Email addresses"]
    assert row["client_api"] == "messages"


def test_blocked_streamed_messages_reply_is_not_leaked(split_stack: Stack) -> None:
    stack = split_stack
    add_rule(stack, "No launch codes", "response", "regex", r"code \d{4}-\d{4}", "block")
    probe = {"model": MODEL, "messages": user(f"{REPLY_WITH_PREFIX}code 0000-0000")}
    wait_until_enforced(stack, probe, lambda r: r.status_code == 422)

    secret = "The code 1234-5678 opens it."
    raw = requests.post(
        f"{stack.envoy.url}/v1/messages",
        json={"model": MODEL, "max_tokens": 256, "stream": True,
              "messages": user(REPLY_WITH_PREFIX + secret)},
        headers={"x-api-key": stack.key, "anthropic-version": "2023-06-01"},
        timeout=30,
    )
    assert raw.status_code == 200
    assert "1234" not in raw.text and "5678" not in raw.text, raw.text
    assert "event: error" in raw.text and '"firewall_error"' in raw.text, raw.text
    assert "message_stop" not in raw.text
    request_id = raw.headers["x-request-id"]

    with pytest.raises(anthropic.APIStatusError) as caught:
        with anthropic_client(stack).messages.stream(
            model=MODEL, max_tokens=256, messages=user(REPLY_WITH_PREFIX + secret)
        ) as stream:
            for _ in stream.text_stream:
                pass
    assert "No launch codes" in str(caught.value)
    assert "1234" not in str(caught.value)

    row = stack.usage(request_id)[request_id]
    assert row["error_type"] == "firewall_error"
    assert row["firewall_actions"] == ["block:response:No launch codes"]


# --------------------------------------------------------------------------------------------
# Rules scoped to a workspace: a key inherits its workspace's rules


def test_workspace_rule_applies_to_the_keys_of_that_workspace_only(stack: Stack) -> None:
    cp = stack.control_plane
    key_a = cp.cli("keys", "create", "--name", "a", "--workspace", "team-a")
    key_b = cp.cli("keys", "create", "--name", "b", "--workspace", "team-b")
    assert (key_a["workspace_id"], key_b["workspace_id"]) == ("team-a", "team-b")
    stack.envoy.wait_until_serving(key_a["raw"])
    stack.envoy.wait_until_serving(key_b["raw"])

    rule = add_rule(stack, "Falcon (team-a)", "prompt", "substring", "project falcon", "block",
                    "--workspace", "team-a")
    assert rule["workspace_id"] == "team-a" and rule["key_id"] == ""
    # A streamed-response rule of team-b: the stream filter gets the key's workspace too.
    masked = add_rule(stack, "Falcon (team-b)", "response", "substring", "falcon", "mask",
                      "--workspace", "team-b", "--replacement", "[BIRD]")
    assert masked["workspace_id"] == "team-b"
    table = cp.cli("firewall", "list", json=False)
    assert "WORKSPACE" in table.splitlines()[0] and "team-a" in table, table

    probe = {"model": MODEL, "messages": user("status of Project Falcon?")}
    # Both rules reached every worker: team-a's key is blocked, team-b's reply is masked.
    wait_for(
        lambda: all(
            stack.envoy.post_chat(key_a["raw"], probe).status_code == 422
            and "[BIRD]" in stack.envoy.post_chat(key_b["raw"], probe).text
            for _ in range(4)
        ),
        timeout=10,
        what="the workspace rules to reach every worker of the edge",
    )
    stack.provider.clear()

    # team-a: 422 naming the rule; the provider never sees it.
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        stack.envoy.openai(key_a["raw"]).chat.completions.create(
            model=MODEL, messages=user("what about project FALCON")
        )
    body = caught.value.body
    assert body["type"] == "firewall_error", body
    assert "Falcon (team-a)" in body["message"], body
    assert caught.value.response.headers["x-tokenrouter-firewall"] == (
        "block:prompt:Falcon (team-a)"
    )
    assert stack.provider.chat_requests() == []

    # team-b: 200, the provider gets the prompt unchanged; the streamed reply is masked.
    reply = stack.envoy.post_chat(
        key_b["raw"], {"model": MODEL, "messages": user("what about project FALCON")}
    )
    assert reply.status_code == 200, reply.text
    assert reply.json()["choices"][0]["message"]["content"] == "echo: what about project [BIRD]"
    [seen] = stack.provider.chat_requests()
    assert seen.body["messages"][0]["content"] == "what about project FALCON"
    stream = stack.envoy.openai(key_b["raw"]).chat.completions.create(
        model=MODEL, messages=user(f"{REPLY_WITH_PREFIX}a falcon flew"), stream=True
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "a [BIRD] flew"

    # The default workspace's key: neither rule.
    plain = stack.client().chat.completions.create(
        model=MODEL, messages=user("what about project falcon")
    )
    assert plain.choices[0].message.content == "echo: what about project falcon"

    # A rule naming a key of another workspace is refused.
    refused = cp.run_cli(
        "firewall", "add", "--name", "bad", "--scope", "prompt", "--type", "substring",
        "--pattern", "x", "--action", "block", "--workspace", "team-a", "--key", key_b["id"],
    )
    assert refused.returncode == EXIT_USER_ERROR, refused
    error = json.loads(refused.stdout)["error"]
    assert error["type"] == "invalid_argument"
    assert "is in workspace team-b, not team-a" in error["message"], error
