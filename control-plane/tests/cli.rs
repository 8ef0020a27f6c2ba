//! The `tokenrouter` binary against an in-process control plane: JSON output and exit codes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{TestServer, TOKEN};
use serde_json::Value;
use tokenrouter_proto::sync::v1::control_message::Msg as Down;
use tokenrouter_proto::sync::v1::edge_message::Msg as Up;
use tokenrouter_proto::sync::v1::filter_sync_client::FilterSyncClient;
use tokenrouter_proto::sync::v1::{Attempt, EdgeMessage, UsageBatch, UsageRecord};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

struct Run {
    code: i32,
    json: Value,
    stdout: String,
    stderr: String,
}

async fn cli(args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_tokenrouter"));
    cmd.args(args);
    for var in [
        "TOKENROUTER_ADMIN_TOKEN",
        "TOKENROUTER_API_URL",
        "TOKENROUTER_JSON",
        "TOKENROUTER_DATA_DIR",
        "TOKENROUTER_API_KEY",
        "TOKENROUTER_REST_URL",
    ] {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().await.unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        json: serde_json::from_str(&stdout).unwrap_or(Value::Null),
        stdout,
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn verbs_print_json_and_exit_with_the_contract_codes() {
    let server = TestServer::start().await;
    let url = server.url();
    let base = ["--api-url", url.as_str(), "--admin-token", TOKEN];
    let with = |extra: &[&'static str]| -> Vec<String> {
        base.iter()
            .map(|s| s.to_string())
            .chain(extra.iter().map(|s| s.to_string()))
            .collect()
    };
    let run = |args: Vec<String>| async move {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        cli(&refs, &[]).await
    };

    // --json after the verb, keys create → list → revoke.
    let created = run(with(&["keys", "create", "--name", "a", "--json"])).await;
    assert_eq!(created.code, 0, "{}", created.stderr);
    let raw = created.json["raw"].as_str().unwrap();
    assert!(raw.starts_with("sk-tr-"));
    assert_eq!(created.json["status"], "active");
    assert_eq!(created.json["workspace_id"], "default");
    assert_eq!(created.json["key_prefix"].as_str().unwrap(), &raw[..10]);
    let id = created.json["id"].as_str().unwrap().to_string();

    let listed = cli(
        &["--json", "--api-url", &url, "keys", "list"],
        &[("TOKENROUTER_ADMIN_TOKEN", TOKEN)],
    )
    .await;
    assert_eq!(listed.code, 0, "{}", listed.stderr);
    assert_eq!(listed.json[0]["id"], id.as_str());
    assert!(listed.json[0].get("raw").is_none());

    let revoked = cli(
        &["--api-url", &url, "keys", "revoke", &id],
        &[
            ("TOKENROUTER_ADMIN_TOKEN", TOKEN),
            ("TOKENROUTER_JSON", "1"),
        ],
    )
    .await;
    assert_eq!(
        (revoked.code, revoked.json["status"].as_str()),
        (0, Some("revoked"))
    );

    // Providers.
    let added = run(with(&[
        "providers",
        "add",
        "--name",
        "demo",
        "--kind",
        "openai-compatible",
        "--base-url",
        "http://127.0.0.1:8081/demo/v1",
        "--api-key",
        "sk-x",
        "--json",
    ]))
    .await;
    assert_eq!(added.code, 0, "{}", added.stderr);
    assert_eq!(added.json["cluster"], "tr_provider_demo");
    assert_eq!(added.json["has_credential"], true);
    assert!(added.json.get("api_key").is_none());
    let dup = run(with(&[
        "providers",
        "add",
        "--name",
        "demo",
        "--kind",
        "openai",
        "--base-url",
        "http://h",
        "--json",
    ]))
    .await;
    assert_eq!(
        (dup.code, dup.json["error"]["type"].as_str()),
        (1, Some("already_exists"))
    );
    let bad = run(with(&[
        "providers",
        "add",
        "--name",
        "p",
        "--kind",
        "nope",
        "--base-url",
        "http://h",
    ]))
    .await;
    assert_eq!(bad.code, 1);
    assert!(
        bad.stderr.starts_with("error: unknown provider kind"),
        "{}",
        bad.stderr
    );
    let removed = run(with(&["providers", "remove", "demo", "--json"])).await;
    assert_eq!(removed.json, serde_json::json!({"removed": "demo"}));
    let gone = run(with(&["providers", "remove", "demo", "--json"])).await;
    assert_eq!(
        (gone.code, gone.json["error"]["type"].as_str()),
        (1, Some("not_found"))
    );

    // Models and logs.
    let models = run(with(&["models", "--json"])).await;
    let mini = models
        .json
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == "openai/gpt-4o-mini")
        .unwrap();
    assert_eq!(mini["input_price_micros_per_mtok"], 150_000);
    let logs = run(with(&["logs", "--limit", "5", "--json"])).await;
    assert_eq!(
        (logs.code, logs.json.as_array().map(Vec::len)),
        (0, Some(0))
    );

    // Wrong token → 1, unreachable → 2, usage error → 1, no token anywhere → 1.
    let denied = cli(
        &[
            "--api-url",
            &url,
            "--admin-token",
            "nope",
            "keys",
            "list",
            "--json",
        ],
        &[],
    )
    .await;
    assert_eq!(
        (denied.code, denied.json["error"]["type"].as_str()),
        (1, Some("unauthenticated"))
    );
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let down_url = format!("http://{closed}");
    let down = cli(
        &[
            "--api-url",
            &down_url,
            "--admin-token",
            "t",
            "keys",
            "list",
            "--json",
        ],
        &[],
    )
    .await;
    assert_eq!(
        (down.code, down.json["error"]["type"].as_str()),
        (2, Some("network_error"))
    );
    let usage = cli(&["keys", "create"], &[]).await;
    assert_eq!(usage.code, 1, "{}", usage.stderr);
    let usage_json = cli(&["keys", "frobnicate", "--json"], &[]).await;
    assert_eq!(
        (usage_json.code, usage_json.json["error"]["type"].as_str()),
        (1, Some("usage_error"))
    );
    let empty = tempfile::tempdir().unwrap();
    let no_token = cli(
        &[
            "--api-url",
            &url,
            "--data-dir",
            empty.path().to_str().unwrap(),
            "keys",
            "list",
            "--json",
        ],
        &[],
    )
    .await;
    assert_eq!(
        (no_token.code, no_token.json["error"]["type"].as_str()),
        (1, Some("config_error"))
    );

    // The admin token file is found through --data-dir.
    std::fs::write(empty.path().join("admin_token"), format!("{TOKEN}\n")).unwrap();
    let via_file = cli(
        &[
            "--api-url",
            &url,
            "--data-dir",
            empty.path().to_str().unwrap(),
            "keys",
            "list",
            "--json",
        ],
        &[],
    )
    .await;
    assert_eq!(via_file.code, 0, "{}", via_file.stderr);

    server.stop().await;
}

/// Stores usage records through FilterSync, as an edge would, and waits for the ack.
async fn ingest(server: &TestServer, records: Vec<UsageRecord>) {
    let channel = Channel::from_shared(server.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let auth = |mut r: tonic::Request<()>| {
        r.metadata_mut()
            .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
        Ok::<_, tonic::Status>(r)
    };
    let (up, rx) = mpsc::channel::<EdgeMessage>(1);
    up.send(EdgeMessage {
        msg: Some(Up::Usage(UsageBatch {
            batch_id: 7,
            records,
        })),
    })
    .await
    .unwrap();
    let mut down = FilterSyncClient::with_interceptor(channel, auth)
        .sync(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let acked = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        while let Some(m) = down.message().await.unwrap() {
            if let Some(Down::Ack(a)) = m.msg {
                return a.batch_id;
            }
        }
        panic!("stream ended before the ack")
    })
    .await
    .unwrap();
    assert_eq!(acked, 7);
}

#[tokio::test(flavor = "multi_thread")]
async fn logs_show_the_route_mode_and_tier() {
    let server = TestServer::start().await;
    let attempt = |provider: &str, status: u32, error: &str| Attempt {
        provider: provider.into(),
        model: "m".into(),
        status,
        latency_ms: 50,
        error: error.into(),
    };
    let failover = UsageRecord {
        request_id: "req-failover".into(),
        started_at_unix_ms: 1_700_000_000_000,
        provider: "claude".into(),
        model: "m".into(),
        status: 200,
        mode: "latency".into(),
        tier: "complex".into(),
        rule_trace: r#"[{"rule":"eu"}]"#.into(),
        attempts: vec![
            attempt("openai", 503, "http_503"),
            attempt("claude", 200, ""),
        ],
        ttfb_ms: 75,
        ..UsageRecord::default()
    };
    let direct = UsageRecord {
        request_id: "req-direct".into(),
        started_at_unix_ms: 1_700_000_001_000,
        provider: "openai".into(),
        model: "m".into(),
        status: 200,
        attempts: vec![attempt("openai", 200, "")],
        ..UsageRecord::default()
    };
    ingest(&server, vec![failover, direct]).await;
    let url = server.url();
    let base = ["--api-url", url.as_str(), "--admin-token", TOKEN, "logs"];

    let table = cli(&base, &[]).await;
    assert_eq!(table.code, 0, "{}", table.stderr);
    let lines: Vec<&str> = table.stdout.lines().collect();
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        header,
        [
            "STARTED", "REQUEST", "KEY", "ROUTE", "MODEL", "STATUS", "MODE", "TIER", "IN", "OUT",
            "COST", "LATENCY"
        ]
    );
    // Newest first; the route shows each attempt only when there was a failover.
    assert!(lines[1].contains("req-direct"), "{}", table.stdout);
    let direct_route = &lines[1][lines[0].find("ROUTE").unwrap()..];
    assert!(direct_route.starts_with("openai "), "{}", table.stdout);
    assert!(
        lines[2].contains("openai:503 → claude:200")
            && lines[2].contains("latency")
            && lines[2].contains("complex"),
        "{}",
        table.stdout
    );

    let mut json_args = base.to_vec();
    json_args.push("--json");
    let json = cli(&json_args, &[]).await;
    assert_eq!(json.code, 0, "{}", json.stderr);
    let row = &json.json[1];
    assert_eq!(row["request_id"], "req-failover");
    assert_eq!(row["mode"], "latency");
    assert_eq!(row["tier"], "complex");
    assert_eq!(row["rule_trace"], r#"[{"rule":"eu"}]"#);
    assert_eq!(row["ttfb_ms"], 75);
    assert_eq!(
        row["attempts"],
        serde_json::json!([
            {"provider": "openai", "model": "m", "status": 503, "latency_ms": 50,
             "error": "http_503"},
            {"provider": "claude", "model": "m", "status": 200, "latency_ms": 50,
             "error": null},
        ])
    );
    let direct = &json.json[0];
    assert!(direct["mode"].is_null() && direct["rule_trace"].is_null());
    assert_eq!(direct["attempts"].as_array().map(Vec::len), Some(1));

    server.stop().await;
}

#[tokio::test]
async fn envoy_bootstrap_is_local_and_uses_the_data_dir_token() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = dir.path().join("envoy.yaml");
    let run = cli(
        &[
            "--data-dir",
            data.to_str().unwrap(),
            "envoy-bootstrap",
            "--listen",
            "127.0.0.1:8080",
            "--admin",
            "127.0.0.1:9901",
            "--control",
            "127.0.0.1:50051",
            "--wasm",
            "filter.wasm",
            "--node-id",
            "n1",
            "--out",
            out.to_str().unwrap(),
            "--json",
        ],
        &[],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let yaml = std::fs::read_to_string(&out).unwrap();
    let token = std::fs::read_to_string(data.join("admin_token")).unwrap();
    assert!(yaml.contains(token.trim()));
    let cwd = std::env::current_dir().unwrap();
    assert!(yaml.contains(cwd.join("filter.wasm").to_str().unwrap()));
}

#[tokio::test(flavor = "multi_thread")]
async fn models_rules_and_routing_verbs() {
    let server = TestServer::start().await;
    let url = server.url();
    let run = |extra: &[&str]| {
        let args: Vec<String> = ["--api-url", url.as_str(), "--admin-token", TOKEN]
            .iter()
            .chain(extra)
            .map(|s| s.to_string())
            .collect();
        async move {
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            cli(&refs, &[]).await
        }
    };
    let error_type = |r: &Run| r.json["error"]["type"].as_str().map(str::to_string);

    // models: the table, the JSON objects, update, add.
    let table = run(&["models"]).await;
    assert_eq!(table.code, 0, "{}", table.stderr);
    let header = table.stdout.lines().next().unwrap();
    for column in [
        "MODEL",
        "CONTEXT",
        "INPUT/1M",
        "CAPABILITIES",
        "QUALITY",
        "TIER",
        "STATUS",
    ] {
        assert!(header.contains(column), "{header}");
    }
    let line = table
        .stdout
        .lines()
        .find(|l| l.starts_with("openai/gpt-4o "))
        .unwrap();
    for cell in [
        "128000",
        "$2.5",
        "tools,vision,json,stream",
        "complex",
        "enabled",
    ] {
        assert!(line.contains(cell), "{line}");
    }
    let listed = run(&["models", "list", "--json"]).await;
    let mini = listed
        .json
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == "openai/gpt-4o-mini")
        .unwrap()
        .clone();
    assert_eq!(mini["model"], "gpt-4o-mini");
    assert_eq!(mini["input_usd_per_mtok"], "0.15");
    assert_eq!(
        (mini["tier"].as_str(), mini["tools"].as_bool()),
        (Some("medium"), Some(true))
    );

    let updated = run(&[
        "models",
        "update",
        "openai/gpt-4o",
        "--input-price",
        "2.00",
        "--disable",
        "--quality",
        "80",
        "--json",
    ])
    .await;
    assert_eq!(updated.code, 0, "{}", updated.stderr);
    assert_eq!(updated.json["input_price_micros_per_mtok"], 2_000_000);
    assert_eq!(
        (
            updated.json["enabled"].as_bool(),
            updated.json["quality"].as_u64()
        ),
        (Some(false), Some(80))
    );
    let human = run(&["models", "update", "openai/gpt-4o", "--enable"]).await;
    assert_eq!(human.code, 0, "{}", human.stderr);
    assert!(
        human
            .stdout
            .starts_with("updated model openai/gpt-4o (GPT-4o)"),
        "{}",
        human.stdout
    );
    let bad_tier = run(&[
        "models",
        "update",
        "openai/gpt-4o",
        "--tier",
        "genius",
        "--json",
    ])
    .await;
    assert_eq!(
        (bad_tier.code, error_type(&bad_tier).as_deref()),
        (1, Some("invalid_argument"))
    );
    let unknown = run(&["models", "update", "openai/gpt-9", "--enable", "--json"]).await;
    assert_eq!(
        (unknown.code, error_type(&unknown).as_deref()),
        (1, Some("not_found"))
    );
    let no_kind = run(&["models", "update", "gpt-4o", "--enable", "--json"]).await;
    assert_eq!(
        (no_kind.code, error_type(&no_kind).as_deref()),
        (1, Some("usage_error"))
    );

    let added = run(&[
        "models",
        "add",
        "openai-compatible/qwen3-32b",
        "--input-price",
        "0.10",
        "--output-price",
        "0.30",
        "--context-window",
        "32768",
        "--tools",
        "--quality",
        "60",
        "--tier",
        "medium",
        "--json",
    ])
    .await;
    assert_eq!(added.code, 0, "{}", added.stderr);
    assert_eq!(added.json["id"], "openai-compatible/qwen3-32b");
    assert_eq!(added.json["output_price_micros_per_mtok"], 300_000);
    assert_eq!(added.json["streaming"], true);
    // The shape `models --json` prints is the shape `models add --json-file` reads.
    let mut edited = mini.clone();
    edited["quality"] = 63.into();
    let file = server.dir.path().join("models.json");
    std::fs::write(
        &file,
        serde_json::json!([edited, {"id": "mistral/open-mixtral", "input_usd_per_mtok": "0.7",
            "output_usd_per_mtok": "0.7", "context_window": 32000, "tier": "medium"}])
        .to_string(),
    )
    .unwrap();
    let from_file = run(&[
        "models",
        "add",
        "--json-file",
        file.to_str().unwrap(),
        "--json",
    ])
    .await;
    assert_eq!(from_file.code, 0, "{}", from_file.stderr);
    let saved = from_file.json.as_array().unwrap();
    assert_eq!(
        (saved[0]["quality"].as_u64(), saved[1]["model"].as_str()),
        (Some(63), Some("open-mixtral"))
    );
    std::fs::write(&file, r#"{"id": "openai/x", "colour": "red"}"#).unwrap();
    let bad_file = run(&[
        "models",
        "add",
        "--json-file",
        file.to_str().unwrap(),
        "--json",
    ])
    .await;
    assert_eq!(
        (bad_file.code, error_type(&bad_file).as_deref()),
        (1, Some("invalid_argument"))
    );

    // rules: create, list, get, update, delete.
    let created = run(&[
        "rules",
        "create",
        "--name",
        "Coding Tasks → OpenAI",
        "--priority",
        "100",
        "--match",
        r#"{"task":"coding"}"#,
        "--action",
        r#"{"set_provider":"openai","set_model":"gpt-4o"}"#,
        "--json",
    ])
    .await;
    assert_eq!(created.code, 0, "{}", created.stderr);
    assert_eq!(
        created.json["match_json"],
        serde_json::json!({"task": "coding"})
    );
    assert_eq!(created.json["is_enabled"], true);
    let id = created.json["id"].as_i64().unwrap().to_string();
    let second = run(&[
        "rules",
        "create",
        "--name",
        "Simple Tasks → Cost Mode",
        "--priority",
        "50",
        "--match",
        r#"{"contains":["summarize","list"]}"#,
        "--action",
        r#"{"set_mode":"cost"}"#,
        "--disabled",
    ])
    .await;
    assert_eq!(second.code, 0, "{}", second.stderr);
    assert!(
        second.stdout.starts_with("created routing rule"),
        "{}",
        second.stdout
    );
    let list = run(&["rules", "list", "--json"]).await;
    let names: Vec<&str> = list
        .json
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["Coding Tasks → OpenAI", "Simple Tasks → Cost Mode"]);
    let list = run(&["rules", "list"]).await;
    assert!(
        list.stdout.starts_with("ID  PRIORITY  NAME"),
        "{}",
        list.stdout
    );
    let got = run(&["rules", "get", &id, "--json"]).await;
    assert_eq!(got.json["action_json"]["set_model"], "gpt-4o");
    let updated = run(&[
        "rules",
        "update",
        &id,
        "--priority",
        "5",
        "--disable",
        "--json",
    ])
    .await;
    assert_eq!(
        (
            updated.json["priority"].as_i64(),
            updated.json["is_enabled"].as_bool()
        ),
        (Some(5), Some(false))
    );
    let invalid = run(&[
        "rules", "create", "--name", "x", "--match", "[1]", "--action", "{}", "--json",
    ])
    .await;
    assert_eq!(
        (invalid.code, error_type(&invalid).as_deref()),
        (1, Some("invalid_argument"))
    );
    let dup = run(&[
        "rules",
        "create",
        "--name",
        "Coding Tasks → OpenAI",
        "--match",
        "{}",
        "--action",
        r#"{"set_mode":"cost"}"#,
        "--json",
    ])
    .await;
    assert_eq!(
        (dup.code, error_type(&dup).as_deref()),
        (1, Some("already_exists"))
    );
    let deleted = run(&["rules", "delete", &id, "--json"]).await;
    assert_eq!(
        deleted.json,
        serde_json::json!({"removed": id.parse::<i64>().unwrap()})
    );
    for verb in [["get", id.as_str()], ["delete", id.as_str()]] {
        let gone = run(&["rules", verb[0], verb[1], "--json"]).await;
        assert_eq!(
            (gone.code, error_type(&gone).as_deref()),
            (1, Some("not_found")),
            "{verb:?}"
        );
    }

    // routing: set, get, list, deactivate, activate, delete.
    let key = run(&[
        "keys",
        "create",
        "--name",
        "checkout-service-prod",
        "--json",
    ])
    .await;
    let key_id = key.json["id"].as_str().unwrap().to_string();
    let set = run(&[
        "routing",
        "set",
        "--key-id",
        &key_id,
        "--strategy",
        "split",
        "--backend",
        "openai/gpt-4o-mini",
        "--weight",
        "3",
        "--backend",
        "anthropic/claude-sonnet-4-5",
        "--weight",
        "1",
        "--json",
    ])
    .await;
    assert_eq!(set.code, 0, "{}", set.stderr);
    assert_eq!(
        set.json["backends"],
        serde_json::json!([
            {"model": "openai/gpt-4o-mini", "priority": 0, "weight": 3},
            {"model": "anthropic/claude-sonnet-4-5", "priority": 1, "weight": 1}
        ])
    );
    assert_eq!(
        (set.json["strategy"].as_str(), set.json["active"].as_bool()),
        (Some("split"), Some(true))
    );
    let mismatch = run(&[
        "routing",
        "set",
        "--key-id",
        &key_id,
        "--strategy",
        "split",
        "--backend",
        "gpt-4o-mini",
        "--backend",
        "o3-mini",
        "--weight",
        "3",
        "--json",
    ])
    .await;
    assert_eq!(
        (mismatch.code, error_type(&mismatch).as_deref()),
        (1, Some("usage_error"))
    );
    let bad_backend = run(&[
        "routing",
        "set",
        "--key-id",
        &key_id,
        "--strategy",
        "fallback",
        "--backend",
        "nobody/gpt-4o",
        "--json",
    ])
    .await;
    assert_eq!(
        (bad_backend.code, error_type(&bad_backend).as_deref()),
        (1, Some("invalid_argument"))
    );
    assert!(bad_backend.json["error"]["message"]
        .as_str()
        .unwrap()
        .contains("nobody/gpt-4o"));
    let no_key = run(&[
        "routing",
        "set",
        "--key-id",
        "key_missing",
        "--strategy",
        "fallback",
        "--backend",
        "gpt-4o-mini",
    ])
    .await;
    assert_eq!(no_key.code, 1);
    assert!(
        no_key
            .stderr
            .starts_with("error: key key_missing not found"),
        "{}",
        no_key.stderr
    );

    let get = run(&["routing", "get", &key_id]).await;
    assert_eq!(get.code, 0, "{}", get.stderr);
    assert!(get.stdout.contains("split, active"), "{}", get.stdout);
    assert!(
        get.stdout.contains("anthropic/claude-sonnet-4-5"),
        "{}",
        get.stdout
    );
    let off = run(&["routing", "deactivate", &key_id, "--json"]).await;
    assert_eq!((off.code, off.json["active"].as_bool()), (0, Some(false)));
    let on = run(&["routing", "activate", &key_id]).await;
    assert_eq!(on.code, 0, "{}", on.stderr);
    assert!(on.stdout.contains("activated"), "{}", on.stdout);

    let file = server.dir.path().join("routing.json");
    std::fs::write(
        &file,
        serde_json::json!({
            "strategy": "rules",
            "backends": [{"model": "gpt-4o-mini"}],
            "rules": [{"name": "team a", "match_json": {"headers": {"x-team": "a"}},
                       "backends": [{"model": "anthropic/claude-haiku-4-5"}]}]
        })
        .to_string(),
    )
    .unwrap();
    let from_file = run(&[
        "routing",
        "set",
        "--key-id",
        &key_id,
        "--json-file",
        file.to_str().unwrap(),
        "--json",
    ])
    .await;
    assert_eq!(from_file.code, 0, "{}", from_file.stderr);
    assert_eq!(
        from_file.json["rules"][0]["match_json"]["headers"]["x-team"],
        "a"
    );
    let list = run(&["routing", "list", "--json"]).await;
    assert_eq!(list.json.as_array().map(Vec::len), Some(1));
    assert_eq!(list.json[0]["strategy"], "rules");
    let list = run(&["routing", "list"]).await;
    let header: Vec<&str> = list
        .stdout
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(header, ["KEY", "STRATEGY", "ACTIVE", "BACKENDS", "RULES"]);

    let deleted = run(&["routing", "delete", &key_id, "--json"]).await;
    assert_eq!(deleted.json, serde_json::json!({"removed": key_id}));
    for verb in ["get", "delete", "activate"] {
        let gone = run(&["routing", verb, &key_id, "--json"]).await;
        assert_eq!(
            (gone.code, error_type(&gone).as_deref()),
            (1, Some("not_found")),
            "{verb}"
        );
    }

    // Unreachable control plane → 2, for each new verb family.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let down_url = format!("http://{closed}");
    for verb in [
        &["models", "update", "openai/gpt-4o", "--enable"][..],
        &["rules", "list"],
        &["routing", "list"],
    ] {
        let mut args = vec![
            "--api-url",
            down_url.as_str(),
            "--admin-token",
            "t",
            "--json",
        ];
        args.extend_from_slice(verb);
        let down = cli(&args, &[]).await;
        assert_eq!(
            (down.code, error_type(&down).as_deref()),
            (2, Some("network_error")),
            "{verb:?}"
        );
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_update_logs_filters_and_usage() {
    let server = TestServer::start().await;
    let url = server.url();
    let run = |args: &[&str]| {
        let mut all = vec!["--api-url", url.as_str(), "--admin-token", TOKEN];
        all.extend_from_slice(args);
        let all: Vec<String> = all.into_iter().map(str::to_string).collect();
        async move {
            let refs: Vec<&str> = all.iter().map(String::as_str).collect();
            cli(&refs, &[]).await
        }
    };
    let created = run(&["keys", "create", "--name", "a", "--json"]).await;
    let id = created.json["id"].as_str().unwrap().to_string();

    // keys update: fields set change; errors keep the exit-code contract.
    let updated = run(&[
        "keys",
        "update",
        &id,
        "--store-bodies",
        "true",
        "--name",
        "a-prod",
        "--json",
    ])
    .await;
    assert_eq!(updated.code, 0, "{}", updated.stderr);
    assert_eq!(updated.json["store_bodies"], true);
    assert_eq!(updated.json["name"], "a-prod");
    let off = run(&["keys", "update", &id, "--store-bodies", "false", "--json"]).await;
    assert_eq!(
        (off.code, &off.json["store_bodies"]),
        (0, &Value::Bool(false))
    );
    let missing = run(&["keys", "update", "key_nope", "--name", "x", "--json"]).await;
    assert_eq!(
        (missing.code, missing.json["error"]["type"].as_str()),
        (1, Some("not_found"))
    );
    let nothing = run(&["keys", "update", &id, "--json"]).await;
    assert_eq!(
        (nothing.code, nothing.json["error"]["type"].as_str()),
        (1, Some("usage_error"))
    );
    let not_bool = run(&["keys", "update", &id, "--store-bodies", "maybe"]).await;
    assert_eq!(not_bool.code, 1, "{}", not_bool.stderr);
    let bad_name = run(&["keys", "update", &id, "--name", " ", "--json"]).await;
    assert_eq!(
        (bad_name.code, bad_name.json["error"]["type"].as_str()),
        (1, Some("invalid_argument"))
    );

    let record = |rid: &str, status: u32, metadata: &str| UsageRecord {
        request_id: rid.into(),
        key_id: id.clone(),
        client_api: "chat.completions".into(),
        provider: "openai".into(),
        model: "gpt-4o".into(),
        requested_model: "openai/gpt-4o".into(),
        status,
        input_tokens: 1000,
        output_tokens: 200,
        cost_picos: 4_500_000_000,
        metadata_json: metadata.into(),
        ..UsageRecord::default()
    };
    let with_bodies = UsageRecord {
        request_body: b"{\"messages\":[]}".to_vec(),
        response_body: vec![0xff, 0xfe],
        ..record("req-a", 200, r#"{"user":"carol"}"#)
    };
    ingest(
        &server,
        vec![
            with_bodies,
            record("req-b", 503, r#"{"user":"dave"}"#),
            record("req-c", 200, ""),
        ],
    )
    .await;

    // keys list: the totals, as a table and as JSON.
    let table = run(&["keys", "list"]).await;
    assert_eq!(table.code, 0, "{}", table.stderr);
    let header = table.stdout.lines().next().unwrap();
    for column in [
        "REQUESTS",
        "IN",
        "OUT",
        "TOKENS",
        "SPEND",
        "LAST USED",
        "BODIES",
    ] {
        assert!(header.contains(column), "{header}");
    }
    assert!(table.stdout.contains("$0.009"), "{}", table.stdout);
    let listed = run(&["keys", "list", "--json"]).await;
    let k = &listed.json[0];
    assert_eq!(
        (
            &k["requests"],
            &k["failed_requests"],
            &k["total_tokens"],
            &k["spend_usd"]
        ),
        (
            &Value::from(3),
            &Value::from(1),
            &Value::from(2400),
            &Value::from("0.009")
        )
    );
    assert!(k["last_used_at_unix_ms"].as_i64().unwrap() > 0);
    let got = run(&["keys", "get", &id, "--json"]).await;
    assert_eq!(got.json["requests"], 3);
    let gone = run(&["keys", "get", "key_nope"]).await;
    assert_eq!(gone.code, 1);
    assert!(gone.stderr.contains("not found"), "{}", gone.stderr);

    // logs filters and one row with its bodies.
    let ids = |r: &Run| -> Vec<String> {
        r.json
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["request_id"].as_str().unwrap().to_string())
            .collect()
    };
    let failed = run(&["logs", "--status", "5xx", "--json"]).await;
    assert_eq!(failed.code, 0, "{}", failed.stderr);
    assert_eq!(ids(&failed), ["req-b"]);
    let search = run(&["logs", "--search", "CAROL", "--json"]).await;
    assert_eq!(ids(&search), ["req-a"]);
    assert_eq!(search.json[0]["metadata"]["user"], "carol");
    assert_eq!(search.json[0]["has_bodies"], true);
    let since = run(&[
        "logs",
        "--since",
        "1h",
        "--model",
        "openai/gpt-4o",
        "--json",
    ])
    .await;
    assert_eq!(ids(&since), ["req-c", "req-b", "req-a"]);
    let future = run(&["logs", "--since", "2999-01-01", "--json"]).await;
    assert!(ids(&future).is_empty());
    let paged = run(&["logs", "--status", "2xx", "--before", "req-c", "--json"]).await;
    assert_eq!(ids(&paged), ["req-a"]);
    for bad in [
        vec!["logs", "--status", "9xx", "--json"],
        vec!["logs", "--since", "last tuesday"],
    ] {
        let r = run(&bad).await;
        assert_eq!(r.code, 1, "{bad:?}: {}{}", r.stdout, r.stderr);
    }
    let detail = run(&["logs", "get", "req-a", "--json"]).await;
    assert_eq!(detail.code, 0, "{}", detail.stderr);
    assert_eq!(detail.json["request_body"], "{\"messages\":[]}");
    assert_eq!(detail.json["response_body"], "//4=");
    assert_eq!(detail.json["response_body_base64"], true);
    let human = run(&["logs", "get", "req-a"]).await;
    assert!(
        human.stdout.contains("request body:\n{\"messages\":[]}"),
        "{}",
        human.stdout
    );
    let unknown = run(&["logs", "get", "req-nope", "--json"]).await;
    assert_eq!(
        (unknown.code, unknown.json["error"]["type"].as_str()),
        (1, Some("not_found"))
    );

    // usage: seed 002's JSON, a breakdown, the human table, the errors.
    let seed = run(&["usage", "--days", "7", "--json"]).await;
    assert_eq!(seed.code, 0, "{}", seed.stderr);
    assert_eq!(
        seed.json,
        serde_json::json!({"range_days": 7, "total_requests": 2, "total_tokens_in": 2000,
                           "total_tokens_out": 400, "total_cost_usd": "0.009"})
    );
    let by_model = run(&["usage", "--by", "model", "--key", &id, "--json"]).await;
    assert_eq!(by_model.json["group_by"], "model");
    assert_eq!(by_model.json["failed_requests"], 1);
    assert_eq!(by_model.json["breakdown"][0]["model"], "gpt-4o");
    assert_eq!(by_model.json["breakdown"][0]["requests"], 3);
    let by_day = run(&["usage", "--days", "3", "--by", "day"]).await;
    assert_eq!(by_day.code, 0, "{}", by_day.stderr);
    let lines: Vec<&str> = by_day.stdout.lines().collect();
    assert!(lines[0].starts_with("last 3 days"), "{}", by_day.stdout);
    assert!(lines[1].starts_with("DAY"), "{}", by_day.stdout);
    assert_eq!(lines.len(), 5, "summary, header, 3 days: {}", by_day.stdout);
    assert!(lines[4].contains("$0.009"), "{}", by_day.stdout);
    for (args, kind) in [
        (vec!["usage", "--days", "0", "--json"], "usage_error"),
        (vec!["usage", "--days", "366", "--json"], "usage_error"),
        (vec!["usage", "--key", "key_nope", "--json"], "not_found"),
        (vec!["usage", "--by", "week", "--json"], "usage_error"),
    ] {
        let r = run(&args).await;
        assert_eq!(
            (r.code, r.json["error"]["type"].as_str()),
            (1, Some(kind)),
            "{args:?}: {}{}",
            r.stdout,
            r.stderr
        );
    }
    // The control plane gone: a network error, exit 2.
    server.stop().await;
    let down = cli(
        &["--api-url", &url, "--admin-token", TOKEN, "usage", "--json"],
        &[],
    )
    .await;
    assert_eq!(
        (down.code, down.json["error"]["type"].as_str()),
        (2, Some("network_error"))
    );
}

/// `--api-url URL --admin-token TOKEN` followed by `args`.
fn admin_args(url: &str, args: &[&str]) -> Vec<String> {
    ["--api-url", url, "--admin-token", TOKEN]
        .iter()
        .chain(args)
        .map(|s| s.to_string())
        .collect()
}

async fn run_args(args: Vec<String>, env: &[(&str, &str)]) -> Run {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    cli(&refs, env).await
}

#[track_caller]
fn assert_error(r: &Run, code: i32, kind: &str) {
    assert_eq!(
        (r.code, r.json["error"]["type"].as_str()),
        (code, Some(kind)),
        "{}{}",
        r.stdout,
        r.stderr
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn balances_workspaces_credit_and_topup_verbs() {
    let server = TestServer::start().await;
    let url = server.url();
    let run = |args: &[&str]| run_args(admin_args(&url, args), &[]);

    // workspaces create|list|get|update.
    let ws = run(&[
        "workspaces",
        "create",
        "team-a",
        "--balance",
        "20",
        "--rps",
        "5",
        "--json",
    ])
    .await;
    assert_eq!(ws.code, 0, "{}", ws.stderr);
    assert_eq!(ws.json["balance_usd"], "20");
    assert_eq!(ws.json["limits"]["rps"], 5);
    assert_eq!(ws.json["limits"]["hour_total_tokens"], Value::Null);
    assert_error(
        &run(&["workspaces", "create", "team-a", "--json"]).await,
        1,
        "already_exists",
    );
    assert_error(
        &run(&["workspaces", "create", "Bad WS", "--json"]).await,
        1,
        "invalid_argument",
    );
    assert_error(
        &run(&[
            "workspaces",
            "create",
            "team-c",
            "--balance",
            "lots",
            "--json",
        ])
        .await,
        1,
        "invalid_argument",
    );
    let bad_flag = run(&["workspaces", "create", "team-c", "--rps", "-1"]).await;
    assert_eq!(bad_flag.code, 1, "{}", bad_flag.stderr);
    let human = run(&["workspaces", "list"]).await;
    assert_eq!(human.code, 0, "{}", human.stderr);
    let header: Vec<&str> = human
        .stdout
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["ID", "KEYS", "BALANCE", "RPS", "TOKENS/H", "IN/H", "OUT/H", "CREATED"]
    );
    assert!(human.stdout.contains("$20"), "{}", human.stdout);
    let listed = run(&["workspaces", "list", "--json"]).await;
    assert!(listed
        .json
        .as_array()
        .unwrap()
        .iter()
        .any(|w| w["id"] == "team-a"));
    assert_error(
        &run(&["workspaces", "get", "nope", "--json"]).await,
        1,
        "not_found",
    );
    let updated = run(&[
        "workspaces",
        "update",
        "team-a",
        "--hour-tokens",
        "1000",
        "--json",
    ])
    .await;
    assert_eq!(updated.code, 0, "{}", updated.stderr);
    assert_eq!(
        (
            &updated.json["limits"]["rps"],
            &updated.json["limits"]["hour_total_tokens"]
        ),
        (&Value::from(5), &Value::from(1000))
    );
    assert_error(
        &run(&["workspaces", "update", "team-a", "--json"]).await,
        1,
        "usage_error",
    );
    let got = run(&["workspaces", "get", "team-a"]).await;
    assert!(
        got.stdout.starts_with("team-a: 0 active keys, balance $20"),
        "{}",
        got.stdout
    );

    // keys create --balance and limits; keys update limits; the BALANCE column.
    let metered = run(&[
        "keys",
        "create",
        "--name",
        "m",
        "--workspace",
        "team-a",
        "--balance",
        "5",
        "--rps",
        "2",
        "--json",
    ])
    .await;
    assert_eq!(metered.code, 0, "{}", metered.stderr);
    assert_eq!(metered.json["balance_usd"], "5");
    assert_eq!(metered.json["limits"]["rps"], 2);
    assert_eq!(metered.json["effective_limits"]["hour_total_tokens"], 1000);
    let id = metered.json["id"].as_str().unwrap().to_string();
    let raw = metered.json["raw"].as_str().unwrap().to_string();
    let free = run(&["keys", "create", "--name", "free", "--json"]).await;
    assert_eq!(free.json["balance_usd"], Value::Null);
    let free_id = free.json["id"].as_str().unwrap().to_string();
    assert_error(
        &run(&["keys", "create", "--name", "x", "--balance=-2", "--json"]).await,
        1,
        "invalid_argument",
    );
    let relimited = run(&[
        "keys",
        "update",
        &id,
        "--hour-output-tokens",
        "10",
        "--json",
    ])
    .await;
    assert_eq!(relimited.code, 0, "{}", relimited.stderr);
    assert_eq!(
        (
            &relimited.json["limits"]["rps"],
            &relimited.json["limits"]["hour_output_tokens"]
        ),
        (&Value::from(2), &Value::from(10))
    );
    let table = run(&["keys", "list"]).await;
    let lines: Vec<&str> = table.stdout.lines().collect();
    assert!(
        lines[0].contains("SPEND  BALANCE  LAST USED"),
        "{}",
        table.stdout
    );
    let row = |name: &str| {
        lines
            .iter()
            .find(|l| l.split_whitespace().nth(1) == Some(name))
            .unwrap()
            .split_whitespace()
            .collect::<Vec<_>>()
    };
    assert_eq!(row("m")[9], "$5", "{}", table.stdout);
    assert_eq!(row("free")[9], "—", "{}", table.stdout);
    let summary = run(&["keys", "get", &id]).await;
    assert!(
        summary
            .stdout
            .contains("balance $5, limits 2 rps, 1000 tokens/h, 10 output tokens/h"),
        "{}",
        summary.stdout
    );

    // balance: a key, a workspace, the total; errors.
    let b = run(&["balance", "--key", &id, "--json"]).await;
    assert_eq!(b.code, 0, "{}", b.stderr);
    assert_eq!(
        b.json,
        serde_json::json!({"balance_usd": "5", "currency": "USD", "owner": "key", "id": id,
                           "metered": true, "reserved_usd": "0", "available_usd": "5"})
    );
    assert!(
        b.stdout
            .trim_start()
            .starts_with("{\n  \"balance_usd\": \"5\",\n  \"currency\": \"USD\""),
        "{}",
        b.stdout
    );
    let w = run(&["balance", "--workspace", "team-a", "--json"]).await;
    assert_eq!(
        (&w.json["owner"], &w.json["balance_usd"]),
        (&Value::from("workspace"), &Value::from("20"))
    );
    let total = run(&["balance", "--json"]).await;
    assert_eq!(
        (&total.json["owner"], &total.json["balance_usd"]),
        (&Value::from("total"), &Value::from("5"))
    );
    let text = run(&["balance", "--key", &id]).await;
    assert_eq!(text.stdout.trim(), format!("key {id}: $5 USD"));
    let unmetered = run(&["balance", "--key", &free_id]).await;
    assert!(
        unmetered.stdout.contains("has no balance"),
        "{}",
        unmetered.stdout
    );
    let both = run(&["balance", "--key", &id, "--workspace", "team-a", "--json"]).await;
    assert_error(&both, 1, "usage_error");
    assert_error(
        &run(&["balance", "--key", "key_nope", "--json"]).await,
        1,
        "not_found",
    );

    // credit grant.
    let granted = run(&[
        "credit", "grant", "--key", &id, "--amount", "2.5", "--note", "trial", "--json",
    ])
    .await;
    assert_eq!(granted.code, 0, "{}", granted.stderr);
    assert_eq!(granted.json["balance_usd"], "7.5");
    let to_ws = run(&["credit", "grant", "--workspace", "team-a", "--amount", "1"]).await;
    assert_eq!(to_ws.code, 0, "{}", to_ws.stderr);
    assert!(
        to_ws.stdout.contains("balance now $21 USD"),
        "{}",
        to_ws.stdout
    );
    assert_error(
        &run(&["credit", "grant", "--amount", "1", "--json"]).await,
        1,
        "usage_error",
    );
    assert_error(
        &run(&[
            "credit",
            "grant",
            "--key",
            &id,
            "--workspace",
            "team-a",
            "--amount",
            "1",
            "--json",
        ])
        .await,
        1,
        "usage_error",
    );
    assert_error(
        &run(&["credit", "grant", "--key", &id, "--amount", "abc", "--json"]).await,
        1,
        "invalid_argument",
    );
    assert_error(
        &run(&[
            "credit",
            "grant",
            "--workspace",
            "nope",
            "--amount",
            "1",
            "--json",
        ])
        .await,
        1,
        "not_found",
    );

    // topup without a payment backend: a server error (503 → 3); user errors first.
    let none = run(&["topup", "--amount", "5", "--key", &id, "--json"]).await;
    assert_error(&none, 3, "server_error");
    assert!(
        none.json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("TOKENROUTER_PAYMENTS"),
        "{}",
        none.stdout
    );
    assert_error(
        &run(&["topup", "--amount", "5", "--json"]).await,
        1,
        "usage_error",
    );
    assert_error(
        &run(&["topup", "--amount", "abc", "--key", &id, "--json"]).await,
        1,
        "invalid_argument",
    );

    // As a gateway key (TOKENROUTER_API_KEY): over REST, for its own key only.
    let rest_url = format!("http://{}", server.rest);
    let as_key = |args: &[&str], key: &str| {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let env = [
            ("TOKENROUTER_API_KEY", key.to_string()),
            ("TOKENROUTER_REST_URL", rest_url.clone()),
        ];
        async move {
            let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
            run_args(args, &env).await
        }
    };
    let own = as_key(&["balance", "--json"], &raw).await;
    assert_eq!(own.code, 0, "{}{}", own.stdout, own.stderr);
    assert_eq!(
        (&own.json["id"], &own.json["balance_usd"]),
        (&Value::from(id.as_str()), &Value::from("7.5"))
    );
    let own_text = as_key(&["balance"], &raw).await;
    assert_eq!(own_text.stdout.trim(), format!("key {id}: $7.5 USD"));
    assert_error(
        &as_key(&["balance", "--key", &free_id, "--json"], &raw).await,
        1,
        "permission_denied",
    );
    assert_error(
        &as_key(&["balance", "--workspace", "team-a", "--json"], &raw).await,
        1,
        "permission_denied",
    );
    assert_error(
        &as_key(&["topup", "--amount", "5", "--json"], &raw).await,
        3,
        "server_error",
    );
    assert_error(
        &as_key(
            &["topup", "--amount", "5", "--key", &free_id, "--json"],
            &raw,
        )
        .await,
        1,
        "permission_denied",
    );
    assert_error(
        &as_key(&["topup", "--amount", "x", "--json"], &raw).await,
        1,
        "invalid_argument",
    );
    assert_error(
        &as_key(&["balance", "--json"], "sk-tr-not-a-real-key").await,
        1,
        "unauthenticated",
    );
    assert_error(
        &as_key(&["balance", "--json"], "not-a-key").await,
        1,
        "config_error",
    );
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let down = run_args(
        vec!["balance".into(), "--json".into()],
        &[
            ("TOKENROUTER_API_KEY", raw.as_str()),
            ("TOKENROUTER_REST_URL", &format!("http://{closed}")),
        ],
    )
    .await;
    assert_error(&down, 2, "network_error");
    server.stop().await;
}

/// A fake Stripe API: `POST /v1/checkout/sessions` records the `Authorization` header and the
/// form, and answers a checkout session `cs_test_<n>`.
struct FakeStripe {
    addr: std::net::SocketAddr,
    seen: std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>,
}

async fn fake_stripe() -> FakeStripe {
    let seen: std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>> = Default::default();
    let record = seen.clone();
    let app = axum::Router::new().route(
        "/v1/checkout/sessions",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
            let record = record.clone();
            async move {
                let auth = headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                let n = {
                    let mut seen = record.lock().unwrap();
                    seen.push((auth, body));
                    seen.len()
                };
                axum::Json(serde_json::json!({
                    "id": format!("cs_test_{n}"), "object": "checkout.session",
                    "url": format!("https://checkout.stripe.com/c/pay/cs_test_{n}"),
                    "expires_at": 1_900_000_000_i64, "payment_status": "unpaid",
                }))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    FakeStripe { addr, seen }
}

/// `tokenrouter serve` as a child process with `env` (the payment backend is configured from
/// the environment, which an in-process server would share with every other test).
struct Served {
    child: tokio::process::Child,
    grpc_url: String,
    rest: std::net::SocketAddr,
    dir: tempfile::TempDir,
}

impl Served {
    async fn start(env: &[(&str, &str)]) -> Served {
        let dir = tempfile::tempdir().unwrap();
        let free = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
        };
        let (grpc, rest) = (free(), free());
        let log = std::fs::File::create(dir.path().join("serve.log")).unwrap();
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_tokenrouter"));
        cmd.args(["serve", "--grpc-addr", &grpc.to_string()])
            .args(["--rest-addr", &rest.to_string()])
            .arg("--data-dir")
            .arg(dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .kill_on_drop(true);
        for var in [
            "DATABASE_URL",
            "TOKENROUTER_ADMIN_TOKEN",
            "TOKENROUTER_MASTER_KEY",
            "TOKENROUTER_DATA_DIR",
            "TOKENROUTER_PAYMENTS",
            "STRIPE_SECRET_KEY",
            "STRIPE_WEBHOOK_SECRET",
            "TOKENROUTER_STRIPE_API_BASE",
            "TOKENROUTER_TOPUP_SUCCESS_URL",
            "TOKENROUTER_TOPUP_CANCEL_URL",
        ] {
            cmd.env_remove(var);
        }
        cmd.env("TOKENROUTER_ADMIN_TOKEN", TOKEN);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut served = Served {
            child: cmd.spawn().unwrap(),
            grpc_url: format!("http://{grpc}"),
            rest,
            dir,
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            if let Ok((200, _)) = http(rest, "GET", "/healthz", &[], b"").await {
                return served;
            }
            if let Ok(Some(status)) = served.child.try_wait() {
                panic!("serve exited with {status}:\n{}", served.log());
            }
            assert!(
                std::time::Instant::now() < deadline,
                "serve did not start:\n{}",
                served.log()
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("serve.log")).unwrap_or_default()
    }

    async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// One HTTP/1.1 request; (status, body as JSON or a string).
async fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<(u16, Value)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).await?;
    s.write_all(body).await?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await?;
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let status = raw.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or_default();
    Ok((
        status,
        serde_json::from_str(body).unwrap_or(Value::String(body.to_string())),
    ))
}

#[tokio::test(flavor = "multi_thread")]
async fn stripe_topup_round_trip() {
    const WEBHOOK_SECRET: &str = "whsec_test_round_trip";
    let stripe = fake_stripe().await;
    let api_base = format!("http://{}", stripe.addr);
    let served = Served::start(&[
        ("TOKENROUTER_PAYMENTS", "stripe"),
        ("STRIPE_SECRET_KEY", "sk_test_fake"),
        ("STRIPE_WEBHOOK_SECRET", WEBHOOK_SECRET),
        ("TOKENROUTER_STRIPE_API_BASE", &api_base),
        ("TOKENROUTER_TOPUP_SUCCESS_URL", "https://example.test/paid"),
    ])
    .await;
    let url = served.grpc_url.clone();
    let run = |args: &[&str]| run_args(admin_args(&url, args), &[]);

    let key = run(&[
        "keys",
        "create",
        "--name",
        "buyer",
        "--balance",
        "0",
        "--json",
    ])
    .await;
    assert_eq!(key.code, 0, "{}{}", key.stderr, served.log());
    let id = key.json["id"].as_str().unwrap().to_string();
    let raw = key.json["raw"].as_str().unwrap().to_string();

    // topup (admin): the fake's session, from the documented form.
    let topup = run(&["topup", "--amount", "5", "--key", &id, "--json"]).await;
    assert_eq!(
        topup.code,
        0,
        "{}{}{}",
        topup.stdout,
        topup.stderr,
        served.log()
    );
    assert_eq!(
        topup.json,
        serde_json::json!({"checkout_url": "https://checkout.stripe.com/c/pay/cs_test_1",
            "session_id": "cs_test_1", "amount_usd": "5", "expires_at": 1_900_000_000_i64,
            "key_id": id})
    );
    let (auth, form) = stripe.seen.lock().unwrap()[0].clone();
    assert_eq!(auth, "Bearer sk_test_fake");
    let form: Vec<(String, String)> = serde_urlencoded::from_str(&form).unwrap();
    let field = |name: &str| {
        form.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("{name} not in {form:?}"))
    };
    assert_eq!(field("mode"), "payment");
    assert_eq!(field("line_items[0][price_data][currency]"), "usd");
    assert_eq!(field("line_items[0][price_data][unit_amount]"), "500");
    assert_eq!(field("line_items[0][quantity]"), "1");
    assert!(field("line_items[0][price_data][product_data][name]").contains(&id));
    assert_eq!(field("metadata[key_id]"), id);
    assert_eq!(field("client_reference_id"), id);
    assert_eq!(field("success_url"), "https://example.test/paid");
    assert!(field("cancel_url").starts_with("http"));

    // Not whole cents, or under Stripe's minimum: refused before calling Stripe.
    for amount in ["5.005", "0.25"] {
        let r = run(&["topup", "--amount", amount, "--key", &id, "--json"]).await;
        assert_error(&r, 1, "invalid_argument");
    }
    assert_eq!(stripe.seen.lock().unwrap().len(), 1);

    // A gateway key tops itself up (over REST); the text says a person must pay.
    let env = [
        ("TOKENROUTER_API_KEY", raw.as_str()),
        ("TOKENROUTER_REST_URL", &format!("http://{}", served.rest)),
    ];
    let own = run_args(vec!["topup".into(), "--amount".into(), "7.50".into()], &env).await;
    assert_eq!(own.code, 0, "{}{}", own.stdout, own.stderr);
    assert!(
        own.stdout
            .contains("\n  https://checkout.stripe.com/c/pay/cs_test_2\n"),
        "{}",
        own.stdout
    );
    assert!(
        own.stdout.contains("A person must open this URL"),
        "{}",
        own.stdout
    );
    assert!(own.stdout.contains("never opens or pays"), "{}", own.stdout);

    // The webhook: signed by the secret → credited once.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let event = |event_id: &str, session: &str, kind: &str, cents: i64| {
        serde_json::json!({
            "id": event_id, "object": "event", "type": kind,
            "data": {"object": {"id": session, "object": "checkout.session",
                "payment_status": "paid", "amount_total": cents, "currency": "usd",
                "metadata": {"key_id": id}, "client_reference_id": id}}
        })
        .to_string()
    };
    let deliver = |payload: String, signature: Option<String>| {
        let rest = served.rest;
        async move {
            let mut headers = vec![("Content-Type", "application/json; charset=utf-8")];
            if let Some(sig) = &signature {
                headers.push(("Stripe-Signature", sig.as_str()));
            }
            // No bearer token: the signature authenticates the call.
            http(
                rest,
                "POST",
                "/api/v1/webhooks/stripe",
                &headers,
                payload.as_bytes(),
            )
            .await
            .unwrap()
        }
    };
    let sign = |payload: &str| {
        tokenrouter_control_plane::payments::stripe::sign(WEBHOOK_SECRET, payload.as_bytes(), now)
    };
    let paid = event("evt_1", "cs_test_1", "checkout.session.completed", 500);
    let (status, body) = deliver(paid.clone(), Some(sign(&paid))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        serde_json::json!({"received": true, "outcome": "credited", "key_id": id,
                           "balance_usd": "5"})
    );
    let (status, body) = deliver(paid.clone(), Some(sign(&paid))).await;
    assert_eq!(
        (status, &body["outcome"]),
        (200, &Value::from("duplicate")),
        "{body}"
    );
    let balance = run(&["balance", "--key", &id, "--json"]).await;
    assert_eq!(balance.json["balance_usd"], "5", "credited once");

    // Tampered, wrongly signed, unsigned, stale: 400, nothing credited.
    let tampered = event("evt_2", "cs_test_1", "checkout.session.completed", 50_000);
    let (status, body) = deliver(tampered, Some(sign(&paid))).await;
    assert_eq!(
        (status, &body["error"]["type"]),
        (400, &Value::from("invalid_request_error")),
        "{body}"
    );
    let other = event("evt_3", "cs_test_2", "checkout.session.completed", 750);
    let wrong =
        tokenrouter_control_plane::payments::stripe::sign("whsec_other", other.as_bytes(), now);
    assert_eq!(deliver(other.clone(), Some(wrong)).await.0, 400);
    assert_eq!(deliver(other.clone(), None).await.0, 400);
    let stale = tokenrouter_control_plane::payments::stripe::sign(
        WEBHOOK_SECRET,
        other.as_bytes(),
        now - 3600,
    );
    assert_eq!(deliver(other.clone(), Some(stale)).await.0, 400);
    assert_eq!(
        deliver("garbage".into(), Some(sign("garbage"))).await.0,
        400
    );

    // A session this control plane did not create, or an amount that is not the session's.
    let foreign = event("evt_4", "cs_not_ours", "checkout.session.completed", 500);
    let (status, body) = deliver(foreign.clone(), Some(sign(&foreign))).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not created here"),
        "{body}"
    );
    let short = event("evt_5", "cs_test_2", "checkout.session.completed", 100);
    assert_eq!(deliver(short.clone(), Some(sign(&short))).await.0, 400);

    // Another event type: acknowledged, ignored.
    let expired = event("evt_6", "cs_test_2", "checkout.session.expired", 750);
    let (status, body) = deliver(expired.clone(), Some(sign(&expired))).await;
    assert_eq!(
        (status, &body["outcome"]),
        (200, &Value::from("ignored")),
        "{body}"
    );
    let balance = run(&["balance", "--key", &id, "--json"]).await;
    assert_eq!(balance.json["balance_usd"], "5");

    // The second session, paid: credited to the same key.
    let (status, body) = deliver(other.clone(), Some(sign(&other))).await;
    assert_eq!(
        (status, &body["balance_usd"]),
        (200, &Value::from("12.5")),
        "{body}"
    );
    let own_balance = run_args(vec!["balance".into(), "--json".into()], &env).await;
    assert_eq!(own_balance.json["balance_usd"], "12.5");

    // The payer's landing pages.
    let (status, body) = http(
        served.rest,
        "GET",
        "/topup/success?session_id=cs_test_1",
        &[],
        b"",
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    assert!(
        body.as_str().unwrap().contains("tokenrouter balance"),
        "{body}"
    );
    served.stop().await;
}

/// `firewall add|update|enable-template --workspace W`; `list` shows a WORKSPACE column and
/// `--json` the `workspace_id`.
#[tokio::test(flavor = "multi_thread")]
async fn firewall_rules_scoped_to_a_workspace_verbs() {
    let server = TestServer::start().await;
    let url = server.url();
    let run = |args: &[&str]| run_args(admin_args(&url, args), &[]);
    let key_a = run(&[
        "keys",
        "create",
        "--name",
        "a",
        "--workspace",
        "team-a",
        "--json",
    ])
    .await;
    assert_eq!(key_a.code, 0, "{}", key_a.stderr);
    let a = key_a.json["id"].as_str().unwrap().to_string();
    let key_b = run(&[
        "keys",
        "create",
        "--name",
        "b",
        "--workspace",
        "team-b",
        "--json",
    ])
    .await;
    let b = key_b.json["id"].as_str().unwrap().to_string();
    let add = |name: &'static str, extra: Vec<String>| {
        let mut args: Vec<String> = [
            "firewall",
            "add",
            "--name",
            name,
            "--scope",
            "prompt",
            "--type",
            "substring",
            "--pattern",
            "project falcon",
            "--action",
            "block",
            "--json",
        ]
        .map(String::from)
        .to_vec();
        args.extend(extra);
        run_args(admin_args(&url, &[]).into_iter().chain(args).collect(), &[])
    };
    let flags = |pairs: &[(&str, &str)]| -> Vec<String> {
        pairs
            .iter()
            .flat_map(|(f, v)| [f.to_string(), v.to_string()])
            .collect()
    };

    let team = add("team-a only", flags(&[("--workspace", "team-a")])).await;
    assert_eq!(team.code, 0, "{}", team.stderr);
    assert_eq!(team.json["workspace_id"], "team-a");
    assert_eq!(team.json["key_id"], "");
    let id = team.json["id"].to_string();
    assert_error(
        &add("r", flags(&[("--workspace", "team-z")])).await,
        1,
        "invalid_argument",
    );
    let wrong = add(
        "r",
        flags(&[("--workspace", "team-a"), ("--key", b.as_str())]),
    )
    .await;
    assert_error(&wrong, 1, "invalid_argument");
    assert!(
        wrong.json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("is in workspace team-b, not team-a"),
        "{}",
        wrong.stdout
    );
    let both = add(
        "a in team-a",
        flags(&[("--workspace", "team-a"), ("--key", a.as_str())]),
    )
    .await;
    assert_eq!(both.code, 0, "{}", both.stderr);
    assert_eq!(
        (&both.json["workspace_id"], &both.json["key_id"]),
        (&Value::from("team-a"), &Value::from(a.as_str()))
    );

    // Human output: the WORKSPACE column, `*` for every workspace; the sentence names it.
    let listed = run(&["firewall", "list"]).await;
    assert_eq!(listed.code, 0, "{}", listed.stderr);
    let header = listed.stdout.lines().next().unwrap();
    assert!(header.contains("WORKSPACE"), "{header}");
    assert!(
        listed
            .stdout
            .lines()
            .any(|l| l.contains("team-a only") && l.contains("team-a") && l.contains('*')),
        "{}",
        listed.stdout
    );
    let got = run(&["firewall", "get", &id]).await;
    assert!(got.stdout.contains("workspace team-a"), "{}", got.stdout);
    let listed = run(&["firewall", "list", "--json"]).await;
    let scoping: Vec<(String, String)> = listed
        .json
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap().to_string(),
                r["workspace_id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(scoping.contains(&("team-a only".into(), "team-a".into())));

    // update --workspace: moved, kept when not given, "" = every workspace.
    let moved = run(&["firewall", "update", &id, "--workspace", "team-b", "--json"]).await;
    assert_eq!(moved.json["workspace_id"], "team-b", "{}", moved.stderr);
    let kept = run(&["firewall", "update", &id, "--action", "warn", "--json"]).await;
    assert_eq!(kept.json["workspace_id"], "team-b", "{}", kept.stderr);
    assert_error(
        &run(&["firewall", "update", &id, "--workspace", "team-z", "--json"]).await,
        1,
        "invalid_argument",
    );
    let every = run(&["firewall", "update", &id, "--workspace", "", "--json"]).await;
    assert_eq!(every.json["workspace_id"], "", "{}", every.stderr);

    let email = run(&[
        "firewall",
        "enable-template",
        "email",
        "--workspace",
        "team-b",
        "--json",
    ])
    .await;
    assert_eq!(email.code, 0, "{}", email.stderr);
    assert_eq!(email.json["workspace_id"], "team-b");
    server.stop().await;
}

/// A stand-in for the gateway's `/v1/chat/completions`: the answer depends on the bearer key
/// (`good` 200, `revoked` 401, `broke` 402, `down` 503); the bodies it got are kept.
async fn fake_gateway() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::Mutex<Vec<Value>>>,
) {
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    let seen: std::sync::Arc<std::sync::Mutex<Vec<Value>>> = Default::default();
    let record = seen.clone();
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
            let record = record.clone();
            async move {
                record
                    .lock()
                    .unwrap()
                    .push(serde_json::from_str(&body).unwrap_or(Value::Null));
                let auth = headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                let envelope = |status: u16, t: &str, m: &str| {
                    (
                        StatusCode::from_u16(status).unwrap(),
                        axum::Json(serde_json::json!({
                            "error": {"type": t, "message": m, "code": status},
                            "request_id": "req_fake_err",
                        })),
                    )
                        .into_response()
                };
                match auth.as_str() {
                    "Bearer sk-tr-good" => (
                        [
                            ("x-tokenrouter-provider", "fake"),
                            ("x-tokenrouter-model", "m1"),
                            ("x-request-id", "req_fake"),
                        ],
                        axum::Json(serde_json::json!({
                            "id": "chatcmpl-1", "object": "chat.completion",
                            "choices": [{"index": 0, "finish_reason": "stop",
                                         "message": {"role": "assistant", "content": "OK"}}],
                        })),
                    )
                        .into_response(),
                    "Bearer sk-tr-revoked" => {
                        envelope(401, "authentication_error", "Invalid API key.")
                    }
                    "Bearer sk-tr-broke" => {
                        envelope(402, "insufficient_quota", "Balance exhausted.")
                    }
                    _ => envelope(503, "service_unavailable", "Try again shortly."),
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, seen)
}

#[tokio::test(flavor = "multi_thread")]
async fn env_and_test_verbs_with_the_cached_key() {
    let server = TestServer::start().await;
    let url = server.url();
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().to_str().unwrap().to_string();
    let (gateway, seen) = fake_gateway().await;
    let gateway_url = format!("http://{gateway}");
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let mut all: Vec<String> = vec!["--data-dir".into(), data_dir.clone()];
        all.extend(args.iter().map(|s| s.to_string()));
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        async move {
            let refs: Vec<&str> = all.iter().map(String::as_str).collect();
            let env: Vec<(&str, &str)> =
                env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            cli(&refs, &env).await
        }
    };

    // Nothing cached, no key: exit 1, the seed's message.
    let none = run(&["env"], &[]).await;
    assert_eq!(none.code, 1, "{}", none.stderr);
    assert!(none.stdout.is_empty());
    assert!(
        none.stderr
            .contains("no API key available: run `tokenrouter keys create` first"),
        "{}",
        none.stderr
    );
    assert_error(&run(&["env", "--json"], &[]).await, 1, "config_error");
    let none = run(&["test", "--gateway-url", &gateway_url, "--json"], &[]).await;
    assert_eq!((none.code, &none.json["ok"]), (1, &Value::Bool(false)));
    assert_eq!(none.json["error"]["type"], "config_error");

    // keys create caches the raw key; env and test then find it.
    let created = run(
        &[
            "--api-url",
            &url,
            "--admin-token",
            TOKEN,
            "keys",
            "create",
            "--name",
            "c",
            "--json",
        ],
        &[],
    )
    .await;
    assert_eq!(created.code, 0, "{}", created.stderr);
    let raw = created.json["raw"].as_str().unwrap().to_string();
    let cache = data.path().join("last_key");
    assert_eq!(std::fs::read_to_string(&cache).unwrap().trim(), raw);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&cache).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let env = run(&["env"], &[]).await;
    assert_eq!(env.code, 0, "{}", env.stderr);
    assert_eq!(
        env.stdout,
        format!("OPENAI_API_KEY={raw}\nOPENAI_BASE_URL=http://127.0.0.1:8080/v1\n")
    );
    let env = run(
        &["env", "--json"],
        &[("TOKENROUTER_GATEWAY_URL", "https://gw.example/v1")],
    )
    .await;
    assert_eq!(
        env.json,
        serde_json::json!({"OPENAI_API_KEY": raw, "OPENAI_BASE_URL": "https://gw.example/v1"})
    );
    // --no-cache keeps the cached key; TOKENROUTER_API_KEY beats the cache, --key beats both.
    let other = run(
        &[
            "--api-url",
            &url,
            "--admin-token",
            TOKEN,
            "keys",
            "create",
            "--name",
            "d",
            "--no-cache",
            "--json",
        ],
        &[],
    )
    .await;
    assert_eq!(other.code, 0, "{}", other.stderr);
    assert_eq!(std::fs::read_to_string(&cache).unwrap().trim(), raw);
    let env = run(
        &["env", "--json"],
        &[("TOKENROUTER_API_KEY", "sk-tr-fromenv")],
    )
    .await;
    assert_eq!(env.json["OPENAI_API_KEY"], "sk-tr-fromenv");
    let env = run(
        &["env", "--key", "sk-tr-flag", "--json"],
        &[("TOKENROUTER_API_KEY", "sk-tr-fromenv")],
    )
    .await;
    assert_eq!(env.json["OPENAI_API_KEY"], "sk-tr-flag");

    // test: the tiny completion, the serving model from the gateway's headers.
    let ok = run(
        &["test", "--key", "sk-tr-good", "--gateway-url", &gateway_url],
        &[],
    )
    .await;
    assert_eq!(ok.code, 0, "{}", ok.stderr);
    assert_eq!(ok.stdout, "OK connected (fake/m1)\nreply: OK\n");
    assert_eq!(
        seen.lock().unwrap().last().unwrap(),
        &serde_json::json!({"model": "openai/gpt-4o-mini",
                            "messages": [{"role": "user", "content": "Reply with OK."}],
                            "max_tokens": 16})
    );
    let ok = run(
        &[
            "test",
            "--key",
            "sk-tr-good",
            "--model",
            "demo/echo",
            "--json",
        ],
        &[("TOKENROUTER_GATEWAY_URL", gateway_url.as_str())],
    )
    .await;
    assert_eq!(ok.code, 0, "{}", ok.stderr);
    assert_eq!(
        (
            &ok.json["ok"],
            &ok.json["model"],
            &ok.json["provider"],
            &ok.json["request_id"],
            &ok.json["reply"]
        ),
        (
            &Value::Bool(true),
            &Value::from("fake/m1"),
            &Value::from("fake"),
            &Value::from("req_fake"),
            &Value::from("OK")
        )
    );
    assert!(ok.json["latency_ms"].is_u64());
    assert_eq!(seen.lock().unwrap().last().unwrap()["model"], "demo/echo");

    // Failures: 4xx → 1 (402 with the cue to top up), 5xx → 3, no answer → 2.
    for (key, status, code, kind) in [
        ("sk-tr-revoked", 401, 1, "authentication_error"),
        ("sk-tr-broke", 402, 1, "insufficient_quota"),
        ("sk-tr-down", 503, 3, "service_unavailable"),
    ] {
        let human = run(&["test", "--key", key, "--gateway-url", &gateway_url], &[]).await;
        assert_eq!(human.code, code, "{key}: {}", human.stderr);
        assert!(
            human.stderr.contains(&format!("HTTP {status} ({kind})")),
            "{}",
            human.stderr
        );
        assert_eq!(
            status == 402,
            human.stderr.contains("top up"),
            "{}",
            human.stderr
        );
        let json = run(
            &[
                "test",
                "--key",
                key,
                "--gateway-url",
                &gateway_url,
                "--json",
            ],
            &[],
        )
        .await;
        assert_eq!(json.code, code);
        assert_eq!(
            (
                &json.json["ok"],
                &json.json["status"],
                &json.json["error"]["type"]
            ),
            (
                &Value::Bool(false),
                &Value::from(status),
                &Value::from(kind)
            )
        );
        assert_eq!(json.json["request_id"], "req_fake_err");
    }
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let closed_url = format!("http://{closed}");
    let down = run(&["test", "--gateway-url", &closed_url, "--json"], &[]).await;
    assert_eq!(down.code, 2, "{}", down.stdout);
    assert_eq!(
        (&down.json["status"], &down.json["error"]["type"]),
        (&Value::Null, &Value::from("network_error"))
    );
    server.stop().await;
}
