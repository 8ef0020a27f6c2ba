//! Renders the Envoy bootstrap (`envoy/bootstrap.yaml`, embedded in the binary).
//!
//! The template uses `{{name}}` placeholders. String values are placed between double quotes
//! in the template and escaped here for a YAML double-quoted scalar (JSON string escaping is a
//! subset of it), so no value — the admin token included — can break out of its scalar.
//! Substitution is a single pass: a value that itself contains `{{…}}` is not expanded again.

use std::net::SocketAddr;
use std::path::PathBuf;

/// The bootstrap template.
const TEMPLATE: &str = include_str!("../../envoy/bootstrap.yaml");

/// Extra listener buffer on top of the largest accepted request body (headers, framing).
const BUFFER_HEADROOM_BYTES: u64 = 64 * 1024;

/// Everything the bootstrap needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootstrapParams {
    /// Gateway listener address.
    pub listen: SocketAddr,
    /// Envoy admin address.
    pub admin: SocketAddr,
    /// Control plane gRPC address (ADS and FilterSync).
    pub control: SocketAddr,
    /// Absolute path of `tokenrouter_filter.wasm`.
    pub wasm_path: PathBuf,
    /// Admin token, sent as `authorization: Bearer <token>` on ADS and in the sync config.
    pub admin_token: String,
    /// Envoy node id.
    pub node_id: String,
    /// Largest request body the edge filter accepts.
    pub max_request_body_bytes: u64,
}

/// `s` as a JSON string literal, quotes included.
fn json_string(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

/// Escapes `s` for the inside of a YAML (or JSON) double-quoted scalar.
fn yaml_dq_escape(s: &str) -> String {
    // serde_json escapes `"`, `\` and control characters (as `\n`, `\t`, `\u00XX`), all of
    // which YAML double-quoted scalars understand.
    let quoted = json_string(s);
    quoted
        .strip_prefix('"')
        .and_then(|q| q.strip_suffix('"'))
        .unwrap_or(&quoted)
        .to_string()
}

/// The values for every placeholder of the template.
fn values(p: &BootstrapParams) -> Vec<(&'static str, String)> {
    let wasm_path = p.wasm_path.to_string_lossy().into_owned();
    // Built by hand (not `json!`) to keep the documented key order; strings are JSON-escaped.
    let sync_configuration = format!(
        r#"{{"role":"sync","control_cluster":"tokenrouter_control","token":{},"node_id":{}}}"#,
        json_string(&p.admin_token),
        json_string(&p.node_id),
    );
    let edge_configuration = format!(
        r#"{{"role":"edge","max_request_body_bytes":{},"control_cluster":"tokenrouter_control","token":{}}}"#,
        p.max_request_body_bytes,
        json_string(&p.admin_token),
    );
    let buffer_limit = p
        .max_request_body_bytes
        .saturating_add(BUFFER_HEADROOM_BYTES)
        .min(u64::from(u32::MAX)); // the proto field is a UInt32Value
    vec![
        ("node_id", yaml_dq_escape(&p.node_id)),
        ("wasm_path", yaml_dq_escape(&wasm_path)),
        ("admin_address", p.admin.ip().to_string()),
        ("admin_port", p.admin.port().to_string()),
        ("admin_token", yaml_dq_escape(&p.admin_token)),
        ("control_address", p.control.ip().to_string()),
        ("control_port", p.control.port().to_string()),
        ("listen_address", p.listen.ip().to_string()),
        ("listen_port", p.listen.port().to_string()),
        ("buffer_limit_bytes", buffer_limit.to_string()),
        ("edge_configuration", yaml_dq_escape(&edge_configuration)),
        ("sync_configuration", yaml_dq_escape(&sync_configuration)),
    ]
}

/// Replaces every `{{name}}` of `template` with its value, in one pass. Unknown placeholders
/// are left as they are.
fn substitute(template: &str, values: &[(&str, String)]) -> String {
    let mut out = String::with_capacity(template.len() + 512);
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            out.push_str(&rest[start..]);
            return out;
        };
        let name = after[..end].trim();
        match values.iter().find(|(k, _)| *k == name) {
            Some((_, v)) => out.push_str(v),
            None => out.push_str(&rest[start..start + 2 + end + 2]),
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    out
}

/// Renders the Envoy bootstrap YAML for `p`.
pub fn render(p: &BootstrapParams) -> String {
    substitute(TEMPLATE, &values(p))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn params(wasm: &str) -> BootstrapParams {
        BootstrapParams {
            listen: "127.0.0.1:8080".parse().unwrap(),
            admin: "127.0.0.1:9901".parse().unwrap(),
            control: "[::1]:50051".parse().unwrap(),
            wasm_path: PathBuf::from(wasm),
            admin_token: "0123456789abcdef".into(),
            node_id: "tokenrouter-node-1".into(),
            max_request_body_bytes: 10 * 1024 * 1024,
        }
    }

    #[test]
    fn every_placeholder_is_filled() {
        let yaml = render(&params("/opt/tr/tokenrouter_filter.wasm"));
        assert!(!yaml.contains("{{"), "unfilled placeholder:\n{yaml}");
        // Every value is used by the template.
        for (k, _) in values(&params("/x")) {
            assert!(
                TEMPLATE.contains(&format!("{{{{{k}}}}}")),
                "unused value {k}"
            );
        }
    }

    #[test]
    fn render_contains_the_values() {
        let p = params("/opt/tr/tokenrouter_filter.wasm");
        let yaml = render(&p);
        assert!(yaml.contains("id: \"tokenrouter-node-1\""));
        assert!(yaml.contains("tokenrouter_wasm_path: \"/opt/tr/tokenrouter_filter.wasm\""));
        assert!(yaml.contains("filename: \"/opt/tr/tokenrouter_filter.wasm\""));
        assert!(yaml.contains("value: \"Bearer 0123456789abcdef\""));
        assert!(yaml.contains("address: \"127.0.0.1\"\n      port_value: 9901"));
        assert!(yaml.contains("address: \"::1\"\n                port_value: 50051"));
        assert!(yaml.contains("address: \"127.0.0.1\"\n        port_value: 8080"));
        let limit = 10 * 1024 * 1024 + 64 * 1024;
        assert!(yaml.contains(&format!("per_connection_buffer_limit_bytes: {limit}")));
        assert!(
            yaml.contains(r#"value: "{\"role\":\"edge\",\"max_request_body_bytes\":10485760,\"control_cluster\":\"tokenrouter_control\",\"token\":\"0123456789abcdef\"}""#)
        );
        assert!(yaml.contains(
            r#"value: "{\"role\":\"sync\",\"control_cluster\":\"tokenrouter_control\",\"token\":\"0123456789abcdef\",\"node_id\":\"tokenrouter-node-1\"}""#
        ));
    }

    #[test]
    fn values_are_escaped_and_not_expanded_twice() {
        let mut p = params("/tmp/a \"b\"\\c.wasm");
        p.admin_token = "x\"\n{{node_id}}".into();
        let yaml = render(&p);
        assert!(yaml.contains(r#"filename: "/tmp/a \"b\"\\c.wasm""#));
        assert!(yaml.contains(r#"value: "Bearer x\"\n{{node_id}}""#));
        // Inside the sync JSON the token is JSON-escaped, then YAML-escaped.
        assert!(yaml.contains(r#"\"token\":\"x\\\"\\n{{node_id}}\""#));
    }

    #[test]
    fn substitute_edge_cases() {
        let v = vec![("a", "1".to_string())];
        assert_eq!(substitute("x{{a}}y{{ a }}z", &v), "x1y1z");
        assert_eq!(substitute("{{b}}{{a}}", &v), "{{b}}1");
        assert_eq!(substitute("open {{a", &v), "open {{a");
    }

    #[test]
    fn huge_body_limit_saturates() {
        let mut p = params("/x.wasm");
        p.max_request_body_bytes = u64::MAX;
        let yaml = render(&p);
        assert!(yaml.contains(&format!("per_connection_buffer_limit_bytes: {}", u32::MAX)));
    }

    /// The smallest module Envoy's validate mode accepts as Proxy-Wasm code:
    /// `(module (memory (export "memory") 1) (func (export "proxy_abi_version_0_2_1"))
    ///  (func (export "malloc") (param i32) (result i32) i32.const 1024))`.
    const MINIMAL_PROXY_WASM: &[u8] = b"\0asm\x01\0\0\0\
        \x01\x0f\x03\x60\0\0\x60\x01\x7f\x01\x7f\x60\x02\x7f\x7f\x01\x7f\
        \x03\x03\x02\0\x01\
        \x05\x03\x01\0\x01\
        \x07\x2d\x03\x06memory\x02\0\x17proxy_abi_version_0_2_1\0\0\x06malloc\0\x01\
        \x0a\x0a\x02\x02\0\x0b\x05\0\x41\x80\x08\x0b";

    /// Runs `envoy --mode validate` on a rendered bootstrap when `ENVOY_BIN` is set.
    #[test]
    fn envoy_validates_rendered_bootstrap() {
        let Ok(envoy) = std::env::var("ENVOY_BIN") else {
            eprintln!("ENVOY_BIN not set; skipping envoy --mode validate");
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let wasm = dir.path().join("tokenrouter_filter.wasm");
        // Validate mode loads the wasm code and checks its Proxy-Wasm ABI; a real filter build
        // can be used instead with TOKENROUTER_WASM.
        match std::env::var("TOKENROUTER_WASM") {
            Ok(real) => std::fs::copy(real, &wasm).map(|_| ()).unwrap(),
            Err(_) => std::fs::write(&wasm, MINIMAL_PROXY_WASM).unwrap(),
        }
        let mut p = params(wasm.to_str().unwrap());
        p.control = "127.0.0.1:50051".parse().unwrap();
        let cfg = dir.path().join("bootstrap.yaml");
        std::fs::write(&cfg, render(&p)).unwrap();
        if let Ok(keep) = std::env::var("TOKENROUTER_KEEP_BOOTSTRAP") {
            std::fs::copy(&cfg, keep).unwrap();
        }
        let out = std::process::Command::new(envoy)
            .args(["--mode", "validate", "--log-level", "warn", "-c"])
            .arg(&cfg)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stdout.contains("OK"),
            "envoy --mode validate failed ({}):\n{stdout}\n{stderr}",
            out.status
        );
    }
}
