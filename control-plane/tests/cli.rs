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
