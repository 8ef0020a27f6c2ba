//! Black-box: `server::run` on port-0 listeners, driven with the generated tonic clients.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{TestServer, TOKEN};
use tokenrouter_proto::admin::v1 as admin;
use tokenrouter_proto::admin::v1::admin_client::AdminClient;
use tokenrouter_proto::config::v1::Snapshot;
use tokenrouter_proto::sync::v1::control_message::Msg as Down;
use tokenrouter_proto::sync::v1::edge_message::Msg as Up;
use tokenrouter_proto::sync::v1::filter_sync_client::FilterSyncClient;
use tokenrouter_proto::sync::v1::{
    Attempt, ControlMessage, EdgeMessage, Hello, UsageBatch, UsageRecord,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Request, Status, Streaming};

fn bearer(token: &'static str) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone {
    move |mut r: Request<()>| {
        r.metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        Ok(r)
    }
}

async fn next(down: &mut Streaming<ControlMessage>) -> Down {
    tokio::time::timeout(Duration::from_secs(5), down.message())
        .await
        .expect("no message within 5 s")
        .unwrap()
        .expect("stream ended")
        .msg
        .expect("empty message")
}

/// Skips snapshots until one satisfies `want`. A key delta counts as a snapshot holding only
/// the delta's keys (what the callers look for in one is a key they changed).
async fn snapshot_where(
    down: &mut Streaming<ControlMessage>,
    want: impl Fn(&Snapshot) -> bool,
) -> Snapshot {
    loop {
        match next(down).await {
            Down::Snapshot(s) if want(&s) => return s,
            Down::Keys(d) => {
                let keys_only = Snapshot {
                    version: d.version,
                    keys: d.keys,
                    ..Snapshot::default()
                };
                if want(&keys_only) {
                    return keys_only;
                }
            }
            Down::Snapshot(_) | Down::Scores(_) => {}
            Down::Ack(a) => panic!("unexpected ack {a:?}"),
        }
    }
}

/// Skips snapshots until an ack arrives.
async fn ack(down: &mut Streaming<ControlMessage>) -> u64 {
    loop {
        if let Down::Ack(a) = next(down).await {
            return a.batch_id;
        }
    }
}

fn record(id: &str, key: &str) -> UsageRecord {
    UsageRecord {
        request_id: id.into(),
        key_id: key.into(),
        provider: "demo".into(),
        model: "echo".into(),
        status: 200,
        input_tokens: 3,
        output_tokens: 10,
        cost_picos: 1_500_000,
        node_id: "node-a".into(),
        ..UsageRecord::default()
    }
}

#[tokio::test]
async fn admin_and_filter_sync_end_to_end() {
    let server = TestServer::start().await;
    let channel = Channel::from_shared(server.url())
        .unwrap()
        .connect()
        .await
        .unwrap();

    // Wrong or missing token: UNAUTHENTICATED everywhere.
    let mut intruder = AdminClient::with_interceptor(channel.clone(), bearer("wrong"));
    let err = intruder
        .list_keys(admin::ListKeysRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert_eq!(err.message(), "admin token required");
    let err = AdminClient::new(channel.clone())
        .list_models(admin::ListModelsRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let (_tx, rx) = mpsc::channel::<EdgeMessage>(1);
    let err = FilterSyncClient::with_interceptor(channel.clone(), bearer("wrong"))
        .sync(ReceiverStream::new(rx))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);

    // Connect the edge: the current snapshot comes first.
    let mut adm = AdminClient::with_interceptor(channel.clone(), bearer(TOKEN));
    let (up, rx) = mpsc::channel::<EdgeMessage>(8);
    up.send(EdgeMessage {
        msg: Some(Up::Hello(Hello {
            node_id: "node-a".into(),
            have_version: 0,
            max_schema: 1,
        })),
    })
    .await
    .unwrap();
    let mut down = FilterSyncClient::with_interceptor(channel.clone(), bearer(TOKEN))
        .sync(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let Down::Snapshot(first) = next(&mut down).await else {
        panic!("first message is not a snapshot")
    };
    assert!(first.version >= 1);
    assert!(!first.models.is_empty(), "catalogue seeded");

    // A new key reaches the open stream.
    let created = adm
        .create_key(admin::CreateKeyRequest {
            name: "ci".into(),
            workspace_id: String::new(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let key = created.key.unwrap();
    assert!(created.raw.starts_with("sk-tr-"));
    let snap = snapshot_where(&mut down, |s| s.keys.iter().any(|k| k.id == key.id)).await;
    assert!(snap.version > first.version);
    let pushed = snap.keys.iter().find(|k| k.id == key.id).unwrap();
    assert_eq!(
        pushed.sha256,
        tokenrouter_engine::keys::hash_key(&created.raw).to_vec()
    );
    assert!(!pushed.revoked);

    // Validation errors map to INVALID_ARGUMENT, duplicates to ALREADY_EXISTS, unknown to NOT_FOUND.
    let bad_kind = adm
        .add_provider(admin::AddProviderRequest {
            name: "x".into(),
            kind: "nope".into(),
            base_url: "http://127.0.0.1:1".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad_kind.code(), Code::InvalidArgument);
    assert!(bad_kind.message().contains("openai-compatible"));
    let provider = admin::AddProviderRequest {
        name: "demo".into(),
        kind: "openai-compatible".into(),
        base_url: format!("http://{}/demo/v1", server.rest),
        api_key: "sk-upstream".into(),
        replace: false,
        ..Default::default()
    };
    let info = adm
        .add_provider(provider.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.cluster, "tr_provider_demo");
    assert!(info.has_credential);
    let snap = snapshot_where(&mut down, |s| !s.providers.is_empty()).await;
    assert_eq!(snap.providers[0].credential, "sk-upstream");
    assert_eq!(
        adm.add_provider(provider).await.unwrap_err().code(),
        Code::AlreadyExists
    );
    let missing = adm
        .revoke_key(admin::RevokeKeyRequest {
            id: "key_missing".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);

    // Usage: stored, acked with the same batch id, listed; a resend does not duplicate.
    let batch = EdgeMessage {
        msg: Some(Up::Usage(UsageBatch {
            batch_id: 41,
            records: vec![record("req-1", &key.id), record("req-2", &key.id)],
        })),
    };
    up.send(batch.clone()).await.unwrap();
    assert_eq!(ack(&mut down).await, 41);
    let logs = adm
        .list_logs(admin::ListLogsRequest {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .logs;
    let ids: Vec<_> = logs.iter().map(|l| l.request_id.as_str()).collect();
    assert_eq!(ids, ["req-2", "req-1"]);
    assert_eq!(logs[0].cost_usd, "0.0000015");
    assert_eq!(logs[0].node_id, "node-a");
    up.send(batch).await.unwrap();
    assert_eq!(ack(&mut down).await, 41);
    let logs = adm
        .list_logs(admin::ListLogsRequest {
            limit: 10,
            key_id: key.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .logs;
    assert_eq!(logs.len(), 2, "a resent batch is stored once");

    // Revocation is pushed with revoked = true.
    let revoked = adm
        .revoke_key(admin::RevokeKeyRequest { id: key.id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(revoked.status, "revoked");
    let revoked_version = snapshot_where(&mut down, |s| {
        s.keys.iter().any(|k| k.id == key.id && k.revoked)
    })
    .await
    .version;

    // An edge connecting after a key-only version gets it whole: one snapshot at that version,
    // with every key as it now is.
    let (_late_up, mut late) = edge(&channel).await;
    let Down::Snapshot(whole) = next(&mut late).await else {
        panic!("first message is not a snapshot")
    };
    assert_eq!(whole.version, revoked_version);
    assert!(!whole.providers.is_empty());
    assert!(
        whole.keys.iter().any(|k| k.id == key.id && k.revoked),
        "{:?}",
        whole.keys
    );

    // REST: health and metrics.
    let (status, body) = server.http("GET", "/healthz", "").await;
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ok"}"#));
    let (status, metrics) = server.http("GET", "/metrics", "").await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains("tokenrouter_usage_records_ingested_total 2\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tokenrouter_sync_streams_open 2\n"),
        "both edges: {metrics}"
    );

    // Shutdown ends the open stream and the server returns promptly.
    let ended = tokio::spawn(async move { while let Ok(Some(_)) = down.message().await {} });
    server.stop().await;
    tokio::time::timeout(Duration::from_secs(5), ended)
        .await
        .unwrap()
        .unwrap();
    drop(up);
}

fn attempt(provider: &str, model: &str, status: u32, latency_ms: u64) -> Attempt {
    Attempt {
        provider: provider.into(),
        model: model.into(),
        status,
        latency_ms,
        error: if status == 200 {
            String::new()
        } else {
            format!("http_{status}")
        },
    }
}

/// Usage with failed attempts changes the live scores, which reach the connected edge: after
/// the first snapshot it gets the current scores, then every change.
#[tokio::test]
async fn scores_from_ingested_usage_reach_the_edge() {
    let server = TestServer::start().await;
    let channel = Channel::from_shared(server.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let (up, rx) = mpsc::channel::<EdgeMessage>(8);
    let mut down = FilterSyncClient::with_interceptor(channel, bearer(TOKEN))
        .sync(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let Down::Snapshot(_) = next(&mut down).await else {
        panic!("first message is not a snapshot")
    };
    let Down::Scores(initial) = next(&mut down).await else {
        panic!("the scores do not follow the first snapshot")
    };
    assert!(initial.scores.is_empty(), "{initial:?}");
    assert!(initial.version > 0);

    // One request failed over from openai (503) to demo; another got a 429 with Retry-After.
    let failover = UsageRecord {
        latency_ms: 160,
        attempts: vec![
            attempt("openai", "gpt-4o", 503, 40),
            attempt("demo", "echo", 200, 120),
        ],
        ..record("req-1", "key_a")
    };
    let limited = UsageRecord {
        provider: "openai".into(),
        model: "gpt-4o".into(),
        status: 429,
        error_type: "rate_limit_error".into(),
        retry_after_s: 20,
        attempts: vec![attempt("openai", "gpt-4o", 429, 10)],
        ..record("req-2", "key_a")
    };
    let sent_at = tokenrouter_control_plane::service::now_ms();
    up.send(EdgeMessage {
        msg: Some(Up::Usage(UsageBatch {
            batch_id: 1,
            records: vec![failover, limited],
        })),
    })
    .await
    .unwrap();
    let scores = loop {
        match next(&mut down).await {
            Down::Scores(s) if !s.scores.is_empty() => break s,
            Down::Scores(_) | Down::Ack(_) => {}
            Down::Snapshot(s) => panic!("unexpected snapshot {}", s.version),
            Down::Keys(d) => panic!("unexpected key delta {}", d.version),
        }
    };
    assert!(scores.version > initial.version);
    let get = |provider: &str, model: &str| {
        scores
            .scores
            .iter()
            .find(|s| s.provider == provider && s.model == model)
            .unwrap_or_else(|| panic!("no score for {provider}/{model}: {scores:?}"))
    };
    for model in ["", "gpt-4o"] {
        let openai = get("openai", model);
        assert_eq!(
            (
                openai.samples,
                openai.error_rate_permille,
                openai.latency_p50_ms
            ),
            (2, 1000, 0)
        );
        assert!(
            openai.cooldown_until_unix_ms >= sent_at + 20_000
                && openai.cooldown_until_unix_ms <= sent_at + 25_000,
            "{openai:?}"
        );
    }
    let demo = get("demo", "echo");
    assert_eq!(
        (demo.samples, demo.error_rate_permille, demo.latency_p50_ms),
        (1, 0, 120)
    );
    assert_eq!(demo.cooldown_until_unix_ms, 0);

    drop(down);
    drop(up);
    server.stop().await;
}

#[tokio::test]
async fn demo_provider_speaks_openai() {
    let server = TestServer::start().await;
    let body = r#"{"model":"echo","messages":[{"role":"user","content":"ping pong"}]}"#;
    let (status, reply) = server.http("POST", "/demo/v1/chat/completions", body).await;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&reply).unwrap();
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "Hello from the tokenrouter demo provider. You said: ping pong"
    );
    assert_eq!(v["usage"]["prompt_tokens"], 2);

    let stream = r#"{"model":"echo","stream":true,"stream_options":{"include_usage":true},
        "messages":[{"role":"user","content":"hi"}]}"#;
    let (status, sse) = server
        .http("POST", "/demo/v1/chat/completions", stream)
        .await;
    assert_eq!(status, 200);
    assert!(sse.starts_with("data: {"), "{sse}");
    assert!(sse.ends_with("data: [DONE]\n\n"));
    assert!(sse.contains("\"usage\":{"));

    let (status, _) = server.http("POST", "/demo/v1/chat/completions", "{}").await;
    assert_eq!(status, 400);
    let (status, models) = server.http("GET", "/demo/v1/models", "").await;
    assert_eq!(status, 200);
    assert!(models.contains("\"echo\""));
    server.stop().await;
}

#[tokio::test]
async fn reflection_lists_the_services() {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;

    let server = TestServer::start().await;
    let channel = Channel::from_shared(server.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) =
        responses.message().await.unwrap().unwrap().message_response
    else {
        panic!("not a service list")
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    for want in [
        "tokenrouter.admin.v1.Admin",
        "tokenrouter.sync.v1.FilterSync",
    ] {
        assert!(names.contains(&want), "{names:?}");
    }
    server.stop().await;
}

/// Opens a FilterSync stream as an edge would; the current snapshot comes first.
async fn edge(channel: &Channel) -> (mpsc::Sender<EdgeMessage>, Streaming<ControlMessage>) {
    let (up, rx) = mpsc::channel::<EdgeMessage>(8);
    up.send(EdgeMessage {
        msg: Some(Up::Hello(Hello {
            node_id: "node-a".into(),
            have_version: 0,
            max_schema: 1,
        })),
    })
    .await
    .unwrap();
    let down = FilterSyncClient::with_interceptor(channel.clone(), bearer(TOKEN))
        .sync(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    (up, down)
}

#[tokio::test]
async fn model_catalogue_admin_and_publish() {
    let server = TestServer::start().await;
    let channel = Channel::from_shared(server.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut adm = AdminClient::with_interceptor(channel.clone(), bearer(TOKEN));
    let (_up, mut down) = edge(&channel).await;

    let models = adm
        .list_models(admin::ListModelsRequest {})
        .await
        .unwrap()
        .into_inner()
        .models;
    let gpt = models.iter().find(|m| m.id == "gpt-4o").unwrap();
    assert_eq!(
        (
            gpt.input_usd_per_mtok.as_str(),
            gpt.input_price_micros_per_mtok
        ),
        ("2.5", 2_500_000)
    );
    assert_eq!((gpt.tier.as_str(), gpt.quality), ("complex", 78));
    assert!(gpt.tools && gpt.vision && gpt.json_mode && gpt.streaming && !gpt.embeddings);
    assert_eq!(gpt.max_output_tokens, 16_384);
    assert_eq!(gpt.display_name, "GPT-4o");
    assert!(gpt.price_source.starts_with("https://") && gpt.price_as_of.len() == 10);
    for (kind, id) in [
        ("deepseek", "deepseek-reasoner"),
        ("openai", "o3-mini"),
        ("anthropic", "claude-sonnet-4-20250514"),
        (
            "openai-compatible",
            "meta-llama/Llama-4-Maverick-17B-128E-Instruct-FP8",
        ),
    ] {
        assert!(
            models.iter().any(|m| m.provider_kind == kind && m.id == id),
            "{kind}/{id}"
        );
    }

    // Update: only the fields given change; the edge gets the new price.
    let updated = adm
        .update_model(admin::UpdateModelRequest {
            provider_kind: "openai".into(),
            id: "gpt-4o".into(),
            input_usd_per_mtok: Some("2.00".into()),
            enabled: Some(false),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.input_price_micros_per_mtok, 2_000_000);
    assert_eq!(updated.output_usd_per_mtok, "10");
    assert!(!updated.enabled && updated.updated_at_unix_ms > 0);
    let snap = snapshot_where(&mut down, |s| {
        s.models
            .iter()
            .any(|m| m.id == "gpt-4o" && m.input_price_micros_per_mtok == 2_000_000)
    })
    .await;
    assert!(
        !snap
            .models
            .iter()
            .find(|m| m.id == "gpt-4o")
            .unwrap()
            .enabled
    );

    // Upsert: a new model reaches the edge with every field.
    let added = adm
        .upsert_model(admin::UpsertModelRequest {
            model: Some(admin::ModelInfo {
                id: "qwen3-32b".into(),
                provider_kind: "openai-compatible".into(),
                input_usd_per_mtok: "0.10".into(),
                output_usd_per_mtok: "0.30".into(),
                context_window: 32_768,
                enabled: true,
                tools: true,
                streaming: true,
                quality: 60,
                tier: "medium".into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(added.output_price_micros_per_mtok, 300_000);
    let snap = snapshot_where(&mut down, |s| s.models.iter().any(|m| m.id == "qwen3-32b")).await;
    let pushed = snap.models.iter().find(|m| m.id == "qwen3-32b").unwrap();
    assert_eq!(
        (pushed.tier.as_str(), pushed.quality, pushed.tools),
        ("medium", 60, true)
    );

    // Errors.
    let cases = [
        (
            admin::UpdateModelRequest {
                provider_kind: "openai".into(),
                id: "gpt-9".into(),
                ..Default::default()
            },
            Code::NotFound,
            "not found",
        ),
        (
            admin::UpdateModelRequest {
                provider_kind: "openai".into(),
                id: "gpt-4o".into(),
                tier: Some("genius".into()),
                ..Default::default()
            },
            Code::InvalidArgument,
            "genius",
        ),
        (
            admin::UpdateModelRequest {
                provider_kind: "openai".into(),
                id: "gpt-4o".into(),
                output_usd_per_mtok: Some("ten".into()),
                ..Default::default()
            },
            Code::InvalidArgument,
            "not a price",
        ),
    ];
    for (request, code, want) in cases {
        let err = adm.update_model(request).await.unwrap_err();
        assert_eq!(err.code(), code, "{err:?}");
        assert!(err.message().contains(want), "{}", err.message());
    }
    let err = adm
        .upsert_model(admin::UpsertModelRequest { model: None })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    server.stop().await;
}

#[tokio::test]
async fn routing_rules_and_configs_admin_and_publish() {
    let server = TestServer::start().await;
    let channel = Channel::from_shared(server.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut adm = AdminClient::with_interceptor(channel.clone(), bearer(TOKEN));
    let (_up, mut down) = edge(&channel).await;

    // Routing rules: create → pushed; list, get, update, delete; errors.
    let create = |name: &str, priority| admin::CreateRoutingRuleRequest {
        name: name.into(),
        priority,
        is_enabled: true,
        match_json: r#"{"task":"coding"}"#.into(),
        action_json: r#"{"set_provider":"openai","set_model":"gpt-4o"}"#.into(),
        key_id: String::new(),
    };
    let coding = adm
        .create_routing_rule(create("Coding Tasks → OpenAI", 100))
        .await
        .unwrap()
        .into_inner();
    assert!(coding.id > 0 && coding.is_enabled && coding.created_at_unix_ms > 0);
    let cheap = adm
        .create_routing_rule(create("Simple Tasks → Cost Mode", 50))
        .await
        .unwrap()
        .into_inner();
    let snap = snapshot_where(&mut down, |s| s.routing_rules.len() == 2).await;
    assert_eq!(snap.routing_rules[0].id, coding.id, "higher priority first");
    assert_eq!(snap.routing_rules[0].match_json, coding.match_json);

    let updated = adm
        .update_routing_rule(admin::UpdateRoutingRuleRequest {
            id: coding.id,
            priority: Some(10),
            is_enabled: Some(false),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((updated.priority, updated.is_enabled), (10, false));
    assert_eq!(updated.action_json, coding.action_json);
    let snap = snapshot_where(&mut down, |s| {
        s.routing_rules.first().map(|r| r.id) == Some(cheap.id)
    })
    .await;
    assert!(!snap.routing_rules[1].enabled);
    let got = adm
        .get_routing_rule(admin::GetRoutingRuleRequest { id: coding.id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, updated);
    let listed = adm
        .list_routing_rules(admin::ListRoutingRulesRequest {})
        .await
        .unwrap()
        .into_inner()
        .rules;
    assert_eq!(listed.len(), 2);

    let err = adm
        .create_routing_rule(admin::CreateRoutingRuleRequest {
            match_json: r#"{"colour":"red"}"#.into(),
            ..create("bad", 1)
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("colour"), "{}", err.message());
    let err = adm
        .create_routing_rule(create("Simple Tasks → Cost Mode", 1))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    let err = adm
        .get_routing_rule(admin::GetRoutingRuleRequest { id: 999 })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = adm
        .update_routing_rule(admin::UpdateRoutingRuleRequest {
            id: 999,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    adm.delete_routing_rule(admin::DeleteRoutingRuleRequest { id: cheap.id })
        .await
        .unwrap();
    let err = adm
        .delete_routing_rule(admin::DeleteRoutingRuleRequest { id: cheap.id })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    snapshot_where(&mut down, |s| s.routing_rules.len() == 1).await;

    // Routing configurations: one per key.
    let key = adm
        .create_key(admin::CreateKeyRequest {
            name: "checkout-service-prod".into(),
            workspace_id: String::new(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .key
        .unwrap();
    let backend = |model: &str, priority| admin::Backend {
        model: model.into(),
        priority,
        weight: 1,
    };
    let config = |key_id: &str, backends: Vec<admin::Backend>| admin::SetRoutingConfigRequest {
        config: Some(admin::RoutingConfig {
            key_id: key_id.into(),
            active: true,
            strategy: "fallback".into(),
            backends,
            ..Default::default()
        }),
    };
    let err = adm
        .set_routing_config(config("key_missing", vec![backend("gpt-4o-mini", 0)]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = adm
        .set_routing_config(config(&key.id, vec![backend("openai/gpt-5-ultra", 0)]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("openai/gpt-5-ultra"),
        "{}",
        err.message()
    );
    let err = adm
        .set_routing_config(config(&key.id, Vec::new()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let saved = adm
        .set_routing_config(config(
            &key.id,
            vec![
                backend("gpt-4o-mini", 0),
                backend("anthropic/claude-sonnet-4-5", 1),
            ],
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(saved.active && saved.updated_at_unix_ms > 0);
    let snap = snapshot_where(&mut down, |s| !s.routing_configs.is_empty()).await;
    assert_eq!(snap.routing_configs[0].key_id, key.id);
    assert_eq!(snap.routing_configs[0].backends.len(), 2);

    let mut inactive = config(&key.id, saved.backends.clone());
    if let Some(c) = inactive.config.as_mut() {
        c.active = false;
    }
    adm.set_routing_config(inactive).await.unwrap();
    snapshot_where(&mut down, |s| {
        s.routing_configs.first().is_some_and(|c| !c.active)
    })
    .await;
    let got = adm
        .get_routing_config(admin::GetRoutingConfigRequest {
            key_id: key.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!got.active);
    let all = adm
        .list_routing_configs(admin::ListRoutingConfigsRequest {})
        .await
        .unwrap()
        .into_inner()
        .configs;
    assert_eq!(all.len(), 1);
    adm.delete_routing_config(admin::DeleteRoutingConfigRequest {
        key_id: key.id.clone(),
    })
    .await
    .unwrap();
    snapshot_where(&mut down, |s| s.routing_configs.is_empty()).await;
    for err in [
        adm.get_routing_config(admin::GetRoutingConfigRequest {
            key_id: key.id.clone(),
        })
        .await
        .unwrap_err(),
        adm.delete_routing_config(admin::DeleteRoutingConfigRequest {
            key_id: key.id.clone(),
        })
        .await
        .unwrap_err(),
    ] {
        assert_eq!(err.code(), Code::NotFound);
    }
    server.stop().await;
}

/// Key updates reach the edge (`store_bodies`), keys carry their totals, logs filter and show
/// one row with its bodies, usage breaks down; unknown ids are NOT_FOUND, bad input
/// INVALID_ARGUMENT.
#[tokio::test]
async fn keys_logs_and_usage_admin() {
    let server = TestServer::start().await;
    let channel = Channel::from_shared(server.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut adm = AdminClient::with_interceptor(channel.clone(), bearer(TOKEN));
    let (up, mut down) = edge(&channel).await;
    let key = adm
        .create_key(admin::CreateKeyRequest {
            name: "ci".into(),
            workspace_id: String::new(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .key
        .unwrap();
    assert_eq!((key.requests, key.spend_usd.as_str()), (0, "0"));

    // UpdateKey: only the fields set change; store_bodies reaches the edge.
    let updated = adm
        .update_key(admin::UpdateKeyRequest {
            id: key.id.clone(),
            name: None,
            store_bodies: Some(true),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(updated.store_bodies);
    assert_eq!(updated.name, "ci");
    snapshot_where(&mut down, |s| {
        s.keys.iter().any(|k| k.id == key.id && k.store_bodies)
    })
    .await;
    let renamed = adm
        .update_key(admin::UpdateKeyRequest {
            id: key.id.clone(),
            name: Some("ci-prod".into()),
            store_bodies: None,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (renamed.name.as_str(), renamed.store_bodies),
        ("ci-prod", true)
    );
    let missing = adm
        .update_key(admin::UpdateKeyRequest {
            id: "key_nope".into(),
            name: Some("x".into()),
            store_bodies: None,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    let bad = adm
        .update_key(admin::UpdateKeyRequest {
            id: key.id.clone(),
            name: Some("  ".into()),
            store_bodies: None,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    let missing = adm
        .get_key(admin::GetKeyRequest {
            id: "key_nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);

    // Usage from the edge: a success with bodies and metadata, a 429, a replay.
    let with_bodies = UsageRecord {
        client_api: "chat.completions".into(),
        metadata_json: r#"{"user":"u-1"}"#.into(),
        key_name: "ci".into(),
        workspace_id: "default".into(),
        request_body: b"{\"model\":\"echo\"}".to_vec(),
        response_body: b"{\"choices\":[]}".to_vec(),
        ..record("req-1", &key.id)
    };
    let limited = UsageRecord {
        status: 429,
        error_type: "rate_limit_error".into(),
        cost_picos: 0,
        ..record("req-2", &key.id)
    };
    let replay = UsageRecord {
        replay_of: "req-1".into(),
        ..record("req-3", &key.id)
    };
    up.send(EdgeMessage {
        msg: Some(Up::Usage(UsageBatch {
            batch_id: 9,
            records: vec![with_bodies, limited, replay],
        })),
    })
    .await
    .unwrap();
    assert_eq!(ack(&mut down).await, 9);

    let listed = adm
        .list_keys(admin::ListKeysRequest {})
        .await
        .unwrap()
        .into_inner()
        .keys;
    let k = &listed[0];
    assert_eq!(
        (
            k.requests,
            k.failed_requests,
            k.input_tokens,
            k.output_tokens,
            k.total_tokens
        ),
        (3, 1, 3, 10, 13),
        "the replay is a request but uses no tokens"
    );
    assert_eq!(k.spend_usd, "0.0000015");
    assert!(k.last_used_at_unix_ms > 0);
    let got = adm
        .get_key(admin::GetKeyRequest { id: key.id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(&got, k);

    // Filters.
    let list = |r: admin::ListLogsRequest| {
        let mut adm = adm.clone();
        async move {
            adm.list_logs(admin::ListLogsRequest { limit: 10, ..r })
                .await
                .map(|r| {
                    r.into_inner()
                        .logs
                        .into_iter()
                        .map(|l| l.request_id)
                        .collect::<Vec<_>>()
                })
        }
    };
    let status = |s: &str| admin::ListLogsRequest {
        status: s.into(),
        ..Default::default()
    };
    assert_eq!(list(status("4xx")).await.unwrap(), ["req-2"]);
    assert_eq!(list(status("200")).await.unwrap(), ["req-3", "req-1"]);
    let search = admin::ListLogsRequest {
        metadata_contains: "U-1".into(),
        ..Default::default()
    };
    assert_eq!(list(search).await.unwrap(), ["req-1"]);
    let window = admin::ListLogsRequest {
        since_unix_ms: 1,
        until_unix_ms: 2,
        ..Default::default()
    };
    assert!(list(window).await.unwrap().is_empty());
    let paged = admin::ListLogsRequest {
        status: "2xx".into(),
        before_request_id: "req-3".into(),
        ..Default::default()
    };
    assert_eq!(list(paged).await.unwrap(), ["req-1"]);
    for bad in [status("7xx"), status("abc")] {
        assert_eq!(list(bad).await.unwrap_err().code(), Code::InvalidArgument);
    }

    // One row with its bodies.
    let detail = adm
        .get_log(admin::GetLogRequest {
            request_id: "req-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let row = detail.log.unwrap();
    assert_eq!(row.metadata_json, r#"{"user":"u-1"}"#);
    assert_eq!((row.key_name.as_str(), row.has_bodies), ("ci", true));
    assert_eq!(detail.request_body, b"{\"model\":\"echo\"}");
    assert_eq!(detail.response_body, b"{\"choices\":[]}");
    let replayed = adm
        .get_log(admin::GetLogRequest {
            request_id: "req-3".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(replayed.log.unwrap().replay_of, "req-1");
    assert!(replayed.request_body.is_empty());
    let missing = adm
        .get_log(admin::GetLogRequest {
            request_id: "req-nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);

    // Usage.
    let usage = |days: u32, group_by: &str, key_id: &str| {
        let mut adm = adm.clone();
        let request = admin::GetUsageRequest {
            days,
            group_by: group_by.into(),
            key_id: key_id.into(),
        };
        async move { adm.get_usage(request).await.map(|r| r.into_inner()) }
    };
    let totals = usage(0, "", "").await.unwrap();
    assert_eq!(totals.range_days, 30);
    assert_eq!(
        (
            totals.total_requests,
            totals.requests,
            totals.failed_requests
        ),
        (2, 3, 1)
    );
    assert_eq!(
        (
            totals.total_tokens_in,
            totals.total_tokens_out,
            totals.total_cost_usd.as_str()
        ),
        (3, 10, "0.0000015")
    );
    assert!(totals.breakdown.is_empty());
    let by_model = usage(7, "model", &key.id).await.unwrap();
    assert_eq!(by_model.group_by, "model");
    assert_eq!(by_model.breakdown.len(), 1);
    assert_eq!(by_model.breakdown[0].model, "echo");
    assert_eq!(by_model.breakdown[0].requests, 3);
    let by_day = usage(2, "day", "").await.unwrap();
    assert_eq!(by_day.breakdown.len(), 2);
    assert_eq!(by_day.breakdown[0].day, by_day.since_day);
    assert_eq!(by_day.breakdown[1].total_tokens, 13);
    let by_key = usage(1, "key", "").await.unwrap();
    assert_eq!(by_key.breakdown[0].key_name, "ci-prod");
    for (days, group_by, key_id, code) in [
        (1, "week", "", Code::InvalidArgument),
        (366, "", "", Code::InvalidArgument),
        (1, "", "key_nope", Code::NotFound),
    ] {
        let err = usage(days, group_by, key_id).await.unwrap_err();
        assert_eq!(err.code(), code, "{days} {group_by} {key_id}");
    }
    drop(up);
    server.stop().await;
}

#[tokio::test]
async fn workspaces_balances_credit_and_topups_admin() {
    let server = TestServer::start().await;
    let channel = Channel::from_shared(server.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut adm = AdminClient::with_interceptor(channel, bearer(TOKEN));
    let limits = |rps: Option<u32>, hour: Option<u64>| admin::Limits {
        rps,
        hour_total_tokens: hour,
        ..admin::Limits::default()
    };

    // Workspaces: create (with a balance and limits), duplicates, bad ids, get, list, update.
    let ws = adm
        .create_workspace(admin::CreateWorkspaceRequest {
            id: "team-a".into(),
            balance_usd: Some("20".into()),
            limits: Some(limits(Some(5), None)),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (ws.id.as_str(), ws.balance_usd.as_deref(), ws.active_keys),
        ("team-a", Some("20"), 0)
    );
    assert_eq!(ws.limits, Some(limits(Some(5), None)));
    let dup = adm
        .create_workspace(admin::CreateWorkspaceRequest {
            id: "team-a".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(dup.code(), Code::AlreadyExists);
    for (id, balance) in [
        ("Bad WS", None),
        ("ok", Some("-1")),
        ("ok2", Some("1.0000001")),
    ] {
        let bad = adm
            .create_workspace(admin::CreateWorkspaceRequest {
                id: id.into(),
                balance_usd: balance.map(str::to_string),
                limits: None,
            })
            .await
            .unwrap_err();
        assert_eq!(bad.code(), Code::InvalidArgument, "{id} {balance:?}");
    }
    let missing = adm
        .get_workspace(admin::GetWorkspaceRequest { id: "nope".into() })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    let updated = adm
        .update_workspace(admin::UpdateWorkspaceRequest {
            id: "team-a".into(),
            limits: Some(limits(None, Some(1000))),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        updated.limits,
        Some(limits(Some(5), Some(1000))),
        "rps kept"
    );

    // Keys with a balance and limits of their own; effective limits inherit the rest.
    let metered = adm
        .create_key(admin::CreateKeyRequest {
            name: "metered".into(),
            workspace_id: "team-a".into(),
            balance_usd: Some("5".into()),
            limits: Some(limits(Some(2), None)),
        })
        .await
        .unwrap()
        .into_inner()
        .key
        .unwrap();
    assert_eq!(metered.balance_usd.as_deref(), Some("5"));
    assert_eq!(metered.limits, Some(limits(Some(2), None)));
    let effective = metered.effective_limits.unwrap();
    assert_eq!(
        (
            effective.rps,
            effective.hour_total_tokens,
            effective.hour_input_tokens
        ),
        (Some(2), Some(1000), Some(0))
    );
    let free = adm
        .create_key(admin::CreateKeyRequest {
            name: "free".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .key
        .unwrap();
    assert_eq!(free.balance_usd, None, "not metered");
    let zero = adm
        .create_key(admin::CreateKeyRequest {
            name: "zero".into(),
            balance_usd: Some("0".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .key
        .unwrap();
    assert_eq!(
        zero.balance_usd.as_deref(),
        Some("0"),
        "metered, nothing to spend"
    );
    let bad = adm
        .create_key(admin::CreateKeyRequest {
            name: "bad".into(),
            balance_usd: Some("five".into()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    let relimited = adm
        .update_key(admin::UpdateKeyRequest {
            id: metered.id.clone(),
            limits: Some(admin::Limits {
                hour_output_tokens: Some(10),
                ..admin::Limits::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let own = relimited.limits.unwrap();
    assert_eq!((own.rps, own.hour_output_tokens), (Some(2), Some(10)));
    let team = adm
        .get_workspace(admin::GetWorkspaceRequest {
            id: "team-a".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(team.active_keys, 1);
    let listed = adm
        .list_workspaces(admin::ListWorkspacesRequest {})
        .await
        .unwrap()
        .into_inner()
        .workspaces;
    assert!(listed
        .iter()
        .any(|w| w.id == "team-a" && w.balance_usd.as_deref() == Some("20")));

    // GrantCredit: to a key, to a workspace, to an unmetered key (which becomes metered).
    let grant = |key: &str, workspace: &str, amount: &str| admin::GrantCreditRequest {
        key_id: key.into(),
        workspace_id: workspace.into(),
        amount_usd: amount.into(),
        note: "test".into(),
    };
    let after = adm
        .grant_credit(grant(&metered.id, "", "2.5"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            after.owner.as_str(),
            after.balance_usd.as_str(),
            after.metered,
            after.currency.as_str()
        ),
        ("key", "7.5", true, "USD")
    );
    assert_eq!(after.available_usd, "7.5");
    let topped = adm
        .grant_credit(grant(&free.id, "", "1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((topped.balance_usd.as_str(), topped.metered), ("1", true));
    let ws_after = adm
        .grant_credit(grant("", "team-a", "0.000001"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (ws_after.owner.as_str(), ws_after.balance_usd.as_str()),
        ("workspace", "20.000001")
    );
    for (req, code) in [
        (grant(&metered.id, "team-a", "1"), Code::InvalidArgument),
        (grant("", "", "1"), Code::InvalidArgument),
        (grant(&metered.id, "", "0"), Code::InvalidArgument),
        (grant(&metered.id, "", "-1"), Code::InvalidArgument),
        (grant(&metered.id, "", "abc"), Code::InvalidArgument),
        (grant(&metered.id, "", "1000001"), Code::InvalidArgument),
        (grant("key_nope", "", "1"), Code::NotFound),
        (grant("", "nope", "1"), Code::NotFound),
    ] {
        let e = adm.grant_credit(req.clone()).await.unwrap_err();
        assert_eq!(e.code(), code, "{req:?}: {e:?}");
    }

    // GetBalance: a key, a workspace, the total of the active keys.
    let balance = |key: &str, workspace: &str| admin::GetBalanceRequest {
        key_id: key.into(),
        workspace_id: workspace.into(),
    };
    let b = adm
        .get_balance(balance(&metered.id, ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            b.id.as_str(),
            b.balance_usd.as_str(),
            b.reserved_usd.as_str()
        ),
        (metered.id.as_str(), "7.5", "0")
    );
    let total = adm.get_balance(balance("", "")).await.unwrap().into_inner();
    assert_eq!(
        (total.owner.as_str(), total.balance_usd.as_str()),
        ("total", "8.5")
    );
    let key = adm
        .get_key(admin::GetKeyRequest {
            id: free.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(key.balance_usd.as_deref(), Some("1"));
    assert_eq!(
        adm.get_balance(balance(&metered.id, "team-a"))
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );
    assert_eq!(
        adm.get_balance(balance("key_nope", ""))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );

    // CreateTopup: no payment backend configured here → UNAVAILABLE; bad amounts first.
    let topup = |key: &str, amount: &str| admin::CreateTopupRequest {
        key_id: key.into(),
        amount_usd: amount.into(),
    };
    let none = adm.create_topup(topup(&metered.id, "5")).await.unwrap_err();
    assert_eq!(none.code(), Code::Unavailable);
    assert!(none.message().contains("TOKENROUTER_PAYMENTS"), "{none:?}");
    let bad = adm.create_topup(topup(&metered.id, "x")).await.unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    server.stop().await;
}

/// Firewall rules scoped to a workspace: created, updated and enabled from a template over
/// gRPC, checked against the workspaces and keys, published in the snapshot, and applied by
/// the preview to the keys of that workspace only.
#[tokio::test]
async fn firewall_rules_scoped_to_a_workspace() {
    let server = TestServer::start().await;
    let channel = Channel::from_shared(server.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut adm = AdminClient::with_interceptor(channel.clone(), bearer(TOKEN));
    let (_up, mut down) = edge(&channel).await;
    let key = |name: &str, ws: &str| admin::CreateKeyRequest {
        name: name.into(),
        workspace_id: ws.into(),
        ..Default::default()
    };
    let a = adm
        .create_key(key("a", "team-a"))
        .await
        .unwrap()
        .into_inner();
    let b = adm
        .create_key(key("b", "team-b"))
        .await
        .unwrap()
        .into_inner();
    let (a_id, b_id) = (a.key.unwrap().id, b.key.unwrap().id);
    let rule = |name: &str, ws: &str, key_id: &str| admin::CreateFirewallRuleRequest {
        name: name.into(),
        priority: 10,
        is_enabled: true,
        scope: "prompt".into(),
        r#type: "substring".into(),
        pattern: "project falcon".into(),
        action: "block".into(),
        key_id: key_id.into(),
        workspace_id: ws.into(),
        ..Default::default()
    };

    // Unknown or invalid workspace, key outside the workspace: INVALID_ARGUMENT, nothing stored.
    for (bad, want) in [
        (rule("r", "team-z", ""), "workspace team-z does not exist"),
        (rule("r", "Team Z", ""), "is not valid"),
        (
            rule("r", "team-a", &b_id),
            "is in workspace team-b, not team-a",
        ),
    ] {
        let err = adm.create_firewall_rule(bad).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains(want), "{want}: {err:?}");
    }

    let team = adm
        .create_firewall_rule(rule("Falcon (team-a)", "team-a", ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (team.workspace_id.as_str(), team.key_id.as_str()),
        ("team-a", "")
    );
    let snap = snapshot_where(&mut down, |s| {
        s.firewall_rules.iter().any(|r| r.id == team.id)
    })
    .await;
    let published = snap
        .firewall_rules
        .iter()
        .find(|r| r.id == team.id)
        .unwrap();
    assert_eq!(published.workspace_id, "team-a");
    let got = adm
        .get_firewall_rule(admin::GetFirewallRuleRequest { id: team.id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, team);

    // The preview runs the edge's prompt firewall with the key's workspace.
    let preview = |key_id: &str| admin::PreviewDecisionRequest {
        key_id: key_id.into(),
        client_api: "chat.completions".into(),
        body_json:
            r#"{"model":"demo/echo","messages":[{"role":"user","content":"about Project Falcon"}]}"#
                .into(),
        headers: Default::default(),
    };
    let blocked = adm
        .preview_decision(preview(&a_id))
        .await
        .unwrap()
        .into_inner();
    assert!(
        blocked.error_json.contains("Falcon (team-a)"),
        "{blocked:?}"
    );
    let passed = adm
        .preview_decision(preview(&b_id))
        .await
        .unwrap()
        .into_inner();
    assert!(!passed.error_json.contains("firewall"), "{passed:?}");

    // Update: moving the rule to team-b; "" = every workspace; unset keeps it.
    let update = |ws: Option<&str>| admin::UpdateFirewallRuleRequest {
        id: team.id,
        workspace_id: ws.map(str::to_string),
        ..Default::default()
    };
    let moved = adm
        .update_firewall_rule(update(Some("team-b")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(moved.workspace_id, "team-b");
    let kept = adm
        .update_firewall_rule(update(None))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(kept.workspace_id, "team-b");
    let err = adm
        .update_firewall_rule(update(Some("team-z")))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let every = adm
        .update_firewall_rule(update(Some("")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(every.workspace_id, "");

    // Key and workspace together; a template enabled for a workspace.
    let both = adm
        .create_firewall_rule(rule("Falcon (a in team-a)", "team-a", &a_id))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (both.key_id.as_str(), both.workspace_id.as_str()),
        (a_id.as_str(), "team-a")
    );
    let email = adm
        .enable_firewall_template(admin::EnableFirewallTemplateRequest {
            name: "email".into(),
            workspace_id: "team-b".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(email.workspace_id, "team-b");
    let listed = adm
        .list_firewall_rules(admin::ListFirewallRulesRequest {})
        .await
        .unwrap()
        .into_inner()
        .rules;
    let scoping: Vec<(&str, &str)> = listed
        .iter()
        .map(|r| (r.name.as_str(), r.workspace_id.as_str()))
        .collect();
    assert_eq!(
        scoping,
        [
            ("Falcon (team-a)", ""),
            ("Falcon (a in team-a)", "team-a"),
            (email.name.as_str(), "team-b"),
        ]
    );
    snapshot_where(&mut down, |s| {
        s.firewall_rules
            .iter()
            .any(|r| r.id == email.id && r.workspace_id == "team-b")
    })
    .await;
    server.stop().await;
}
