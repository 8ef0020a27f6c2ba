//! `tokenrouter env` and `tokenrouter test` (seed 002): a gateway key plumbed into a project's
//! environment, and one tiny chat completion through the gateway to check the key end to end.
//! Also the last-key cache (`<data-dir>/last_key`) that `keys create` fills and both read.
//!
//! Key: `--key`, else `TOKENROUTER_API_KEY` / `--api-key`, else the cached last key. Gateway:
//! `--gateway-url` / `TOKENROUTER_GATEWAY_URL` (the Envoy listener, not the control plane).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Args;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, USER_AGENT};
use hyper::{HeaderMap, Method, Request};
use serde::Serialize;
use serde_json::{json, Value};
use tokenrouter_engine::keys::KEY_PREFIX;

use super::output::Output;
use super::{CliError, ErrorKind, Globals};
use crate::payments::http::{HttpClient, HttpError};

/// The file in the data directory holding the raw key `keys create` printed last.
pub const LAST_KEY_FILE: &str = "last_key";
pub const DEFAULT_GATEWAY_URL: &str = "http://127.0.0.1:8080";
pub const DEFAULT_TEST_MODEL: &str = "openai/gpt-4o-mini";
const TEST_PROMPT: &str = "Reply with OK.";
const TEST_MAX_TOKENS: u32 = 16;
/// How much of the reply `test` prints.
const REPLY_CHARS: usize = 200;
const TEST_TIMEOUT: Duration = Duration::from_secs(60);

const NO_KEY: &str = "no API key available: run `tokenrouter keys create` first (or pass --key \
                      sk-tr-… / set TOKENROUTER_API_KEY)";
const HINT_401: &str = "The key is missing, wrong or revoked: `tokenrouter keys list` shows the \
                        active keys.";
const HINT_402: &str = "The key's balance is exhausted: that's your cue to top up. Run \
                        `tokenrouter topup --amount USD` and hand the checkout URL it prints to a \
                        person (never pay it yourself), then run `tokenrouter test` again.";

/// The key and the gateway, shared by `env` and `test`.
#[derive(Debug, Args)]
pub struct GatewayArgs {
    /// The gateway key [default: TOKENROUTER_API_KEY / --api-key, else the key `keys create`
    /// cached in <data-dir>/last_key].
    #[arg(long, value_name = "sk-tr-…")]
    key: Option<String>,
    /// The gateway's URL (Envoy's listener; a trailing /v1 is ignored).
    #[arg(
        long,
        value_name = "URL",
        env = "TOKENROUTER_GATEWAY_URL",
        default_value = DEFAULT_GATEWAY_URL
    )]
    gateway_url: String,
}

#[derive(Debug, Args)]
pub struct EnvArgs {
    #[command(flatten)]
    gateway: GatewayArgs,
    /// Also print ANTHROPIC_API_KEY and ANTHROPIC_BASE_URL (the gateway root: the Anthropic
    /// SDK adds /v1/messages itself).
    #[arg(long)]
    anthropic: bool,
}

#[derive(Debug, Args)]
pub struct TestArgs {
    #[command(flatten)]
    gateway: GatewayArgs,
    /// The model to ask.
    #[arg(long, default_value = DEFAULT_TEST_MODEL)]
    model: String,
}

// ------------------------------------------------------------------------------------------
// The last-key cache

/// Where `keys create` left the raw key.
#[derive(Debug, PartialEq, Eq)]
pub enum Cached {
    Written(PathBuf),
    /// The data directory does not exist (the cache never creates one, so that a `keys
    /// create` run anywhere does not leave a `.tokenrouter` directory behind).
    NoDataDir,
}

/// Writes `raw` to `<data_dir>/last_key`, readable by the owner only, replacing any previous
/// key atomically.
pub fn cache_last_key(data_dir: &Path, raw: &str) -> std::io::Result<Cached> {
    if !data_dir.is_dir() {
        return Ok(Cached::NoDataDir);
    }
    let path = data_dir.join(LAST_KEY_FILE);
    let tmp = data_dir.join(format!(".{LAST_KEY_FILE}.{}.tmp", std::process::id()));
    // A leftover of a killed run could have other permissions: start afresh.
    let _ = fs::remove_file(&tmp);
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let written = options.open(&tmp).and_then(|mut file| {
        file.write_all(raw.as_bytes())?;
        file.write_all(b"\n")?;
        file.sync_all()
    });
    match written.and_then(|()| fs::rename(&tmp, &path)) {
        Ok(()) => Ok(Cached::Written(path)),
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// The cached key, if any (an empty file counts as none).
fn read_last_key(data_dir: &Path) -> Result<Option<String>, CliError> {
    let path = data_dir.join(LAST_KEY_FILE);
    match fs::read_to_string(&path) {
        Ok(s) => Ok(Some(s.trim().to_string()).filter(|k| !k.is_empty())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(CliError::config(format!(
            "cannot read {}: {e}",
            path.display()
        ))),
    }
}

/// The key to use: `flag`, else `env` (TOKENROUTER_API_KEY / --api-key), else the cached one.
/// Blank values count as absent. A value that is not a gateway key is an error (never echoed).
fn resolve_key(flag: Option<&str>, env: Option<&str>, data_dir: &Path) -> Result<String, CliError> {
    let given = |k: Option<&str>| {
        k.map(str::trim)
            .filter(|k| !k.is_empty())
            .map(str::to_string)
    };
    if let Some(key) = given(flag) {
        return checked(key, ErrorKind::Usage, "--key");
    }
    if let Some(key) = given(env) {
        return checked(key, ErrorKind::Config, "TOKENROUTER_API_KEY / --api-key");
    }
    match read_last_key(data_dir)? {
        Some(key) => {
            let from = data_dir.join(LAST_KEY_FILE).display().to_string();
            checked(key, ErrorKind::Config, &from)
        }
        None => Err(CliError::config(format!(
            "{NO_KEY}; no cached key in {}",
            data_dir.join(LAST_KEY_FILE).display()
        ))),
    }
}

fn checked(key: String, kind: ErrorKind, from: &str) -> Result<String, CliError> {
    if key.starts_with(KEY_PREFIX) && key.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(key)
    } else {
        Err(CliError::new(
            kind,
            format!("{from} is not a gateway key ({KEY_PREFIX}…)"),
        ))
    }
}

/// `url` without a trailing `/` or `/v1`, checked to be `http(s)://host…`.
fn gateway_base(url: &str) -> Result<String, CliError> {
    let trimmed = url.trim().trim_end_matches('/');
    let base = trimmed
        .strip_suffix("/v1")
        .unwrap_or(trimmed)
        .trim_end_matches('/');
    match base.parse::<hyper::Uri>() {
        Ok(uri)
            if matches!(uri.scheme_str(), Some("http" | "https"))
                && uri.host().is_some()
                && uri.query().is_none() =>
        {
            Ok(base.to_string())
        }
        _ => Err(CliError::new(
            ErrorKind::Usage,
            format!("invalid --gateway-url {url:?}: expected http(s)://host[:port]"),
        )),
    }
}

fn key_and_base(args: &GatewayArgs, g: &Globals) -> Result<(String, String), CliError> {
    let base = gateway_base(&args.gateway_url)?;
    let key = resolve_key(args.key.as_deref(), g.api_key.as_deref(), &g.data_dir)?;
    Ok((key, base))
}

// ------------------------------------------------------------------------------------------
// env

/// What `env` prints: `NAME=value` lines, or this object with `--json`.
#[derive(Debug, Serialize)]
struct EnvJson {
    #[serde(rename = "OPENAI_API_KEY")]
    openai_api_key: String,
    #[serde(rename = "OPENAI_BASE_URL")]
    openai_base_url: String,
    #[serde(rename = "ANTHROPIC_API_KEY", skip_serializing_if = "Option::is_none")]
    anthropic_api_key: Option<String>,
    #[serde(rename = "ANTHROPIC_BASE_URL", skip_serializing_if = "Option::is_none")]
    anthropic_base_url: Option<String>,
}

impl EnvJson {
    fn new(key: &str, base: &str, anthropic: bool) -> EnvJson {
        EnvJson {
            openai_api_key: key.to_string(),
            openai_base_url: format!("{base}/v1"),
            anthropic_api_key: anthropic.then(|| key.to_string()),
            anthropic_base_url: anthropic.then(|| base.to_string()),
        }
    }

    fn lines(&self) -> String {
        let mut out = format!(
            "OPENAI_API_KEY={}\nOPENAI_BASE_URL={}\n",
            self.openai_api_key, self.openai_base_url
        );
        if let (Some(key), Some(url)) = (&self.anthropic_api_key, &self.anthropic_base_url) {
            out.push_str(&format!(
                "ANTHROPIC_API_KEY={key}\nANTHROPIC_BASE_URL={url}\n"
            ));
        }
        out
    }
}

pub fn env(args: EnvArgs, g: &Globals, out: &Output) -> Result<(), CliError> {
    let (key, base) = key_and_base(&args.gateway, g)?;
    let vars = EnvJson::new(&key, &base, args.anthropic);
    out.print(&vars, || vars.lines())
}

// ------------------------------------------------------------------------------------------
// test

/// `test`'s success object.
#[derive(Debug, Serialize)]
struct TestOk {
    ok: bool,
    /// `provider/model` that answered (from `x-tokenrouter-provider` / `x-tokenrouter-model`),
    /// else the model asked for.
    model: String,
    provider: Option<String>,
    request_id: Option<String>,
    /// The first 200 characters of the reply.
    reply: String,
    latency_ms: u64,
}

impl TestOk {
    fn human(&self) -> String {
        let reply: Vec<&str> = self.reply.split_whitespace().collect();
        format!("OK connected ({})\nreply: {}", self.model, reply.join(" "))
    }
}

/// Why `test` failed: printed as `{"ok": false, "status", "error", "request_id"[, "hint"]}`
/// with `--json`.
#[derive(Debug)]
struct Failure {
    /// The gateway's HTTP status; `None` when there was no answer (or no request).
    status: Option<u16>,
    kind: ErrorKind,
    /// The gateway's `error` object when it sent its envelope, else `{"type", "message"}`.
    error: Value,
    request_id: Option<String>,
    hint: Option<&'static str>,
}

impl Failure {
    fn local(e: CliError) -> Failure {
        Failure {
            status: None,
            error: json!({"type": e.kind.as_str(), "message": e.message}),
            kind: e.kind,
            request_id: None,
            hint: None,
        }
    }

    /// An answer that is not a success.
    fn http(status: u16, headers: &HeaderMap, body: &[u8]) -> Failure {
        let kind = CliError::from_http(status, b"").kind;
        let parsed: Option<Value> = serde_json::from_slice(body).ok();
        let error = match parsed.as_ref().map(|v| &v["error"]) {
            Some(e @ Value::Object(_)) => e.clone(),
            _ => {
                let text = String::from_utf8_lossy(body);
                let text: String = text.trim().chars().take(REPLY_CHARS).collect();
                let message = if text.is_empty() {
                    format!("the gateway answered HTTP {status}")
                } else {
                    format!("the gateway answered HTTP {status}: {text}")
                };
                json!({"type": kind.as_str(), "message": message})
            }
        };
        let request_id = parsed
            .as_ref()
            .and_then(|v| v["request_id"].as_str())
            .or_else(|| header(headers, "x-request-id"))
            .map(str::to_string);
        let hint = match status {
            401 => Some(HINT_401),
            402 => Some(HINT_402),
            _ => None,
        };
        Failure {
            status: Some(status),
            kind,
            error,
            request_id,
            hint,
        }
    }

    fn message(&self) -> String {
        let text = self.error["message"].as_str().unwrap_or("").to_string();
        let mut out = match self.status {
            Some(status) => {
                let kind = self.error["type"].as_str().unwrap_or("error");
                format!("the gateway answered HTTP {status} ({kind}): {text}")
            }
            None => text,
        };
        if let Some(id) = &self.request_id {
            out.push_str(&format!(" [request {id}]"));
        }
        if let Some(hint) = self.hint {
            out.push('\n');
            out.push_str(hint);
        }
        out
    }

    fn json(&self) -> FailureJson<'_> {
        FailureJson {
            ok: false,
            status: self.status,
            error: &self.error,
            request_id: self.request_id.as_deref(),
            hint: self.hint,
        }
    }

    fn into_error(self) -> CliError {
        let error = CliError::new(self.kind, self.message());
        match serde_json::to_string(&self.json()) {
            Ok(json) => error.with_json(json),
            Err(_) => error,
        }
    }
}

/// `test`'s failure object, in this order.
#[derive(Debug, Serialize)]
struct FailureJson<'a> {
    ok: bool,
    status: Option<u16>,
    error: &'a Value,
    request_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    hint: Option<&'static str>,
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// The request body `test` sends.
fn test_body(model: &str) -> Value {
    json!({
        "model": model,
        "messages": [{"role": "user", "content": TEST_PROMPT}],
        "max_tokens": TEST_MAX_TOKENS,
    })
}

/// `test`'s verdict on the gateway's answer.
fn verdict(
    requested_model: &str,
    status: u16,
    headers: &HeaderMap,
    body: &[u8],
    latency_ms: u64,
) -> Result<TestOk, Failure> {
    if !(200..300).contains(&status) {
        return Err(Failure::http(status, headers, body));
    }
    let completion: Value = serde_json::from_slice(body).map_err(|e| Failure {
        status: Some(status),
        kind: ErrorKind::Server,
        error: json!({
            "type": ErrorKind::Server.as_str(),
            "message": format!("the gateway's answer is not a chat completion: {e}"),
        }),
        request_id: header(headers, "x-request-id").map(str::to_string),
        hint: None,
    })?;
    let provider = header(headers, "x-tokenrouter-provider").map(str::to_string);
    let model = match (&provider, header(headers, "x-tokenrouter-model")) {
        (Some(p), Some(m)) => format!("{p}/{m}"),
        _ => requested_model.to_string(),
    };
    let reply = completion["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or("")
        .trim()
        .chars()
        .take(REPLY_CHARS)
        .collect();
    let request_id = header(headers, "x-request-id")
        .or_else(|| completion["id"].as_str())
        .map(str::to_string);
    Ok(TestOk {
        ok: true,
        model,
        provider,
        request_id,
        reply,
        latency_ms,
    })
}

async fn run_test(args: &TestArgs, g: &Globals) -> Result<TestOk, Failure> {
    let (key, base) = key_and_base(&args.gateway, g).map_err(Failure::local)?;
    let model = args.model.trim();
    if model.is_empty() {
        return Err(Failure::local(CliError::new(
            ErrorKind::Usage,
            "--model must not be empty",
        )));
    }
    let url = format!("{base}/v1/chat/completions");
    let body = serde_json::to_vec(&test_body(model)).map_err(|e| {
        Failure::local(CliError::new(
            ErrorKind::Usage,
            format!("cannot encode JSON: {e}"),
        ))
    })?;
    let request = Request::builder()
        .method(Method::POST)
        .uri(&url)
        .header(AUTHORIZATION, format!("Bearer {key}"))
        .header(CONTENT_TYPE, "application/json")
        .header(ACCEPT, "application/json")
        .header(
            USER_AGENT,
            concat!("tokenrouter-cli/", env!("CARGO_PKG_VERSION")),
        )
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| {
            Failure::local(CliError::config(format!(
                "cannot build the request to {url}: {e}"
            )))
        })?;
    let http =
        HttpClient::new().map_err(|e| Failure::local(CliError::new(ErrorKind::Server, e)))?;
    let started = Instant::now();
    let answer = http.send_full(request, TEST_TIMEOUT).await.map_err(|e| {
        let m = match e {
            HttpError::Network(m) | HttpError::Body(m) => m,
        };
        Failure::local(CliError::new(
            ErrorKind::Network,
            format!("cannot reach the gateway at {base}: {m}"),
        ))
    })?;
    let latency_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    verdict(
        model,
        answer.status.as_u16(),
        &answer.headers,
        &answer.body,
        latency_ms,
    )
}

pub async fn test(args: TestArgs, g: &Globals, out: &Output) -> Result<(), CliError> {
    match run_test(&args, g).await {
        Ok(ok) => out.print(&ok, || ok.human()),
        Err(failure) => Err(failure.into_error()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const KEY: &str = "sk-tr-abcdefghijklmnop";

    fn dir_with_cached(key: Option<&str>) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        if let Some(key) = key {
            cache_last_key(dir.path(), key).unwrap();
        }
        dir
    }

    #[test]
    fn the_key_comes_from_the_flag_then_the_env_then_the_cache() {
        let dir = dir_with_cached(Some("sk-tr-cached"));
        let d = dir.path();
        assert_eq!(
            resolve_key(Some("sk-tr-flag"), Some("sk-tr-env"), d).unwrap(),
            "sk-tr-flag"
        );
        assert_eq!(
            resolve_key(None, Some(" sk-tr-env "), d).unwrap(),
            "sk-tr-env"
        );
        assert_eq!(
            resolve_key(Some("  "), Some(""), d).unwrap(),
            "sk-tr-cached"
        );
        assert_eq!(resolve_key(None, None, d).unwrap(), "sk-tr-cached");
    }

    #[test]
    fn no_key_anywhere_is_a_user_error_naming_keys_create() {
        let dir = dir_with_cached(None);
        let e = resolve_key(None, None, dir.path()).unwrap_err();
        assert_eq!(e.kind.exit_code(), 1);
        assert!(
            e.message
                .starts_with("no API key available: run `tokenrouter keys create` first"),
            "{}",
            e.message
        );
        // A blank cache file is no key either.
        std::fs::write(dir.path().join(LAST_KEY_FILE), "\n").unwrap();
        let e = resolve_key(None, None, dir.path()).unwrap_err();
        assert!(
            e.message.starts_with("no API key available"),
            "{}",
            e.message
        );
    }

    #[test]
    fn a_value_that_is_not_a_gateway_key_is_refused_without_echoing_it() {
        let dir = dir_with_cached(None);
        for (flag, env) in [
            (Some("sk-proj-secret"), None),
            (None, Some("sk-proj-secret")),
            (Some("sk-tr-with space"), None),
        ] {
            let e = resolve_key(flag, env, dir.path()).unwrap_err();
            assert_eq!(e.kind.exit_code(), 1);
            assert!(e.message.contains("is not a gateway key"), "{}", e.message);
            assert!(!e.message.contains("secret"), "{}", e.message);
        }
        std::fs::write(dir.path().join(LAST_KEY_FILE), "garbage").unwrap();
        let e = resolve_key(None, None, dir.path()).unwrap_err();
        assert!(e.message.contains(LAST_KEY_FILE), "{}", e.message);
    }

    #[test]
    fn the_cache_is_owner_only_replaced_and_never_creates_the_data_dir() {
        let dir = dir_with_cached(Some("sk-tr-first"));
        let written = cache_last_key(dir.path(), "sk-tr-second").unwrap();
        let path = dir.path().join(LAST_KEY_FILE);
        assert_eq!(written, Cached::Written(path.clone()));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "sk-tr-second\n");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // No temporary file left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

        let missing = dir.path().join("nope");
        assert_eq!(cache_last_key(&missing, KEY).unwrap(), Cached::NoDataDir);
        assert!(!missing.exists());
    }

    #[test]
    fn gateway_urls_are_normalised() {
        for (given, want) in [
            ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
            ("http://127.0.0.1:8080/", "http://127.0.0.1:8080"),
            ("https://gw.example/v1", "https://gw.example"),
            ("https://gw.example/v1/", "https://gw.example"),
            (" https://gw.example/llm ", "https://gw.example/llm"),
        ] {
            assert_eq!(gateway_base(given).unwrap(), want, "{given}");
        }
        for bad in ["", "127.0.0.1:8080", "ftp://h", "http://", "http://h/?a=b"] {
            let e = gateway_base(bad).unwrap_err();
            assert_eq!(e.kind, ErrorKind::Usage, "{bad}");
        }
    }

    #[test]
    fn env_prints_exactly_two_lines_or_the_seeds_object() {
        let vars = EnvJson::new(KEY, "http://127.0.0.1:8080", false);
        assert_eq!(
            vars.lines(),
            format!("OPENAI_API_KEY={KEY}\nOPENAI_BASE_URL=http://127.0.0.1:8080/v1\n")
        );
        assert_eq!(
            serde_json::to_string(&vars).unwrap(),
            format!(r#"{{"OPENAI_API_KEY":"{KEY}","OPENAI_BASE_URL":"http://127.0.0.1:8080/v1"}}"#)
        );

        let both = EnvJson::new(KEY, "https://gw.example", true);
        assert_eq!(
            both.lines(),
            format!(
                "OPENAI_API_KEY={KEY}\nOPENAI_BASE_URL=https://gw.example/v1\n\
                 ANTHROPIC_API_KEY={KEY}\nANTHROPIC_BASE_URL=https://gw.example\n"
            )
        );
        let value = serde_json::to_value(&both).unwrap();
        assert_eq!(value["ANTHROPIC_BASE_URL"], "https://gw.example");
        assert_eq!(value.as_object().unwrap().len(), 4);
    }

    #[test]
    fn the_test_body_is_the_tiny_completion() {
        assert_eq!(
            test_body("openai/gpt-4o-mini"),
            json!({"model": "openai/gpt-4o-mini",
                   "messages": [{"role": "user", "content": "Reply with OK."}],
                   "max_tokens": 16})
        );
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, hyper::header::HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn a_success_names_the_serving_model_and_cuts_the_reply() {
        let body = json!({"id": "chatcmpl-1", "choices": [{"message": {"role": "assistant",
                          "content": format!(" OK\n{}", "x".repeat(300))}}]});
        let ok = verdict(
            "openai/gpt-4o-mini",
            200,
            &headers(&[
                ("x-tokenrouter-provider", "openai"),
                ("x-tokenrouter-model", "gpt-4o-mini-2024"),
                ("x-request-id", "req_1"),
            ]),
            &serde_json::to_vec(&body).unwrap(),
            12,
        )
        .unwrap();
        assert_eq!(ok.model, "openai/gpt-4o-mini-2024");
        assert_eq!(ok.reply.chars().count(), 200);
        assert!(ok.reply.starts_with("OK\nxxx"));
        let human = ok.human();
        assert!(
            human.starts_with("OK connected (openai/gpt-4o-mini-2024)\nreply: OK xxx"),
            "{human}"
        );
        assert_eq!(human.lines().count(), 2);
        let value = serde_json::to_value(&ok).unwrap();
        let text = serde_json::to_string(&ok).unwrap();
        assert!(
            text.starts_with(
                r#"{"ok":true,"model":"openai/gpt-4o-mini-2024","provider":"openai","request_id":"req_1","reply":"OK"#
            ),
            "{text}"
        );
        assert!(text.ends_with(r#","latency_ms":12}"#), "{text}");
        assert_eq!(
            (
                &value["ok"],
                &value["provider"],
                &value["request_id"],
                &value["latency_ms"]
            ),
            (&json!(true), &json!("openai"), &json!("req_1"), &json!(12))
        );

        // Without the gateway's headers: the model asked for, the completion's id.
        let plain = verdict(
            "demo/echo",
            200,
            &HeaderMap::new(),
            &serde_json::to_vec(&body).unwrap(),
            1,
        )
        .unwrap();
        assert_eq!(
            (
                plain.model.as_str(),
                plain.provider,
                plain.request_id.as_deref()
            ),
            ("demo/echo", None, Some("chatcmpl-1"))
        );
    }

    #[test]
    fn failures_keep_the_envelope_and_map_to_exit_codes() {
        let envelope = |t: &str, m: &str, code: u16| {
            serde_json::to_vec(&json!({"error": {"type": t, "message": m, "code": code},
                                       "request_id": "req_9"}))
            .unwrap()
        };
        let cases = [
            (
                401,
                "authentication_error",
                "Invalid API key.",
                1,
                Some("keys list"),
            ),
            (
                402,
                "insufficient_quota",
                "Insufficient balance.",
                1,
                Some("top up"),
            ),
            (429, "rate_limit_error", "Slow down.", 1, None),
            (503, "service_unavailable", "Try again.", 3, None),
        ];
        for (status, t, m, exit, hint) in cases {
            let f =
                verdict("m", status, &HeaderMap::new(), &envelope(t, m, status), 5).unwrap_err();
            assert_eq!(f.kind.exit_code(), exit, "{status}");
            let message = f.message();
            assert!(
                message.starts_with(&format!("the gateway answered HTTP {status} ({t}): {m}")),
                "{message}"
            );
            assert!(message.contains("req_9"), "{message}");
            let json = serde_json::to_value(f.json()).unwrap();
            assert_eq!(json["ok"], false);
            assert_eq!(json["status"], status);
            assert_eq!(json["error"]["type"], t);
            assert_eq!(json["error"]["message"], m);
            assert_eq!(json["request_id"], "req_9");
            match hint {
                Some(h) => {
                    assert!(message.contains(h), "{message}");
                    assert!(json["hint"].as_str().unwrap().contains(h));
                }
                None => assert!(json.get("hint").is_none()),
            }
            let e = f.into_error();
            let printed = e.json.unwrap();
            assert!(
                printed.starts_with(&format!(r#"{{"ok":false,"status":{status},"error":{{"#)),
                "{printed}"
            );
        }
        assert!(HINT_402.contains("that's your cue to top up"));

        // Not the gateway's envelope (Envoy's own 503): the text, a server error.
        let f = verdict(
            "m",
            503,
            &headers(&[("x-request-id", "req_e")]),
            b"no healthy upstream",
            5,
        )
        .unwrap_err();
        assert_eq!(f.kind.exit_code(), 3);
        assert_eq!(f.error["type"], "server_error");
        assert!(
            f.message().contains("no healthy upstream"),
            "{}",
            f.message()
        );
        assert_eq!(f.request_id.as_deref(), Some("req_e"));
        // A 200 that is not JSON: the gateway failed.
        let f = verdict("m", 200, &HeaderMap::new(), b"<html>", 5).unwrap_err();
        assert_eq!(f.kind.exit_code(), 3);
    }

    #[test]
    fn local_failures_have_no_status() {
        let f = Failure::local(CliError::config(NO_KEY));
        let json = serde_json::to_value(f.json()).unwrap();
        assert_eq!(json["status"], Value::Null);
        assert_eq!(json["error"]["type"], "config_error");
        assert_eq!(f.kind.exit_code(), 1);
        let f = Failure::local(CliError::new(ErrorKind::Network, "refused"));
        assert_eq!(
            (f.kind.exit_code(), f.json().error["type"].clone()),
            (2, json!("network_error"))
        );
    }

    /// A closed port: no answer, exit 2.
    #[tokio::test]
    async fn a_closed_gateway_is_a_network_error() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap();
        let g = Globals {
            api_url: String::new(),
            admin_token: None,
            api_key: Some(KEY.into()),
            rest_url: String::new(),
            data_dir: PathBuf::from("/nonexistent"),
        };
        let args = TestArgs {
            gateway: GatewayArgs {
                key: None,
                gateway_url: format!("http://{closed}"),
            },
            model: DEFAULT_TEST_MODEL.into(),
        };
        let f = run_test(&args, &g).await.unwrap_err();
        assert_eq!(f.kind, ErrorKind::Network);
        assert_eq!(f.status, None);
        assert!(f.message().contains(&closed.to_string()), "{}", f.message());
    }
}
