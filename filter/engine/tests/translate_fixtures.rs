//! Runs every golden fixture under `tests/fixtures/<client>_<provider>/`.
//!
//! Case files, by name prefix:
//! - `request_*.in.json` (client body, model already rewritten by the edge) →
//!   `request_*.out.json` (`{"path", "set_headers", "default_headers", "remove_headers", "body"}`;
//!   `body` null when passed through unchanged; `content-length` left out of `set_headers`);
//! - `reply_*.in.json` (provider JSON reply) → `reply_*.out.json` (client JSON reply);
//! - `stream_*.in.sse` (provider stream) → `stream_*.out.sse` (client stream), fed whole and in
//!   chunks of 1 and 7 bytes, which must all give the same bytes;
//! - `error_<status>_*.in.json` (provider error body) → `error_<status>_*.out.json`.
//!
//! `reply_*` and `stream_*` cases may have `<case>.usage.json`: the usage the edge must read from
//! the client-format output. `TR_BLESS=1` writes the outputs instead of comparing (review them!).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use tokenrouter_engine::request::ClientApi;
use tokenrouter_engine::translate::{translator_for, AttemptTarget, Translator};
use tokenrouter_engine::upstream::{BaseUrl, ProviderKind};
use tokenrouter_engine::usage::{self, ChunkOutput, ClientStreamObserver, Usage};

const MODEL: &str = "test-model";
const REQUEST_ID: &str = "req_0123456789abcdef";
const NOW: u64 = 1_700_000_000;

fn client_of(name: &str) -> ClientApi {
    match name {
        "chat" => ClientApi::ChatCompletions,
        "responses" => ClientApi::Responses,
        "messages" => ClientApi::Messages,
        "embeddings" => ClientApi::Embeddings,
        other => panic!("unknown client dir {other}"),
    }
}

fn provider_of(name: &str) -> (ProviderKind, &'static str) {
    match name {
        "openai" => (ProviderKind::OpenAi, "https://api.openai.com/v1"),
        "mistral" => (ProviderKind::Mistral, "https://api.mistral.ai/v1"),
        "deepseek" => (ProviderKind::DeepSeek, "https://api.deepseek.com"),
        "azure" => (
            ProviderKind::Azure,
            "https://res.openai.azure.com/?api-version=2025-01-01-preview",
        ),
        "anthropic" => (ProviderKind::Anthropic, "https://api.anthropic.com"),
        "gemini" => (
            ProviderKind::Gemini,
            "https://generativelanguage.googleapis.com",
        ),
        other => panic!("unknown provider dir {other}"),
    }
}

/// A minimal client body, for cases that test only the response direction.
fn minimal_body(client: ClientApi, stream: bool) -> Vec<u8> {
    let v = match client {
        ClientApi::Responses => json!({"model": MODEL, "input": "hi", "stream": stream}),
        ClientApi::Embeddings => json!({"model": MODEL, "input": "hi"}),
        _ => json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                    "max_tokens": 16, "stream": stream}),
    };
    v.to_string().into_bytes()
}

fn started(
    client: ClientApi,
    kind: ProviderKind,
    base: &BaseUrl,
    body: &[u8],
    stream: bool,
) -> Box<dyn Translator> {
    let mut t = translator_for(client, kind).unwrap();
    let target = AttemptTarget {
        provider: "p1",
        kind,
        base_url: base,
        upstream_model: MODEL,
        stream,
        request_id: REQUEST_ID,
        now_unix_s: NOW,
    };
    t.request(body, &target).unwrap();
    t
}

/// Feeds `input` in chunks of `size` (0: whole) and returns what the client receives.
fn feed(t: &mut dyn Translator, input: &[u8], size: usize) -> Vec<u8> {
    let chunks: Vec<&[u8]> = if size == 0 || input.is_empty() {
        vec![input]
    } else {
        input.chunks(size).collect()
    };
    let mut out = Vec::new();
    for (i, c) in chunks.iter().enumerate() {
        match t.response_body(c, i + 1 == chunks.len()) {
            ChunkOutput::Unchanged => out.extend_from_slice(c),
            ChunkOutput::Replace(b) => out.extend_from_slice(&b),
        }
    }
    out
}

fn bless() -> bool {
    std::env::var_os("TR_BLESS").is_some()
}

fn check_json(out_path: &Path, got: &Value, failures: &mut Vec<String>) {
    if bless() {
        std::fs::write(out_path, serde_json::to_string_pretty(got).unwrap() + "\n").unwrap();
        return;
    }
    let want: Value = match std::fs::read(out_path) {
        Ok(b) => serde_json::from_slice(&b).unwrap(),
        Err(e) => return failures.push(format!("{}: {e}", out_path.display())),
    };
    if &want != got {
        failures.push(format!(
            "{}:\n got: {}\nwant: {}",
            out_path.display(),
            serde_json::to_string_pretty(got).unwrap(),
            serde_json::to_string_pretty(&want).unwrap()
        ));
    }
}

fn check_usage(
    case: &Path,
    client: ClientApi,
    output: &[u8],
    sse: bool,
    failures: &mut Vec<String>,
) {
    let path = case.with_extension("usage.json");
    let got = if sse {
        let mut o = ClientStreamObserver::new(client, false);
        for c in output.chunks(5) {
            o.feed(c, false);
        }
        o.feed(b"", true);
        o.usage()
    } else {
        usage::from_client_body(client, output)
    };
    let got = got.map(|u: Usage| {
        json!({"input": u.input, "output": u.output, "cached_input": u.cached_input,
               "reasoning": u.reasoning})
    });
    if !path.exists() && !bless() {
        return;
    }
    check_json(&path, &got.unwrap_or(Value::Null), failures);
}

fn cases(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    v.sort();
    v
}

/// `dir/name.in.json` → `dir/name`.
fn stem(p: &Path, suffix: &str) -> PathBuf {
    PathBuf::from(p.to_string_lossy().trim_end_matches(suffix).to_string())
}

#[test]
fn every_fixture() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut failures = Vec::new();
    let mut ran = 0;
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    dirs.sort();
    for dir in dirs {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let (client, provider) = name.split_once('_').unwrap();
        let client = client_of(client);
        let (kind, base) = provider_of(provider);
        let base = BaseUrl::parse(base).unwrap();
        for input in cases(&dir, ".in.json") {
            ran += 1;
            let case = stem(&input, ".in.json");
            let case_name = case.file_name().unwrap().to_string_lossy().to_string();
            let out_path = case.with_extension("out.json");
            let bytes = std::fs::read(&input).unwrap();
            if case_name.starts_with("request_") {
                let stream = serde_json::from_slice::<Value>(&bytes).unwrap()["stream"] == true;
                let mut t = translator_for(client, kind).unwrap();
                let target = AttemptTarget {
                    provider: "p1",
                    kind,
                    base_url: &base,
                    upstream_model: MODEL,
                    stream,
                    request_id: REQUEST_ID,
                    now_unix_s: NOW,
                };
                let got = match t.request(&bytes, &target) {
                    Ok(r) => json!({
                        "path": r.path,
                        "set_headers": r.set_headers.iter()
                            .filter(|(k, _)| k != "content-length")
                            .collect::<Vec<_>>(),
                        "default_headers": r.default_headers,
                        "remove_headers": r.remove_headers,
                        "body": r.body.map(|b| serde_json::from_slice::<Value>(&b).unwrap()),
                    }),
                    Err(e) => json!({"error_status": e.status(), "message": e.message}),
                };
                check_json(&out_path, &got, &mut failures);
            } else if let Some(rest) = case_name.strip_prefix("error_") {
                let status: u16 = rest.split('_').next().unwrap().parse().unwrap();
                let mut t = started(client, kind, &base, &minimal_body(client, false), false);
                let h = t.response_headers(status, Some("application/json"));
                assert!(
                    h.remove_headers.contains(&"content-length".to_string()),
                    "{case_name}"
                );
                let got: Value = serde_json::from_slice(&feed(t.as_mut(), &bytes, 7)).unwrap();
                check_json(&out_path, &got, &mut failures);
            } else {
                assert!(case_name.starts_with("reply_"), "{}", input.display());
                let mut t = started(client, kind, &base, &minimal_body(client, false), false);
                t.response_headers(200, Some("application/json"));
                let out = feed(t.as_mut(), &bytes, 0);
                let got: Value = match serde_json::from_slice(&out) {
                    Ok(v) => v,
                    Err(e) => {
                        failures.push(format!("{}: not JSON: {e}", input.display()));
                        continue;
                    }
                };
                check_json(&out_path, &got, &mut failures);
                check_usage(&case, client, &out, false, &mut failures);
            }
        }
        for input in cases(&dir, ".in.sse") {
            ran += 1;
            let case = stem(&input, ".in.sse");
            let out_path = case.with_extension("out.sse");
            let bytes = std::fs::read(&input).unwrap();
            let mut outputs = Vec::new();
            for size in [0, 1, 7] {
                let mut t = started(client, kind, &base, &minimal_body(client, true), true);
                t.response_headers(200, Some("text/event-stream"));
                outputs.push((size, feed(t.as_mut(), &bytes, size)));
            }
            let whole = outputs[0].1.clone();
            for (size, out) in &outputs[1..] {
                if *out != whole {
                    failures.push(format!(
                        "{}: chunk size {size} differs from whole:\n{}",
                        input.display(),
                        String::from_utf8_lossy(out)
                    ));
                }
            }
            if bless() {
                std::fs::write(&out_path, &whole).unwrap();
            } else {
                match std::fs::read(&out_path) {
                    Ok(want) if want == whole => {}
                    Ok(want) => failures.push(format!(
                        "{}:\n got:\n{}\nwant:\n{}",
                        out_path.display(),
                        String::from_utf8_lossy(&whole),
                        String::from_utf8_lossy(&want)
                    )),
                    Err(e) => failures.push(format!("{}: {e}", out_path.display())),
                }
            }
            check_usage(&case, client, &whole, true, &mut failures);
        }
    }
    assert!(ran > 0, "no fixtures found under {}", root.display());
    assert!(
        failures.is_empty(),
        "{} fixture(s) differ:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}
