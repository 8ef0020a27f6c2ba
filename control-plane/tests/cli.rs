//! The `tokenrouter` binary against an in-process control plane: JSON output and exit codes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{TestServer, TOKEN};
use serde_json::Value;

struct Run {
    code: i32,
    json: Value,
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
