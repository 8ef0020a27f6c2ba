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
use tokenrouter_proto::sync::v1::{ControlMessage, EdgeMessage, Hello, UsageBatch, UsageRecord};
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

/// Skips snapshots until one satisfies `want`.
async fn snapshot_where(
    down: &mut Streaming<ControlMessage>,
    want: impl Fn(&Snapshot) -> bool,
) -> Snapshot {
    loop {
        match next(down).await {
            Down::Snapshot(s) if want(&s) => return s,
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
    snapshot_where(&mut down, |s| {
        s.keys.iter().any(|k| k.id == key.id && k.revoked)
    })
    .await;

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
        metrics.contains("tokenrouter_sync_streams_open 1\n"),
        "{metrics}"
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
