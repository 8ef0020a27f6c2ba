//! Black-box: the REST management API (`/api/v1`) of `server::run` on port-0 listeners, over
//! plain HTTP/1.1: every resource's CRUD, its errors (all in the seeds' envelope), and who may
//! call what (admin token, gateway key, nobody).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{TestServer, TOKEN};
use serde_json::{json, Value};
use tokenrouter_proto::sync::v1::control_message::Msg as Down;
use tokenrouter_proto::sync::v1::edge_message::Msg as Up;
use tokenrouter_proto::sync::v1::filter_sync_client::FilterSyncClient;
use tokenrouter_proto::sync::v1::{EdgeMessage, Hello, UsageBatch, UsageRecord};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Request, Status};

/// An answer: status, lower-cased headers, body (JSON when it parses, else a string).
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    text: String,
    json: Value,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Asserts the error envelope with this status and type.
    #[track_caller]
    fn assert_error(&self, status: u16, kind: &str) {
        assert_eq!(self.status, status, "{}", self.text);
        let error = &self.json["error"];
        assert_eq!(error["type"], kind, "{}", self.text);
        assert_eq!(error["code"], status, "{}", self.text);
        assert!(
            error["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{}",
            self.text
        );
    }

    #[track_caller]
    fn ok(self, status: u16) -> Value {
        assert_eq!(self.status, status, "{}", self.text);
        self.json
    }
}

/// A raw HTTP/1.1 client for the REST listener.
struct Api<'a> {
    server: &'a TestServer,
    /// The `Authorization` header, if any.
    authorization: Option<String>,
}

impl Api<'_> {
    fn admin(server: &TestServer) -> Api<'_> {
        Api::with(server, Some(TOKEN))
    }

    /// `Authorization: Bearer <token>`, or none.
    fn with<'a>(server: &'a TestServer, token: Option<&str>) -> Api<'a> {
        Api {
            server,
            authorization: token.map(|t| format!("Bearer {t}")),
        }
    }

    async fn get(&self, path: &str) -> Reply {
        self.send("GET", path, None, b"").await
    }

    async fn delete(&self, path: &str) -> Reply {
        self.send("DELETE", path, None, b"").await
    }

    async fn post(&self, path: &str, body: Value) -> Reply {
        self.json("POST", path, body).await
    }

    async fn json(&self, method: &str, path: &str, body: Value) -> Reply {
        let body = body.to_string();
        self.send(method, path, Some("application/json"), body.as_bytes())
            .await
    }

    /// Writes the request while reading the answer (a server may answer before it has read a
    /// large body).
    async fn send(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Reply {
        let stream = TcpStream::connect(self.server.rest).await.unwrap();
        let (mut rd, mut wr) = stream.into_split();
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\
             Content-Length: {}\r\n",
            body.len()
        );
        if let Some(value) = &self.authorization {
            head.push_str(&format!("Authorization: {value}\r\n"));
        }
        if let Some(ct) = content_type {
            head.push_str(&format!("Content-Type: {ct}\r\n"));
        }
        head.push_str("\r\n");
        let mut request = head.into_bytes();
        request.extend_from_slice(body);
        let writer = tokio::spawn(async move {
            // The server may close early (413): later writes may fail.
            let _ = wr.write_all(&request).await;
            wr
        });
        let mut raw = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), rd.read_to_end(&mut raw))
            .await
            .expect("no answer within 10 s")
            .unwrap();
        drop(writer.await.unwrap());
        parse(&raw)
    }
}

fn parse(raw: &[u8]) -> Reply {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("no end of headers");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut body = raw[split + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap()[9..12].parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    if headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"))
    {
        body = dechunk(&body);
    }
    let text = String::from_utf8_lossy(&body).into_owned();
    let json = serde_json::from_str(&text).unwrap_or(Value::String(text.clone()));
    Reply {
        status,
        headers,
        text,
        json,
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let end = data.windows(2).position(|w| w == b"\r\n").unwrap();
        let size =
            usize::from_str_radix(std::str::from_utf8(&data[..end]).unwrap().trim(), 16).unwrap();
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&data[end + 2..end + 2 + size]);
        data = &data[end + 4 + size..];
    }
}

/// Creates a key; returns (id, raw).
async fn create_key(api: &Api<'_>, name: &str) -> (String, String) {
    let key = api
        .post("/api/v1/keys", json!({"name": name}))
        .await
        .ok(201);
    (
        key["data"]["id"].as_str().unwrap().to_string(),
        key["data"]["raw"].as_str().unwrap().to_string(),
    )
}

fn bearer(mut r: Request<()>) -> Result<Request<()>, Status> {
    r.metadata_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    Ok(r)
}

/// Stores usage records as an edge would (FilterSync), and waits for the ack.
async fn ingest(server: &TestServer, records: Vec<UsageRecord>) {
    let channel = Channel::from_shared(server.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let (up, rx) = mpsc::channel::<EdgeMessage>(4);
    up.send(EdgeMessage {
        msg: Some(Up::Hello(Hello {
            node_id: "node-a".into(),
            have_version: 0,
            max_schema: 1,
        })),
    })
    .await
    .unwrap();
    let mut down = FilterSyncClient::with_interceptor(channel, bearer)
        .sync(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    up.send(EdgeMessage {
        msg: Some(Up::Usage(UsageBatch {
            batch_id: 7,
            records,
        })),
    })
    .await
    .unwrap();
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(5), down.message())
            .await
            .expect("no ack within 5 s")
            .unwrap()
            .expect("stream ended");
        if let Some(Down::Ack(a)) = msg.msg {
            assert_eq!(a.batch_id, 7);
            return;
        }
    }
}

fn record(id: &str, key: &str, provider: &str, status: u32) -> UsageRecord {
    UsageRecord {
        request_id: id.into(),
        key_id: key.into(),
        provider: provider.into(),
        model: "gpt-4o".into(),
        requested_model: format!("{provider}/gpt-4o"),
        client_api: "chat.completions".into(),
        status,
        input_tokens: 100,
        output_tokens: 20,
        cost_picos: 450_000_000, // $0.00045
        node_id: "node-a".into(),
        ..UsageRecord::default()
    }
}

fn ids(page: &Value, field: &str) -> Vec<String> {
    page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| match &x[field] {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .collect()
}

#[tokio::test]
async fn who_may_call_what() {
    let server = TestServer::start().await;
    let admin = Api::admin(&server);
    let (key_id, raw) = create_key(&admin, "reader").await;
    let (other_id, _) = create_key(&admin, "other").await;

    // Open: health, metrics, the OpenAPI document.
    for path in [
        "/healthz",
        "/metrics",
        "/openapi.json",
        "/api/v1/openapi.json",
    ] {
        assert_eq!(
            Api::with(&server, None).get(path).await.status,
            200,
            "{path}"
        );
    }

    // No or bad credentials: 401 everywhere, with the envelope and a challenge.
    for token in [None, Some("wrong"), Some("sk-tr-unknown"), Some("")] {
        let anon = Api::with(&server, token);
        for path in ["/api/v1/keys", "/api/v1/logs", "/api/v1/usage"] {
            let r = anon.get(path).await;
            r.assert_error(401, "authentication_error");
            assert_eq!(r.header("www-authenticate"), Some("Bearer"));
        }
        anon.post("/api/v1/keys", json!({"name": "x"}))
            .await
            .assert_error(401, "authentication_error");
    }
    // The admin token, but not as a bearer token.
    for value in [format!("Basic {TOKEN}"), TOKEN.to_string()] {
        let other = Api {
            server: &server,
            authorization: Some(value),
        };
        other
            .get("/api/v1/keys")
            .await
            .assert_error(401, "authentication_error");
    }

    // A gateway key: its own logs and usage, nothing else.
    let key = Api::with(&server, Some(&raw));
    assert_eq!(key.get("/api/v1/logs").await.status, 200);
    assert_eq!(key.get("/api/v1/usage?days=7").await.status, 200);
    key.get(&format!("/api/v1/logs?key_id={other_id}"))
        .await
        .assert_error(403, "permission_error");
    key.get(&format!("/api/v1/usage?key_id={other_id}"))
        .await
        .assert_error(403, "permission_error");
    assert_eq!(
        key.get(&format!("/api/v1/logs?key_id={key_id}"))
            .await
            .status,
        200
    );
    for path in [
        "/api/v1/keys",
        "/api/v1/providers",
        "/api/v1/models",
        "/api/v1/routing_rules",
        "/api/v1/firewall_rules",
        "/api/v1/routing_configs",
    ] {
        key.get(path).await.assert_error(403, "permission_error");
    }
    key.post("/api/v1/keys", json!({"name": "escalate"}))
        .await
        .assert_error(403, "permission_error");
    key.post(&format!("/api/v1/keys/{key_id}/revoke"), json!({}))
        .await
        .assert_error(403, "permission_error");

    // Revoked: 401.
    admin
        .post(&format!("/api/v1/keys/{key_id}/revoke"), json!({}))
        .await
        .ok(200);
    key.get("/api/v1/logs")
        .await
        .assert_error(401, "authentication_error");
    server.stop().await;
}

#[tokio::test]
async fn malformed_requests_get_the_envelope() {
    let server = TestServer::start().await;
    let api = Api::admin(&server);
    let keys = "/api/v1/keys";

    api.send("POST", keys, None, br#"{"name":"x"}"#)
        .await
        .assert_error(415, "invalid_request_error");
    api.send("POST", keys, Some("text/plain"), br#"{"name":"x"}"#)
        .await
        .assert_error(415, "invalid_request_error");
    for body in [
        &b"{"[..],
        b"",
        b"[null, null]",
        b"\"name\"",
        br#"{"name": 5}"#,
        br#"{"nome": "typo"}"#,
        br#"{"name": "x", "extra": 1}"#,
    ] {
        let r = api.send("POST", keys, Some("application/json"), body).await;
        r.assert_error(400, "invalid_request_error");
    }
    // One byte over the limit: 413, and nothing stored.
    let mut big = br#"{"name": ""#.to_vec();
    big.resize(tokenrouter_control_plane::api::rest::MAX_API_BODY + 1, b'a');
    api.send("POST", keys, Some("application/json"), &big)
        .await
        .assert_error(413, "request_too_large");
    assert_eq!(api.get(keys).await.ok(200)["data"], json!([]));

    api.get("/api/v1/nope")
        .await
        .assert_error(404, "not_found_error");
    api.get("/nope").await.assert_error(404, "not_found_error");
    let r = api.json("PATCH", keys, json!({})).await;
    r.assert_error(405, "invalid_request_error");
    assert!(r.header("allow").unwrap().contains("POST"), "{r:?}");
    api.get("/api/v1/routing_rules/abc")
        .await
        .assert_error(400, "invalid_request_error");
    for query in ["limit=0", "limit=1001", "limit=x", "status=bogus"] {
        api.get(&format!("{keys}?{query}"))
            .await
            .assert_error(400, "invalid_request_error");
    }
    for query in [
        "days=0",
        "days=366",
        "days=-1",
        "group_by=week",
        "group_by=",
    ] {
        api.get(&format!("/api/v1/usage?{query}"))
            .await
            .assert_error(400, "invalid_request_error");
    }
    for query in [
        "status=42",
        "status=6xx",
        "status=4x",
        "since=5&until=4",
        "cursor=req-unknown",
        "limit=5000",
    ] {
        api.get(&format!("/api/v1/logs?{query}"))
            .await
            .assert_error(400, "invalid_request_error");
    }
    server.stop().await;
}

#[tokio::test]
async fn keys_crud() {
    let server = TestServer::start().await;
    let api = Api::admin(&server);
    let created = api
        .post(
            "/api/v1/keys",
            json!({"name": "ci", "workspace_id": "team-a"}),
        )
        .await
        .ok(201)["data"]
        .clone();
    let raw = created["raw"].as_str().unwrap();
    assert!(raw.starts_with("sk-tr-"));
    assert_eq!(created["key_prefix"], raw[..10]);
    assert_eq!(created["status"], "active");
    assert_eq!(created["workspace_id"], "team-a");
    assert_eq!(created["revoked_at_unix_ms"], Value::Null);
    let id = created["id"].as_str().unwrap().to_string();
    for name in ["b", "c"] {
        create_key(&api, name).await;
    }
    api.post("/api/v1/keys", json!({"name": " "}))
        .await
        .assert_error(400, "invalid_request_error");
    api.post(
        "/api/v1/keys",
        json!({"name": "x", "workspace_id": "Bad WS"}),
    )
    .await
    .assert_error(400, "invalid_request_error");

    // The raw key is never listed or retrieved.
    let all = api.get("/api/v1/keys").await;
    assert!(!all.text.contains(raw));
    assert_eq!(ids(&all.json, "name"), ["ci", "b", "c"]);
    let first = api.get("/api/v1/keys?limit=2").await.ok(200);
    assert_eq!(ids(&first, "name"), ["ci", "b"]);
    let cursor = first["next_cursor"].as_str().unwrap();
    let rest = api
        .get(&format!("/api/v1/keys?limit=2&cursor={cursor}"))
        .await
        .ok(200);
    assert_eq!(
        (ids(&rest, "name"), &rest["next_cursor"]),
        (vec!["c".to_string()], &Value::Null)
    );
    let team = api.get("/api/v1/keys?workspace_id=team-a").await.ok(200);
    assert_eq!(ids(&team, "id"), [id.as_str()]);

    let got = api.get(&format!("/api/v1/keys/{id}")).await;
    assert!(!got.text.contains(raw));
    assert_eq!(got.ok(200)["data"]["name"], "ci");
    api.get("/api/v1/keys/key_missing")
        .await
        .assert_error(404, "not_found_error");

    // Revoke (POST …/revoke or DELETE); idempotent; the key stays listed as revoked.
    let revoked = api
        .post(&format!("/api/v1/keys/{id}/revoke"), json!({}))
        .await
        .ok(200)["data"]
        .clone();
    assert_eq!(revoked["status"], "revoked");
    assert!(revoked["revoked_at_unix_ms"].as_i64().unwrap() > 0);
    let again = api.delete(&format!("/api/v1/keys/{id}")).await.ok(200);
    assert_eq!(again["data"]["status"], "revoked");
    let listed = api.get("/api/v1/keys?status=revoked").await.ok(200);
    assert_eq!(ids(&listed, "id"), [id]);
    assert_eq!(
        ids(&api.get("/api/v1/keys?status=active").await.ok(200), "name"),
        ["b", "c"]
    );
    api.delete("/api/v1/keys/key_missing")
        .await
        .assert_error(404, "not_found_error");
    server.stop().await;
}

#[tokio::test]
async fn providers_crud_never_return_credentials() {
    let server = TestServer::start().await;
    let api = Api::admin(&server);
    let secret = "sk-upstream-very-secret";
    let body = json!({"name": "oa", "kind": "openai", "base_url": "http://127.0.0.1:9/v1",
                      "api_key": secret});
    let created = api.post("/api/v1/providers", body.clone()).await;
    assert!(!created.text.contains(secret));
    let p = created.ok(201)["data"].clone();
    assert_eq!(p["has_credential"], true);
    assert_eq!(p["cluster"], "tr_provider_oa");
    assert_eq!(p["kind"], "openai");
    api.post("/api/v1/providers", body)
        .await
        .assert_error(409, "conflict_error");
    api.post(
        "/api/v1/providers",
        json!({"name": "x", "kind": "nope", "base_url": "http://h"}),
    )
    .await
    .assert_error(400, "invalid_request_error");
    api.post(
        "/api/v1/providers",
        json!({"name": "x", "kind": "openai", "base_url": "ftp://h"}),
    )
    .await
    .assert_error(400, "invalid_request_error");

    // PUT adds or replaces.
    let replaced = api
        .json(
            "PUT",
            "/api/v1/providers/oa",
            json!({"kind": "anthropic", "base_url": "https://api.anthropic.com"}),
        )
        .await
        .ok(200)["data"]
        .clone();
    assert_eq!(replaced["kind"], "anthropic");
    assert_eq!(replaced["has_credential"], false);
    api.json(
        "PUT",
        "/api/v1/providers/second",
        json!({"kind": "openai-compatible", "base_url": "http://127.0.0.1:9/v1",
               "api_key": secret}),
    )
    .await
    .ok(200);
    let all = api.get("/api/v1/providers").await;
    assert!(!all.text.contains(secret));
    assert_eq!(ids(&all.json, "name"), ["oa", "second"]);
    let compatible = api
        .get("/api/v1/providers?kind=openai-compatible")
        .await
        .ok(200);
    assert_eq!(ids(&compatible, "name"), ["second"]);
    let got = api.get("/api/v1/providers/second").await.ok(200);
    assert_eq!(got["data"]["has_credential"], true);

    let deleted = api.delete("/api/v1/providers/oa").await.ok(200);
    assert_eq!(deleted["data"], json!({"id": "oa", "deleted": true}));
    api.get("/api/v1/providers/oa")
        .await
        .assert_error(404, "not_found_error");
    api.delete("/api/v1/providers/oa")
        .await
        .assert_error(404, "not_found_error");
    server.stop().await;
}

#[tokio::test]
async fn model_catalogue() {
    let server = TestServer::start().await;
    let api = Api::admin(&server);
    let openai = api
        .get("/api/v1/models?provider_kind=openai&limit=1000")
        .await
        .ok(200);
    let gpt4o = openai["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == "gpt-4o")
        .unwrap()
        .clone();
    for field in [
        "upstream_model",
        "input_usd_per_mtok",
        "input_price_micros_per_mtok",
        "cached_input_usd_per_mtok",
        "context_window",
        "max_output_tokens",
        "tools",
        "vision",
        "json_mode",
        "streaming",
        "embeddings",
        "quality",
        "tier",
        "price_source",
        "price_as_of",
        "display_name",
        "updated_at_unix_ms",
    ] {
        assert!(gpt4o.get(field).is_some(), "{field} missing: {gpt4o}");
    }
    assert!(openai["data"]
        .as_array()
        .unwrap()
        .iter()
        .all(|m| m["provider_kind"] == "openai"));
    let two = api.get("/api/v1/models?limit=2").await.ok(200);
    assert_eq!(two["data"].as_array().unwrap().len(), 2);
    let cursor = two["next_cursor"].as_str().unwrap();
    let next = api
        .get(&format!("/api/v1/models?limit=1&cursor={cursor}"))
        .await
        .ok(200);
    assert_ne!(next["data"][0]["id"], two["data"][1]["id"]);

    // Upsert, retrieve (an id with a '/' is percent-encoded), patch.
    let m = json!({"id": "org/custom-1", "provider_kind": "openai-compatible",
                   "input_usd_per_mtok": "0.5", "output_usd_per_mtok": "1.25",
                   "context_window": 8192, "quality": 40, "tier": "simple"});
    let saved = api.post("/api/v1/models", m).await.ok(200)["data"].clone();
    assert_eq!(saved["input_price_micros_per_mtok"], 500_000);
    assert_eq!(saved["upstream_model"], "org/custom-1");
    assert_eq!(saved["enabled"], true);
    let path = "/api/v1/models/openai-compatible/org%2Fcustom-1";
    assert_eq!(
        api.get(path).await.ok(200)["data"]["output_usd_per_mtok"],
        "1.25"
    );
    let patched = api
        .json(
            "PATCH",
            path,
            json!({"input_usd_per_mtok": "0.75", "enabled": false}),
        )
        .await
        .ok(200)["data"]
        .clone();
    assert_eq!(patched["input_usd_per_mtok"], "0.75");
    assert_eq!(patched["enabled"], false);
    assert_eq!(patched["output_usd_per_mtok"], "1.25", "unchanged");
    assert!(patched["updated_at_unix_ms"].as_i64().unwrap() > 0);
    let disabled = api
        .get("/api/v1/models?provider_kind=openai-compatible&enabled=false")
        .await
        .ok(200);
    assert_eq!(ids(&disabled, "id"), ["org/custom-1"]);

    api.json("PATCH", path, json!({"quality": 101}))
        .await
        .assert_error(400, "invalid_request_error");
    api.json("PATCH", path, json!({"input_usd_per_mtok": "-1"}))
        .await
        .assert_error(400, "invalid_request_error");
    api.json(
        "PATCH",
        "/api/v1/models/openai/nope",
        json!({"enabled": true}),
    )
    .await
    .assert_error(404, "not_found_error");
    api.get("/api/v1/models/openai/nope")
        .await
        .assert_error(404, "not_found_error");
    api.post(
        "/api/v1/models",
        json!({"id": "", "provider_kind": "openai"}),
    )
    .await
    .assert_error(400, "invalid_request_error");
    api.post("/api/v1/models", json!({"provider_kind": "openai"}))
        .await
        .assert_error(400, "invalid_request_error");
    server.stop().await;
}

/// Seed 003's `client.routing_rules` examples, as HTTP calls.
#[tokio::test]
async fn routing_rules_as_in_the_seed() {
    let server = TestServer::start().await;
    let api = Api::admin(&server);
    let rule = api
        .post(
            "/api/v1/routing_rules",
            json!({
                "name": "Coding Tasks → OpenAI",
                "priority": 100,
                "is_enabled": true,
                "match_json": {"task": "coding"},
                "action_json": {"set_provider": "openai", "set_model": "gpt-4o"}
            }),
        )
        .await
        .ok(201);
    let id = rule["data"]["id"].as_i64().unwrap();
    assert_eq!(rule["data"]["match_json"], json!({"task": "coding"}));
    assert_eq!(
        rule["data"]["action_json"],
        json!({"set_provider": "openai", "set_model": "gpt-4o"})
    );
    api.post(
        "/api/v1/routing_rules",
        json!({"name": "Simple Tasks → Cost Mode", "priority": 50, "is_enabled": true,
               "match_json": {"contains": ["summarize", "list"]},
               "action_json": {"set_mode": "cost"}}),
    )
    .await
    .ok(201);

    let rules = api.get("/api/v1/routing_rules").await.ok(200);
    let names: Vec<(String, i64)> = rules["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap().to_string(),
                r["priority"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        names,
        [
            ("Coding Tasks → OpenAI".to_string(), 100),
            ("Simple Tasks → Cost Mode".to_string(), 50)
        ]
    );
    let one = api
        .get(&format!("/api/v1/routing_rules/{id}"))
        .await
        .ok(200);
    assert_eq!(one["data"]["name"], "Coding Tasks → OpenAI");

    let updated = api
        .json(
            "PATCH",
            &format!("/api/v1/routing_rules/{id}"),
            json!({"priority": 150, "is_enabled": false}),
        )
        .await
        .ok(200)["data"]
        .clone();
    assert_eq!(
        (updated["priority"].as_i64(), &updated["is_enabled"]),
        (Some(150), &json!(false))
    );
    assert_eq!(
        updated["match_json"],
        json!({"task": "coding"}),
        "unchanged"
    );
    let disabled = api
        .get("/api/v1/routing_rules?is_enabled=false")
        .await
        .ok(200);
    assert_eq!(ids(&disabled, "id"), [id.to_string()]);

    // Errors.
    let dup = json!({"name": "Coding Tasks → OpenAI", "match_json": {"task": "coding"},
                     "action_json": {"set_mode": "cost"}});
    api.post("/api/v1/routing_rules", dup)
        .await
        .assert_error(409, "conflict_error");
    let stringly = json!({"name": "s", "match_json": "{\"task\":\"coding\"}",
                          "action_json": {"set_mode": "cost"}});
    api.post("/api/v1/routing_rules", stringly)
        .await
        .assert_error(400, "invalid_request_error");
    let unknown = json!({"name": "u", "match_json": {"phase_of_moon": "full"},
                         "action_json": {"set_mode": "cost"}});
    api.post("/api/v1/routing_rules", unknown)
        .await
        .assert_error(400, "invalid_request_error");
    let missing = json!({"name": "m", "match_json": {"task": "coding"}});
    api.post("/api/v1/routing_rules", missing)
        .await
        .assert_error(400, "invalid_request_error");
    api.json("PATCH", "/api/v1/routing_rules/999", json!({"priority": 1}))
        .await
        .assert_error(404, "not_found_error");

    let deleted = api
        .delete(&format!("/api/v1/routing_rules/{id}"))
        .await
        .ok(200);
    assert_eq!(
        deleted["data"],
        json!({"id": id.to_string(), "deleted": true})
    );
    api.get(&format!("/api/v1/routing_rules/{id}"))
        .await
        .assert_error(404, "not_found_error");
    api.delete(&format!("/api/v1/routing_rules/{id}"))
        .await
        .assert_error(404, "not_found_error");
    server.stop().await;
}

/// Seed 003's `client.firewall_rules` examples, as HTTP calls.
#[tokio::test]
async fn firewall_rules_as_in_the_seed() {
    let server = TestServer::start().await;
    let api = Api::admin(&server);
    let rules = [
        json!({"name": "Block Credit Cards", "priority": 100, "is_enabled": true,
               "scope": "prompt", "type": "regex",
               "pattern": r"\d{4}[\s-]?\d{4}[\s-]?\d{4}[\s-]?\d{4}", "action": "block"}),
        json!({"name": "Mask Email Addresses", "priority": 80, "is_enabled": true,
               "scope": "response", "type": "regex",
               "pattern": r"[a-zA-Z0-9._%+-]+@[a-zA-Z0-9.-]+\.[a-zA-Z]{2,}",
               "action": "mask", "replacement": "[EMAIL_REDACTED]"}),
        json!({"name": "Warn on Profanity", "priority": 50, "is_enabled": true,
               "scope": "response", "type": "substring", "pattern": "inappropriate",
               "action": "warn"}),
    ];
    let mut created = Vec::new();
    for rule in rules {
        let r = api
            .post("/api/v1/firewall_rules", rule.clone())
            .await
            .ok(201);
        for field in ["name", "priority", "scope", "type", "pattern", "action"] {
            assert_eq!(r["data"][field], rule[field], "{field}");
        }
        created.push(r["data"]["id"].as_i64().unwrap());
    }
    let listed = api.get("/api/v1/firewall_rules").await.ok(200);
    assert_eq!(ids(&listed, "action"), ["block", "mask", "warn"]);
    assert_eq!(listed["data"][1]["replacement"], "[EMAIL_REDACTED]");
    let masks = api
        .get("/api/v1/firewall_rules?scope=response")
        .await
        .ok(200);
    assert_eq!(
        ids(&masks, "name"),
        ["Mask Email Addresses", "Warn on Profanity"]
    );

    let id = created[0];
    let path = format!("/api/v1/firewall_rules/{id}");
    assert_eq!(
        api.get(&path).await.ok(200)["data"]["name"],
        "Block Credit Cards"
    );
    let disabled = api
        .json("PATCH", &path, json!({"is_enabled": false}))
        .await
        .ok(200);
    assert_eq!(disabled["data"]["is_enabled"], false);
    let warn = api
        .json("PATCH", &path, json!({"action": "warn"}))
        .await
        .ok(200);
    assert_eq!(warn["data"]["action"], "warn");
    assert_eq!(warn["data"]["is_enabled"], false, "earlier change kept");

    // Errors.
    let bad_regex = json!({"name": "bad", "scope": "prompt", "type": "regex", "pattern": "(",
                           "action": "block"});
    api.post("/api/v1/firewall_rules", bad_regex)
        .await
        .assert_error(400, "invalid_request_error");
    api.json("PATCH", &path, json!({"action": "explode"}))
        .await
        .assert_error(400, "invalid_request_error");
    let dup = json!({"name": "Warn on Profanity", "scope": "prompt", "type": "substring",
                     "pattern": "x", "action": "warn"});
    api.post("/api/v1/firewall_rules", dup)
        .await
        .assert_error(409, "conflict_error");

    // Templates.
    let templates = api.get("/api/v1/firewall_templates").await.ok(200);
    let ssn = templates["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "ssn")
        .expect("ssn template")
        .clone();
    let enabled = api
        .post(
            "/api/v1/firewall_templates/ssn/enable",
            json!({"action": "mask"}),
        )
        .await
        .ok(200);
    assert_eq!(enabled["data"]["template"], "ssn");
    assert_eq!(enabled["data"]["name"], ssn["rule_name"]);
    assert_eq!(enabled["data"]["action"], "mask");
    api.post("/api/v1/firewall_templates/nope/enable", json!({}))
        .await
        .assert_error(404, "not_found_error");

    assert_eq!(
        api.delete(&path).await.ok(200)["data"],
        json!({"id": id.to_string(), "deleted": true})
    );
    api.get(&path).await.assert_error(404, "not_found_error");
    api.delete(&path).await.assert_error(404, "not_found_error");
    server.stop().await;
}

#[tokio::test]
async fn routing_configs_crud() {
    let server = TestServer::start().await;
    let api = Api::admin(&server);
    let (key_id, _) = create_key(&api, "routed").await;
    api.post(
        "/api/v1/providers",
        json!({"name": "oa", "kind": "openai", "base_url": "http://127.0.0.1:9/v1"}),
    )
    .await
    .ok(201);
    let path = format!("/api/v1/routing_configs/{key_id}");
    let config = json!({
        "strategy": "fallback",
        "backends": [{"model": "oa/gpt-4o", "priority": 0},
                     {"model": "gpt-4o-mini", "priority": 1}]
    });
    let saved = api.json("PUT", &path, config).await.ok(200)["data"].clone();
    assert_eq!(saved["key_id"], key_id);
    assert_eq!(saved["active"], true);
    assert_eq!(saved["strategy"], "fallback");
    assert_eq!(saved["backends"][1]["model"], "gpt-4o-mini");
    let rules = json!({
        "key_id": key_id, "active": false, "strategy": "rules",
        "backends": [{"model": "gpt-4o-mini"}],
        "rules": [{"name": "code", "match_json": {"task": "coding"},
                   "backends": [{"model": "oa/gpt-4o"}]}]
    });
    let replaced = api.json("PUT", &path, rules).await.ok(200)["data"].clone();
    assert_eq!(
        replaced["rules"][0]["match_json"],
        json!({"task": "coding"})
    );
    assert_eq!(replaced["active"], false);
    assert_eq!(api.get(&path).await.ok(200)["data"], replaced);
    let listed = api.get("/api/v1/routing_configs").await.ok(200);
    assert_eq!(ids(&listed, "key_id"), [key_id.as_str()]);
    assert_eq!(
        api.get("/api/v1/routing_configs?active=true").await.ok(200)["data"],
        json!([])
    );

    // Errors.
    let fallback = json!({"strategy": "fallback", "backends": [{"model": "gpt-4o"}]});
    api.json(
        "PUT",
        "/api/v1/routing_configs/key_missing",
        fallback.clone(),
    )
    .await
    .assert_error(404, "not_found_error");
    let mut other = fallback.clone();
    other["key_id"] = json!("key_other");
    api.json("PUT", &path, other)
        .await
        .assert_error(400, "invalid_request_error");
    let unroutable = json!({"strategy": "fallback", "backends": [{"model": "nowhere/x"}]});
    api.json("PUT", &path, unroutable)
        .await
        .assert_error(400, "invalid_request_error");
    api.json("PUT", &path, json!({"strategy": "chaos"}))
        .await
        .assert_error(400, "invalid_request_error");

    let deleted = api.delete(&path).await.ok(200);
    assert_eq!(deleted["data"]["deleted"], true);
    api.get(&path).await.assert_error(404, "not_found_error");
    api.delete(&path).await.assert_error(404, "not_found_error");
    server.stop().await;
}

#[tokio::test]
async fn logs_usage_and_preview() {
    let server = TestServer::start().await;
    let admin = Api::admin(&server);
    let (a, raw_a) = create_key(&admin, "a").await;
    let (b, _) = create_key(&admin, "b").await;
    ingest(
        &server,
        vec![
            record("req-1", &a, "openai", 200),
            record("req-2", &a, "claude", 500),
            record("req-3", &b, "openai", 200),
            record("req-4", &a, "openai", 201),
        ],
    )
    .await;

    let all = admin.get("/api/v1/logs").await.ok(200);
    assert_eq!(
        ids(&all, "request_id"),
        ["req-4", "req-3", "req-2", "req-1"]
    );
    assert_eq!(all["next_cursor"], Value::Null);
    let row = &all["data"][3];
    assert_eq!(row["cost_usd"], "0.00045");
    assert_eq!(row["key_id"], a);
    assert!(row["received_at_unix_ms"].as_i64().unwrap() > 0);
    let page = admin.get("/api/v1/logs?limit=2").await.ok(200);
    assert_eq!(ids(&page, "request_id"), ["req-4", "req-3"]);
    let cursor = page["next_cursor"].as_str().unwrap();
    let next = admin
        .get(&format!("/api/v1/logs?limit=2&cursor={cursor}"))
        .await
        .ok(200);
    assert_eq!(ids(&next, "request_id"), ["req-2", "req-1"]);
    for (query, want) in [
        (format!("key_id={b}"), vec!["req-3"]),
        ("status=500".to_string(), vec!["req-2"]),
        (
            "provider=openai".to_string(),
            vec!["req-4", "req-3", "req-1"],
        ),
        ("model=claude%2Fgpt-4o".to_string(), vec!["req-2"]),
        ("since=0&until=1".to_string(), vec![]),
        (
            format!("key_id={a}&provider=openai&limit=1&cursor=req-4"),
            vec!["req-1"],
        ),
    ] {
        let got = admin.get(&format!("/api/v1/logs?{query}")).await.ok(200);
        assert_eq!(ids(&got, "request_id"), want, "{query}");
    }

    // Usage: successful requests only, as seed 002 shows it.
    let usage = admin.get("/api/v1/usage?days=7").await.ok(200);
    assert_eq!(
        usage,
        json!({"range_days": 7, "total_requests": 3, "total_tokens_in": 300,
               "total_tokens_out": 60, "total_cost_usd": "0.00135"})
    );
    let only_b = admin
        .get(&format!("/api/v1/usage?key_id={b}"))
        .await
        .ok(200);
    assert_eq!(
        (
            only_b["range_days"].as_u64(),
            only_b["total_requests"].as_u64()
        ),
        (Some(30), Some(1))
    );

    // A gateway key sees only its own.
    let key = Api::with(&server, Some(&raw_a));
    let own = key.get("/api/v1/logs").await.ok(200);
    assert_eq!(ids(&own, "request_id"), ["req-4", "req-2", "req-1"]);
    let own_usage = key.get("/api/v1/usage?days=1").await.ok(200);
    assert_eq!(own_usage["total_requests"], 2);
    assert_eq!(own_usage["total_cost_usd"], "0.0009");

    // Preview: the engine's decision on the published snapshot.
    admin
        .post(
            "/api/v1/providers",
            json!({"name": "oa", "kind": "openai", "base_url": "http://127.0.0.1:9/v1"}),
        )
        .await
        .ok(201);
    let chat = json!({"model": "oa/gpt-4o", "messages": [{"role": "user", "content": "hi"}]});
    let mut tries = 0;
    let decided = loop {
        tries += 1;
        assert!(tries < 100, "the provider never reached the snapshot");
        let d = admin
            .post("/api/v1/preview", json!({"key_id": a, "body": chat}))
            .await
            .ok(200)["data"]
            .clone();
        if d["error"].is_null() {
            break d;
        }
        // The provider reaches the snapshot shortly after the write.
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(decided["attempts"][0]["provider"], "oa");
    assert_eq!(decided["attempts"][0]["model"], "gpt-4o");
    assert!(decided["cluster"].as_str().unwrap().starts_with("tr_"));
    let refused = admin
        .post(
            "/api/v1/preview",
            json!({"body": {"model": "nowhere/x", "messages": [{"role": "user", "content": "hi"}]}}),
        )
        .await
        .ok(200)["data"]
        .clone();
    assert_eq!(
        refused["error"]["error"]["type"], "not_found_error",
        "{refused}"
    );
    let raw_body = admin
        .post("/api/v1/preview", json!({"body": "{not json"}))
        .await
        .ok(200)["data"]
        .clone();
    assert!(raw_body["error"].is_object(), "{raw_body}");
    admin
        .post(
            "/api/v1/preview",
            json!({"client_api": "telepathy", "body": chat}),
        )
        .await
        .assert_error(400, "invalid_request_error");
    admin
        .post("/api/v1/preview", json!({"key_id": a}))
        .await
        .assert_error(400, "invalid_request_error");
    key.post("/api/v1/preview", json!({"body": chat}))
        .await
        .assert_error(403, "permission_error");
    server.stop().await;
}

/// Per-key totals, key updates, log filters and detail (bodies), usage breakdowns and the GenAI
/// metrics, from usage ingested as an edge sends it.
#[tokio::test]
async fn analytics_keys_logs_usage_and_metrics() {
    let server = TestServer::start().await;
    let admin = Api::admin(&server);
    let (a, raw_a) = create_key(&admin, "alpha").await;
    let (b, raw_b) = create_key(&admin, "beta").await;
    let with = |r: UsageRecord, metadata: &str| UsageRecord {
        metadata_json: metadata.into(),
        key_name: "alpha-then".into(),
        workspace_id: "default".into(),
        ..r
    };
    let bodies = UsageRecord {
        request_body: br#"{"model":"gpt-4o","messages":[]}"#.to_vec(),
        response_body: vec![0xde, 0xad, 0xbe, 0xef],
        bodies_truncated: true,
        idempotency_key: "idem-7".into(),
        ..with(
            record("r1", &a, "openai", 200),
            r#"{"user":"Alice","team":"ml"}"#,
        )
    };
    let replay = UsageRecord {
        replay_of: "r1".into(),
        idempotency_key: "idem-7".into(),
        ..with(record("r2", &a, "openai", 200), r#"{"user":"Alice"}"#)
    };
    let claude = UsageRecord {
        model: "claude-sonnet".into(),
        requested_model: "auto".into(),
        error_type: "rate_limit_error".into(),
        ..with(record("r3", &a, "claude", 429), r#"{"user":"bob"}"#)
    };
    ingest(
        &server,
        vec![
            bodies,
            replay,
            claude,
            record("r4", &b, "openai", 500),
            record("r5", &b, "claude", 200),
        ],
    )
    .await;

    // Keys carry their totals: every request counts, tokens and spend only successful
    // non-replayed ones.
    let keys = admin.get("/api/v1/keys").await.ok(200);
    let key_a = &keys["data"][0];
    assert_eq!(key_a["id"], a);
    assert_eq!(
        (
            &key_a["requests"],
            &key_a["failed_requests"],
            &key_a["input_tokens"],
            &key_a["output_tokens"],
            &key_a["total_tokens"],
            &key_a["spend_usd"],
            &key_a["store_bodies"],
        ),
        (
            &json!(3),
            &json!(1),
            &json!(100),
            &json!(20),
            &json!(120),
            &json!("0.00045"),
            &json!(false)
        )
    );
    assert!(key_a["last_used_at_unix_ms"].as_i64().unwrap() > 0);
    let key_b = admin.get(&format!("/api/v1/keys/{b}")).await.ok(200);
    assert_eq!(key_b["data"]["requests"], 2);
    assert_eq!(key_b["data"]["spend_usd"], "0.00045");
    let (unused, _) = create_key(&admin, "unused").await;
    let fresh = admin.get(&format!("/api/v1/keys/{unused}")).await.ok(200);
    assert_eq!(fresh["data"]["requests"], 0);
    assert_eq!(fresh["data"]["spend_usd"], "0");
    assert!(fresh["data"]["last_used_at_unix_ms"].is_null());

    // PATCH: only the fields given change.
    let updated = admin
        .json(
            "PATCH",
            &format!("/api/v1/keys/{a}"),
            json!({"store_bodies": true}),
        )
        .await
        .ok(200);
    assert_eq!(updated["data"]["store_bodies"], true);
    assert_eq!(updated["data"]["name"], "alpha");
    assert_eq!(updated["data"]["requests"], 3);
    let renamed = admin
        .json(
            "PATCH",
            &format!("/api/v1/keys/{a}"),
            json!({"name": "alpha-2"}),
        )
        .await
        .ok(200);
    assert_eq!(
        (&renamed["data"]["name"], &renamed["data"]["store_bodies"]),
        (&json!("alpha-2"), &json!(true))
    );
    let same = admin
        .json("PATCH", &format!("/api/v1/keys/{a}"), json!({}))
        .await
        .ok(200);
    assert_eq!(same["data"]["name"], "alpha-2");
    admin
        .json("PATCH", "/api/v1/keys/key_nope", json!({"name": "x"}))
        .await
        .assert_error(404, "not_found_error");
    for body in [
        json!({"name": ""}),
        json!({"name": "x".repeat(101)}),
        json!({"store_bodies": "yes"}),
        json!({"status": "revoked"}),
    ] {
        admin
            .json("PATCH", &format!("/api/v1/keys/{a}"), body)
            .await
            .assert_error(400, "invalid_request_error");
    }
    Api::with(&server, Some(&raw_a))
        .json(
            "PATCH",
            &format!("/api/v1/keys/{a}"),
            json!({"name": "mine"}),
        )
        .await
        .assert_error(403, "permission_error");

    // Log rows carry the new fields; the name is the one the edge recorded.
    let all = admin.get("/api/v1/logs").await.ok(200);
    assert_eq!(ids(&all, "request_id"), ["r5", "r4", "r3", "r2", "r1"]);
    let r1 = &all["data"][4];
    assert_eq!(r1["metadata"], json!({"user": "Alice", "team": "ml"}));
    assert_eq!(r1["key_name"], "alpha-then");
    assert_eq!(r1["workspace_id"], "default");
    assert_eq!(r1["idempotency_key"], "idem-7");
    assert_eq!(r1["replay_of"], Value::Null);
    assert_eq!(r1["has_bodies"], true);
    assert!(r1.get("request_body").is_none(), "lists carry no bodies");
    assert_eq!(all["data"][3]["replay_of"], "r1");
    assert_eq!(all["data"][3]["has_bodies"], false);
    let r5 = &all["data"][0];
    assert_eq!(r5["metadata"], Value::Null);
    assert_eq!(r5["key_name"], "beta", "rows without a name show the key's");

    // Filters, alone and with the cursor.
    for (query, want) in [
        ("status=4xx", vec!["r3"]),
        ("status=5XX", vec!["r4"]),
        ("status=2xx", vec!["r5", "r2", "r1"]),
        ("status=429", vec!["r3"]),
        ("metadata_contains=alice", vec!["r2", "r1"]),
        ("metadata_contains=%22team%22%3A%22ml", vec!["r1"]),
        ("metadata_contains=%25", vec![]),
        ("model=claude-sonnet", vec!["r3"]),
        ("model=auto", vec!["r3"]),
        ("provider=claude", vec!["r5", "r3"]),
        ("provider=claude&status=2xx", vec!["r5"]),
        ("status=2xx&limit=2", vec!["r5", "r2"]),
        ("status=2xx&limit=2&cursor=r2", vec!["r1"]),
        ("metadata_contains=user&cursor=r3", vec!["r2", "r1"]),
        ("since=0&until=1", vec![]),
    ] {
        let got = admin.get(&format!("/api/v1/logs?{query}")).await.ok(200);
        assert_eq!(ids(&got, "request_id"), want, "{query}");
    }
    let long = "x".repeat(257);
    admin
        .get(&format!("/api/v1/logs?metadata_contains={long}"))
        .await
        .assert_error(400, "invalid_request_error");

    // One row with its bodies: UTF-8 as text, anything else as base64.
    let detail = admin.get("/api/v1/logs/r1").await.ok(200)["data"].clone();
    assert_eq!(detail["request_id"], "r1");
    assert_eq!(
        detail["request_body"],
        r#"{"model":"gpt-4o","messages":[]}"#
    );
    assert_eq!(detail["request_body_base64"], false);
    assert_eq!(detail["response_body"], "3q2+7w==");
    assert_eq!(detail["response_body_base64"], true);
    assert_eq!(detail["bodies_truncated"], true);
    assert_eq!(detail["metadata"]["team"], "ml");
    let bare = admin.get("/api/v1/logs/r4").await.ok(200)["data"].clone();
    assert!(bare["request_body"].is_null() && bare["response_body"].is_null());
    admin
        .get("/api/v1/logs/req-nope")
        .await
        .assert_error(404, "not_found_error");
    // A gateway key reads its own rows only; another key's is indistinguishable from none.
    let key_a_api = Api::with(&server, Some(&raw_a));
    let key_b_api = Api::with(&server, Some(&raw_b));
    assert_eq!(key_a_api.get("/api/v1/logs/r1").await.status, 200);
    key_b_api
        .get("/api/v1/logs/r1")
        .await
        .assert_error(404, "not_found_error");
    assert_eq!(
        ids(
            &key_b_api.get("/api/v1/logs?status=2xx").await.ok(200),
            "request_id"
        ),
        ["r5"]
    );

    // Usage: seed 002's shape without group_by, a breakdown with it.
    let usage = admin.get("/api/v1/usage?days=7").await.ok(200);
    assert_eq!(
        usage,
        json!({"range_days": 7, "total_requests": 3, "total_tokens_in": 200,
               "total_tokens_out": 40, "total_cost_usd": "0.0009"})
    );
    let by_key = admin.get("/api/v1/usage?days=7&group_by=key").await.ok(200);
    assert_eq!(by_key["group_by"], "key");
    assert_eq!(
        (&by_key["requests"], &by_key["failed_requests"]),
        (&json!(5), &json!(2))
    );
    assert_eq!(by_key["total_requests"], 3);
    let rows = by_key["breakdown"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    let row_a = rows.iter().find(|r| r["key_id"] == a.as_str()).unwrap();
    assert_eq!(
        row_a,
        &json!({"key_id": a, "key_name": "alpha-2", "requests": 3, "failed_requests": 1,
                "input_tokens": 100, "output_tokens": 20, "total_tokens": 120,
                "cost_usd": "0.00045"})
    );
    let by_model = admin.get("/api/v1/usage?group_by=model").await.ok(200);
    assert_eq!(by_model["range_days"], 30);
    let models: Vec<(&str, u64)> = by_model["breakdown"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["model"].as_str().unwrap(),
                r["requests"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        models,
        [("gpt-4o", 4), ("claude-sonnet", 1)],
        "by spend, most first"
    );
    let by_provider = admin
        .get(&format!("/api/v1/usage?group_by=provider&key_id={b}"))
        .await
        .ok(200);
    let providers: Vec<&str> = by_provider["breakdown"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["provider"].as_str().unwrap())
        .collect();
    assert_eq!(providers, ["claude", "openai"]);
    let by_day = admin.get("/api/v1/usage?days=3&group_by=day").await.ok(200);
    let days = by_day["breakdown"].as_array().unwrap();
    assert_eq!(days.len(), 3, "every day of the range");
    assert_eq!(days[2]["requests"], 5, "today");
    assert_eq!(days[0]["requests"], 0);
    assert_eq!(by_day["since_day"], days[0]["day"]);
    assert!(days[0]["day"].as_str().unwrap().len() == 10);
    admin
        .get("/api/v1/usage?key_id=key_nope")
        .await
        .assert_error(404, "not_found_error");
    admin
        .get("/api/v1/usage?group_by=week")
        .await
        .assert_error(400, "invalid_request_error");
    let own = key_b_api.get("/api/v1/usage?group_by=key").await.ok(200);
    let own_rows = own["breakdown"].as_array().unwrap();
    assert_eq!(own_rows.len(), 1);
    assert_eq!(own_rows[0]["key_id"], b);

    // The GenAI metrics saw every new record.
    let (status, metrics) = server.http("GET", "/metrics", "").await;
    assert_eq!(status, 200);
    for want in [
        "gen_ai_client_token_usage_count{gen_ai_operation_name=\"chat\",\
         gen_ai_provider_name=\"openai\",gen_ai_request_model=\"openai/gpt-4o\",\
         gen_ai_response_model=\"gpt-4o\",gen_ai_token_type=\"input\"} 1\n",
        "gen_ai_client_operation_duration_seconds_count{gen_ai_operation_name=\"chat\",\
         gen_ai_provider_name=\"claude\",gen_ai_request_model=\"auto\",\
         gen_ai_response_model=\"claude-sonnet\",error_type=\"rate_limit_error\"} 1\n",
        "tokenrouter_usage_records_ingested_total 5\n",
    ] {
        assert!(metrics.contains(want), "{want} not in\n{metrics}");
    }
    server.stop().await;
}

#[tokio::test]
async fn openapi_document_describes_every_route() {
    let server = TestServer::start().await;
    let doc = Api::with(&server, None)
        .get("/api/v1/openapi.json")
        .await
        .ok(200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    assert_eq!(doc["security"], json!([{"bearer": []}]));
    let paths = doc["paths"].as_object().unwrap();
    let mut operations = std::collections::BTreeSet::new();
    for (path, item) in paths {
        for (method, op) in item.as_object().unwrap() {
            operations.insert(format!("{} {path}", method.to_uppercase()));
            // Only the payment webhook is open (its signature authenticates it).
            let open = op["security"] == json!([]);
            assert_eq!(open, path == "/api/v1/webhooks/stripe", "{method} {path}");
            let codes: &[&str] = if open {
                &["400", "500"]
            } else {
                &["400", "401", "403", "500"]
            };
            for code in codes {
                assert_eq!(
                    op["responses"][code]["content"]["application/json"]["schema"]["$ref"],
                    "#/components/schemas/ErrorBody",
                    "{method} {path} {code}"
                );
            }
            assert!(op["operationId"].is_string(), "{method} {path}");
        }
    }
    for want in [
        "GET /api/v1/keys",
        "POST /api/v1/keys",
        "GET /api/v1/keys/{id}",
        "DELETE /api/v1/keys/{id}",
        "POST /api/v1/keys/{id}/revoke",
        "GET /api/v1/providers",
        "POST /api/v1/providers",
        "PUT /api/v1/providers/{name}",
        "DELETE /api/v1/providers/{name}",
        "GET /api/v1/models",
        "POST /api/v1/models",
        "PATCH /api/v1/models/{provider_kind}/{id}",
        "GET /api/v1/routing_rules",
        "POST /api/v1/routing_rules",
        "GET /api/v1/routing_rules/{id}",
        "PATCH /api/v1/routing_rules/{id}",
        "DELETE /api/v1/routing_rules/{id}",
        "GET /api/v1/routing_configs",
        "PUT /api/v1/routing_configs/{key_id}",
        "GET /api/v1/routing_configs/{key_id}",
        "DELETE /api/v1/routing_configs/{key_id}",
        "GET /api/v1/firewall_rules",
        "POST /api/v1/firewall_rules",
        "GET /api/v1/firewall_rules/{id}",
        "PATCH /api/v1/firewall_rules/{id}",
        "DELETE /api/v1/firewall_rules/{id}",
        "PATCH /api/v1/keys/{id}",
        "GET /api/v1/logs",
        "GET /api/v1/logs/{request_id}",
        "GET /api/v1/usage",
        "POST /api/v1/preview",
        "GET /api/v1/workspaces",
        "POST /api/v1/workspaces",
        "GET /api/v1/workspaces/{id}",
        "PATCH /api/v1/workspaces/{id}",
        "GET /api/v1/balance",
        "POST /api/v1/topup",
        "POST /api/v1/credits",
        "POST /api/v1/webhooks/stripe",
    ] {
        assert!(operations.contains(want), "{want} not in {operations:?}");
    }
    let ids: Vec<&str> = paths
        .values()
        .flat_map(|item| item.as_object().unwrap().values())
        .filter_map(|op| op["operationId"].as_str())
        .collect();
    let unique: std::collections::BTreeSet<&str> = ids.iter().copied().collect();
    assert_eq!(ids.len(), unique.len(), "operation ids are unique: {ids:?}");
    let same = Api::with(&server, None).get("/openapi.json").await.ok(200);
    assert_eq!(same, doc);
    server.stop().await;
}

#[tokio::test]
async fn workspaces_balances_credits_and_topups() {
    let server = TestServer::start().await;
    let api = Api::admin(&server);

    // Workspaces.
    let ws = api
        .post(
            "/api/v1/workspaces",
            json!({"id": "team-a", "balance_usd": "20", "limits": {"rps": 5}}),
        )
        .await
        .ok(201)["data"]
        .clone();
    assert_eq!(ws["id"], "team-a");
    assert_eq!(ws["balance_usd"], "20");
    assert_eq!(ws["active_keys"], 0);
    assert_eq!(
        ws["limits"],
        json!({"rps": 5, "hour_total_tokens": null, "hour_input_tokens": null,
               "hour_output_tokens": null})
    );
    api.post("/api/v1/workspaces", json!({"id": "team-a"}))
        .await
        .assert_error(409, "conflict_error");
    for body in [
        json!({"id": "Bad WS"}),
        json!({"id": " team-b"}),
        json!({"id": "team-b", "balance_usd": "-1"}),
        json!({"id": "team-b", "balance_usd": 5}),
        json!({"id": "team-b", "limits": {"rps": -1}}),
        json!({"id": "team-b", "limits": {"burst": 1}}),
        json!({"id": "team-b", "limits": [null, null]}),
        json!({"id": "team-b", "extra": true}),
    ] {
        api.post("/api/v1/workspaces", body.clone())
            .await
            .assert_error(400, "invalid_request_error");
    }
    let plain = api
        .post("/api/v1/workspaces", json!({"id": "team-b"}))
        .await
        .ok(201);
    assert_eq!(plain["data"]["balance_usd"], Value::Null);
    let listed = api.get("/api/v1/workspaces").await.ok(200);
    assert!(
        ids(&listed, "id").contains(&"team-a".to_string()),
        "{listed}"
    );
    let first = api.get("/api/v1/workspaces?limit=1").await.ok(200);
    assert_eq!(first["data"].as_array().unwrap().len(), 1);
    assert!(first["next_cursor"].is_string());
    api.get("/api/v1/workspaces/nope")
        .await
        .assert_error(404, "not_found_error");
    let patched = api
        .json(
            "PATCH",
            "/api/v1/workspaces/team-a",
            json!({"limits": {"hour_total_tokens": 1000}}),
        )
        .await
        .ok(200)["data"]
        .clone();
    assert_eq!(patched["limits"]["rps"], 5, "kept");
    assert_eq!(patched["limits"]["hour_total_tokens"], 1000);
    api.json(
        "PATCH",
        "/api/v1/workspaces/nope",
        json!({"limits": {"rps": 1}}),
    )
    .await
    .assert_error(404, "not_found_error");

    // Keys with a balance and limits.
    let metered = api
        .post(
            "/api/v1/keys",
            json!({"name": "metered", "workspace_id": "team-a", "balance_usd": "5",
                   "limits": {"rps": 2}}),
        )
        .await
        .ok(201)["data"]
        .clone();
    assert_eq!(metered["balance_usd"], "5");
    assert_eq!(metered["limits"]["rps"], 2);
    assert_eq!(
        metered["effective_limits"],
        json!({"rps": 2, "hour_total_tokens": 1000, "hour_input_tokens": 0,
               "hour_output_tokens": 0})
    );
    let key_id = metered["id"].as_str().unwrap().to_string();
    let raw = metered["raw"].as_str().unwrap().to_string();
    let (free_id, free_raw) = create_key(&api, "free").await;
    let free = api.get(&format!("/api/v1/keys/{free_id}")).await.ok(200);
    assert_eq!(free["data"]["balance_usd"], Value::Null);
    assert_eq!(free["data"]["limits"]["rps"], Value::Null);
    for bad in [json!("abc"), json!("-1"), json!("1.0000001"), json!(5)] {
        api.post("/api/v1/keys", json!({"name": "x", "balance_usd": bad}))
            .await
            .assert_error(400, "invalid_request_error");
    }
    let relimited = api
        .json(
            "PATCH",
            &format!("/api/v1/keys/{key_id}"),
            json!({"limits": {"hour_output_tokens": 10}}),
        )
        .await
        .ok(200)["data"]
        .clone();
    assert_eq!(
        (
            &relimited["limits"]["rps"],
            &relimited["limits"]["hour_output_tokens"]
        ),
        (&json!(2), &json!(10))
    );
    assert_eq!(relimited["effective_limits"]["hour_output_tokens"], 10);
    let team = api.get("/api/v1/workspaces/team-a").await.ok(200);
    assert_eq!(team["data"]["active_keys"], 1);

    // Balances: seed 002's fields first.
    let b = api
        .get(&format!("/api/v1/balance?key_id={key_id}"))
        .await
        .ok(200);
    assert_eq!(
        b,
        json!({"balance_usd": "5", "currency": "USD", "owner": "key", "id": key_id,
               "metered": true, "reserved_usd": "0", "available_usd": "5"})
    );
    let w = api.get("/api/v1/balance?workspace_id=team-a").await.ok(200);
    assert_eq!(
        (&w["owner"], &w["balance_usd"]),
        (&json!("workspace"), &json!("20"))
    );
    let unmetered = api
        .get(&format!("/api/v1/balance?key_id={free_id}"))
        .await
        .ok(200);
    assert_eq!(
        (&unmetered["metered"], &unmetered["balance_usd"]),
        (&json!(false), &json!("0"))
    );
    let total = api.get("/api/v1/balance").await.ok(200);
    assert_eq!(
        (&total["owner"], &total["id"], &total["balance_usd"]),
        (&json!("total"), &Value::Null, &json!("5"))
    );
    api.get(&format!(
        "/api/v1/balance?key_id={key_id}&workspace_id=team-a"
    ))
    .await
    .assert_error(400, "invalid_request_error");
    api.get("/api/v1/balance?key_id=key_nope")
        .await
        .assert_error(404, "not_found_error");
    api.get("/api/v1/balance?workspace_id=nope")
        .await
        .assert_error(404, "not_found_error");

    // Credits (admin).
    let credited = api
        .post(
            "/api/v1/credits",
            json!({"key_id": key_id, "amount_usd": "2.5", "note": "trial"}),
        )
        .await
        .ok(200);
    assert_eq!(
        (&credited["balance_usd"], &credited["owner"]),
        (&json!("7.5"), &json!("key"))
    );
    let free_credit = api
        .post(
            "/api/v1/credits",
            json!({"key_id": free_id, "amount_usd": "1"}),
        )
        .await
        .ok(200);
    assert_eq!(
        (&free_credit["metered"], &free_credit["balance_usd"]),
        (&json!(true), &json!("1"))
    );
    let ws_credit = api
        .post(
            "/api/v1/credits",
            json!({"workspace_id": "team-b", "amount_usd": "3"}),
        )
        .await
        .ok(200);
    assert_eq!(ws_credit["balance_usd"], "3");
    assert_eq!(
        api.get("/api/v1/workspaces/team-b").await.ok(200)["data"]["balance_usd"],
        "3"
    );
    for body in [
        json!({"key_id": key_id, "workspace_id": "team-a", "amount_usd": "1"}),
        json!({"amount_usd": "1"}),
        json!({"key_id": key_id, "amount_usd": "0"}),
        json!({"key_id": key_id, "amount_usd": "-5"}),
        json!({"key_id": key_id, "amount_usd": "1.0000001"}),
        json!({"key_id": key_id, "amount_usd": 1}),
        json!({"key_id": key_id, "amount_usd": "1", "note": "x".repeat(1001)}),
        json!({"key_id": key_id}),
    ] {
        api.post("/api/v1/credits", body.clone())
            .await
            .assert_error(400, "invalid_request_error");
    }
    api.post(
        "/api/v1/credits",
        json!({"key_id": "key_nope", "amount_usd": "1"}),
    )
    .await
    .assert_error(404, "not_found_error");
    api.post(
        "/api/v1/credits",
        json!({"workspace_id": "nope", "amount_usd": "1"}),
    )
    .await
    .assert_error(404, "not_found_error");

    // A gateway key: its own balance only; no credits, no workspaces.
    let key = Api::with(&server, Some(&raw));
    let own = key.get("/api/v1/balance").await.ok(200);
    assert_eq!(
        (&own["id"], &own["balance_usd"]),
        (&json!(key_id), &json!("7.5"))
    );
    assert_eq!(
        key.get(&format!("/api/v1/balance?key_id={key_id}"))
            .await
            .ok(200),
        own
    );
    key.get(&format!("/api/v1/balance?key_id={free_id}"))
        .await
        .assert_error(403, "permission_error");
    key.get("/api/v1/balance?workspace_id=team-a")
        .await
        .assert_error(403, "permission_error");
    key.post(
        "/api/v1/credits",
        json!({"key_id": key_id, "amount_usd": "100"}),
    )
    .await
    .assert_error(403, "permission_error");
    key.get("/api/v1/workspaces")
        .await
        .assert_error(403, "permission_error");
    Api::with(&server, None)
        .get("/api/v1/balance")
        .await
        .assert_error(401, "authentication_error");

    // Top-ups: no payment backend here → 503 in the envelope; bad requests are 400/403 first.
    let unavailable = api
        .post(
            "/api/v1/topup",
            json!({"amount_usd": "5", "key_id": key_id}),
        )
        .await;
    unavailable.assert_error(503, "service_unavailable");
    assert!(
        unavailable.text.contains("TOKENROUTER_PAYMENTS"),
        "{}",
        unavailable.text
    );
    key.post("/api/v1/topup", json!({"amount_usd": "5"}))
        .await
        .assert_error(503, "service_unavailable");
    api.post("/api/v1/topup", json!({"amount_usd": "5"}))
        .await
        .assert_error(400, "invalid_request_error");
    for amount in [json!("abc"), json!("0"), json!(5), json!("-1")] {
        api.post(
            "/api/v1/topup",
            json!({"amount_usd": amount, "key_id": key_id}),
        )
        .await
        .assert_error(400, "invalid_request_error");
    }
    key.post(
        "/api/v1/topup",
        json!({"amount_usd": "5", "key_id": free_id}),
    )
    .await
    .assert_error(403, "permission_error");
    Api::with(&server, Some(&free_raw))
        .post("/api/v1/topup", json!({"amount_usd": "5"}))
        .await
        .assert_error(503, "service_unavailable");

    // The webhook needs no bearer token. Without a Stripe-Signature header it is a 400;
    // signed, but with no payment backend configured, a 404 whatever the body.
    let anon = Api::with(&server, None);
    for (content_type, body) in [
        (Some("application/json"), &b"{}"[..]),
        (None, b"garbage"),
        (Some("application/json"), b""),
    ] {
        anon.send("POST", "/api/v1/webhooks/stripe", content_type, body)
            .await
            .assert_error(400, "invalid_request_error");
    }
    let signed = |body: &'static [u8]| {
        let server = &server;
        async move {
            let stream = TcpStream::connect(server.rest).await.unwrap();
            let (mut rd, mut wr) = stream.into_split();
            let head = format!(
                "POST /api/v1/webhooks/stripe HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\
                 Stripe-Signature: t=1,v1=00\r\nContent-Type: application/json\r\n\
                 Content-Length: {}\r\n\r\n",
                body.len()
            );
            wr.write_all(head.as_bytes()).await.unwrap();
            wr.write_all(body).await.unwrap();
            let mut raw = Vec::new();
            rd.read_to_end(&mut raw).await.unwrap();
            parse(&raw)
        }
    };
    for body in [&b"{}"[..], b"garbage", b""] {
        signed(body).await.assert_error(404, "not_found_error");
    }
    server.stop().await;
}

/// `/firewall_rules` with `workspace_id` (an extra field of seed 003's shape): stored, listed,
/// filtered, patched, checked against the workspaces and keys; templates take it too; the
/// OpenAPI schemas describe it.
#[tokio::test]
async fn firewall_rules_scoped_to_a_workspace() {
    let server = TestServer::start().await;
    let api = Api::admin(&server);
    let key_in = |name: &'static str, ws: &'static str| {
        let api = &api;
        async move {
            api.post("/api/v1/keys", json!({"name": name, "workspace_id": ws}))
                .await
                .ok(201)["data"]["id"]
                .as_str()
                .unwrap()
                .to_string()
        }
    };
    let a = key_in("a", "team-a").await;
    let b = key_in("b", "team-b").await;
    let rule = |name: &str, extra: Value| {
        let mut r = json!({"name": name, "priority": 10, "is_enabled": true, "scope": "prompt",
                           "type": "substring", "pattern": "project falcon", "action": "block"});
        for (k, v) in extra.as_object().unwrap() {
            r[k] = v.clone();
        }
        r
    };

    for (bad, want) in [
        (
            json!({"workspace_id": "team-z"}),
            "workspace team-z does not exist",
        ),
        (json!({"workspace_id": "Team Z"}), "is not valid"),
        (
            json!({"workspace_id": "team-a", "key_id": b}),
            "is in workspace team-b, not team-a",
        ),
    ] {
        let reply = api.post("/api/v1/firewall_rules", rule("r", bad)).await;
        reply.assert_error(400, "invalid_request_error");
        let message = reply.json["error"]["message"].as_str().unwrap().to_string();
        assert!(message.contains(want), "{want}: {message}");
    }

    let team = api
        .post(
            "/api/v1/firewall_rules",
            rule("team-a only", json!({"workspace_id": "team-a"})),
        )
        .await
        .ok(201)["data"]
        .clone();
    assert_eq!(team["workspace_id"], "team-a");
    assert_eq!(team["key_id"], "");
    let both = api
        .post(
            "/api/v1/firewall_rules",
            rule(
                "a in team-a",
                json!({"workspace_id": "team-a", "key_id": a}),
            ),
        )
        .await
        .ok(201)["data"]
        .clone();
    assert_eq!(
        (&both["workspace_id"], &both["key_id"]),
        (&json!("team-a"), &json!(a))
    );
    let global = api
        .post("/api/v1/firewall_rules", rule("everyone", json!({})))
        .await
        .ok(201)["data"]
        .clone();
    assert_eq!(global["workspace_id"], "", "omitted = every workspace");

    let of = |query: &str| {
        let api = &api;
        let path = format!("/api/v1/firewall_rules{query}");
        async move { ids(&api.get(&path).await.ok(200), "name") }
    };
    assert_eq!(of("").await, ["team-a only", "a in team-a", "everyone"]);
    assert_eq!(
        of("?workspace_id=team-a").await,
        ["team-a only", "a in team-a"]
    );
    assert_eq!(of("?workspace_id=").await, ["everyone"]);

    let path = format!("/api/v1/firewall_rules/{}", team["id"]);
    let moved = api
        .json("PATCH", &path, json!({"workspace_id": "team-b"}))
        .await
        .ok(200);
    assert_eq!(moved["data"]["workspace_id"], "team-b");
    let kept = api
        .json("PATCH", &path, json!({"action": "warn"}))
        .await
        .ok(200);
    assert_eq!(kept["data"]["workspace_id"], "team-b", "absent = unchanged");
    api.json("PATCH", &path, json!({"workspace_id": "team-z"}))
        .await
        .assert_error(400, "invalid_request_error");
    let both_path = format!("/api/v1/firewall_rules/{}", both["id"]);
    api.json("PATCH", &both_path, json!({"workspace_id": "team-b"}))
        .await
        .assert_error(400, "invalid_request_error");
    let cleared = api
        .json("PATCH", &path, json!({"workspace_id": ""}))
        .await
        .ok(200);
    assert_eq!(cleared["data"]["workspace_id"], "");

    let email = api
        .post(
            "/api/v1/firewall_templates/email/enable",
            json!({"workspace_id": "team-b"}),
        )
        .await
        .ok(200);
    assert_eq!(email["data"]["workspace_id"], "team-b");
    api.post(
        "/api/v1/firewall_templates/ssn/enable",
        json!({"workspace_id": "team-z"}),
    )
    .await
    .assert_error(400, "invalid_request_error");

    let doc = Api::with(&server, None)
        .get("/api/v1/openapi.json")
        .await
        .ok(200);
    let schemas = &doc["components"]["schemas"];
    for schema in [
        "FirewallRule",
        "CreateFirewallRule",
        "UpdateFirewallRule",
        "EnableTemplate",
    ] {
        assert!(
            schemas[schema]["properties"]["workspace_id"].is_object(),
            "{schema}: {}",
            schemas[schema]
        );
    }
    server.stop().await;
}
