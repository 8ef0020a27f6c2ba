//! Renders the Envoy bootstrap (`envoy/bootstrap.yaml`, embedded in the binary).
//!
//! The template uses `{{name}}` placeholders. String values are placed between double quotes
//! in the template and escaped here for a YAML double-quoted scalar (JSON string escaping is a
//! subset of it), so no value — the admin token included — can break out of its scalar.
//! Substitution is a single pass: a value that itself contains `{{…}}` is not expanded again.
//!
//! Addresses: Envoy binds its listener and admin interface to IP addresses, so `--listen` and
//! `--admin` take `IP:PORT` ([`parse_bind_address`]). The control plane may be an IP address or
//! a host name ([`ControlAddress`]), and several replicas are given separated by commas
//! ([`ControlEndpoints`]: endpoints of the one health-checked cluster). Only IPs give the
//! `tokenrouter_control` cluster type
//! `STATIC` (as always), a name `STRICT_DNS`, so a compose service name or a Kubernetes Service
//! (`controlplane:50051`, `tokenrouter-control.tokenrouter.svc.cluster.local:50051`) works.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;

/// The bootstrap template.
const TEMPLATE: &str = include_str!("../../envoy/bootstrap.yaml");

/// Extra listener buffer on top of the largest accepted request body (headers, framing).
const BUFFER_HEADROOM_BYTES: u64 = 64 * 1024;

/// Where Envoy reaches the control plane's gRPC port (ADS, FilterSync, edge calls).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ControlAddress {
    /// An IP address: a `STATIC` cluster.
    Ip(SocketAddr),
    /// A host name, resolved by Envoy: a `STRICT_DNS` cluster (IPv4 preferred).
    Dns {
        /// The name as given (validated as a DNS name).
        host: String,
        /// TCP port.
        port: u16,
    },
}

/// What `HOST:PORT` should look like, for error messages.
const CONTROL_SYNTAX: &str =
    "expected HOST:PORT, e.g. 127.0.0.1:50051, [::1]:50051 or controlplane:50051";

impl ControlAddress {
    /// The Envoy cluster type for this address.
    pub fn cluster_type(&self) -> &'static str {
        match self {
            ControlAddress::Ip(_) => "STATIC",
            ControlAddress::Dns { .. } => "STRICT_DNS",
        }
    }

    /// The host for `socket_address.address`: the IP (without brackets) or the name.
    pub fn host(&self) -> String {
        match self {
            ControlAddress::Ip(addr) => addr.ip().to_string(),
            ControlAddress::Dns { host, .. } => host.clone(),
        }
    }

    pub fn port(&self) -> u16 {
        match self {
            ControlAddress::Ip(addr) => addr.port(),
            ControlAddress::Dns { port, .. } => *port,
        }
    }
}

/// Every control-plane replica an Envoy may use (`--control a:50051,b:50051`): endpoints of
/// the one `tokenrouter_control` cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlEndpoints(pub Vec<ControlAddress>);

impl ControlEndpoints {
    /// `STATIC` when every address is an IP, else `STRICT_DNS` (which resolves each name and
    /// takes an IP as it is).
    pub fn cluster_type(&self) -> &'static str {
        if self.0.iter().all(|a| matches!(a, ControlAddress::Ip(_))) {
            "STATIC"
        } else {
            "STRICT_DNS"
        }
    }

    /// The `lb_endpoints` entries, indented for the template.
    fn yaml(&self) -> String {
        self.0
            .iter()
            .map(|a| {
                format!(
                    "        - endpoint:\n            address:\n              socket_address:\n                address: \"{}\"\n                port_value: {}",
                    yaml_dq_escape(&a.host()),
                    a.port()
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl From<ControlAddress> for ControlEndpoints {
    fn from(a: ControlAddress) -> Self {
        ControlEndpoints(vec![a])
    }
}

impl fmt::Display for ControlEndpoints {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&parts.join(","))
    }
}

/// Most replicas one bootstrap names.
const MAX_CONTROL_ENDPOINTS: usize = 16;

impl FromStr for ControlEndpoints {
    type Err = String;

    /// One or more [`ControlAddress`]es separated by commas, each once.
    fn from_str(s: &str) -> Result<Self, String> {
        let mut all: Vec<ControlAddress> = Vec::new();
        for part in s.split(',') {
            let address: ControlAddress = part.parse()?;
            if all.contains(&address) {
                return Err(format!("{address} is given twice"));
            }
            all.push(address);
        }
        if all.len() > MAX_CONTROL_ENDPOINTS {
            return Err(format!(
                "at most {MAX_CONTROL_ENDPOINTS} control-plane addresses (got {})",
                all.len()
            ));
        }
        Ok(ControlEndpoints(all))
    }
}

impl From<SocketAddr> for ControlAddress {
    fn from(addr: SocketAddr) -> Self {
        ControlAddress::Ip(addr)
    }
}

impl fmt::Display for ControlAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ControlAddress::Ip(addr) => write!(f, "{addr}"),
            ControlAddress::Dns { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

impl FromStr for ControlAddress {
    type Err = String;

    /// `IP:PORT` (IPv6 in brackets) or `NAME:PORT`; the port must not be 0.
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if let Ok(addr) = s.parse::<SocketAddr>() {
            if addr.port() == 0 {
                return Err(format!("{s:?}: the port must not be 0"));
            }
            return Ok(ControlAddress::Ip(addr));
        }
        if s.contains("://") || s.contains('/') {
            return Err(format!(
                "{s:?}: {CONTROL_SYNTAX} (no scheme or path: the bootstrap connects with gRPC)"
            ));
        }
        let Some((host, port)) = s.rsplit_once(':') else {
            return Err(format!("{s:?}: {CONTROL_SYNTAX} (the port is missing)"));
        };
        if host.contains(':') || host.starts_with('[') {
            return Err(format!(
                "{s:?}: {CONTROL_SYNTAX} (an IPv6 address goes in brackets: [::1]:50051)"
            ));
        }
        let port = match port.parse::<u16>() {
            Ok(p) if p != 0 => p,
            _ => return Err(format!("{s:?}: invalid port {port:?} (1-65535)")),
        };
        if host.parse::<IpAddr>().is_ok() {
            // Only reachable for odd forms SocketAddr refuses; be explicit rather than guess.
            return Err(format!("{s:?}: {CONTROL_SYNTAX}"));
        }
        validate_host_name(host).map_err(|reason| format!("{s:?}: {reason}"))?;
        Ok(ControlAddress::Dns {
            host: host.to_string(),
            port,
        })
    }
}

/// A host name for the control-plane cluster ([`crate::xds::validate_dns_name`], the check
/// provider base URLs get).
fn validate_host_name(host: &str) -> Result<(), String> {
    if host.strip_suffix('.').unwrap_or(host).is_empty() {
        return Err(format!("{CONTROL_SYNTAX} (the host is missing)"));
    }
    crate::xds::validate_dns_name(host)
}

/// `--listen` / `--admin`: Envoy binds to an IP address, so a host name is refused (with a
/// message saying so rather than clap's generic "invalid socket address syntax").
pub fn parse_bind_address(s: &str) -> Result<SocketAddr, String> {
    let s = s.trim();
    s.parse::<SocketAddr>().map_err(|_| {
        format!(
            "{s:?}: expected IP:PORT, e.g. 0.0.0.0:8080, 127.0.0.1:9901 or [::]:8080; Envoy \
             binds to an IP address, not a host name (only --control takes a host name)"
        )
    })
}

/// Everything the bootstrap needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootstrapParams {
    /// Gateway listener address.
    pub listen: SocketAddr,
    /// Envoy admin address.
    pub admin: SocketAddr,
    /// Control plane gRPC addresses (ADS and FilterSync): IPs or host names, one per replica.
    pub control: ControlEndpoints,
    /// Absolute path of `tokenrouter_filter.wasm`.
    pub wasm_path: PathBuf,
    /// Admin token, sent as `authorization: Bearer <token>` on ADS and in the sync config.
    pub admin_token: String,
    /// Envoy node id.
    pub node_id: String,
    /// Largest request body the edge filter accepts.
    pub max_request_body_bytes: u64,
    /// The edge as the native module (`libtokenrouter_native.so`, an Envoy dynamic module)
    /// instead of the wasm filter; see [`native_form`].
    pub native: bool,
}

/// The route's per-try timeout: `serve`'s default (`TOKENROUTER_PER_TRY_TIMEOUT_MS` unset), so
/// the edge sends `x-envoy-upstream-rq-per-try-timeout-ms` only when the operator chose another.
const ROUTE_PER_TRY_TIMEOUT_MS: u32 = tokenrouter_engine::routing::DEFAULT_PER_TRY_TIMEOUT_MS;

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

/// The sync singleton's and the edge's plugin configurations (JSON).
fn configurations(p: &BootstrapParams) -> (String, String) {
    // Built by hand (not `json!`) to keep the documented key order; strings are JSON-escaped.
    let sync_configuration = format!(
        r#"{{"role":"sync","control_cluster":"tokenrouter_control","token":{},"node_id":{}}}"#,
        json_string(&p.admin_token),
        json_string(&p.node_id),
    );
    let edge_configuration = format!(
        r#"{{"role":"edge","max_request_body_bytes":{},"control_cluster":"tokenrouter_control","token":{},"direct_clusters":true,"route_per_try_timeout_ms":{},"request_id_in_response":true,"auto_host_rewrite":true}}"#,
        p.max_request_body_bytes,
        json_string(&p.admin_token),
        ROUTE_PER_TRY_TIMEOUT_MS,
    );
    (sync_configuration, edge_configuration)
}

/// The values for every placeholder of the template.
fn values(p: &BootstrapParams) -> Vec<(&'static str, String)> {
    let wasm_path = p.wasm_path.to_string_lossy().into_owned();
    let (sync_configuration, edge_configuration) = configurations(p);
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
        ("control_cluster_type", p.control.cluster_type().to_string()),
        ("control_endpoints", p.control.yaml()),
        ("listen_address", p.listen.ip().to_string()),
        ("listen_port", p.listen.port().to_string()),
        ("buffer_limit_bytes", buffer_limit.to_string()),
        (
            "max_request_body_bytes",
            p.max_request_body_bytes.to_string(),
        ),
        (
            "route_per_try_timeout",
            format!(
                "{}.{:03}s",
                ROUTE_PER_TRY_TIMEOUT_MS / 1000,
                ROUTE_PER_TRY_TIMEOUT_MS % 1000
            ),
        ),
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
    let yaml = substitute(TEMPLATE, &values(p));
    if p.native {
        native_form(&yaml, p)
    } else {
        yaml
    }
}

/// Name of the native module: Envoy loads `lib<name>.so` from `ENVOY_DYNAMIC_MODULES_SEARCH_PATH`.
pub const NATIVE_MODULE: &str = "tokenrouter_native";

/// The edge filter of the template (from its first line to the router's), which the native
/// form replaces.
const EDGE_FILTER: (&str, &str) = (
    "          - name: tokenrouter.edge\n",
    "          - name: envoy.filters.http.router\n",
);
/// The wasm sync singleton of the template, which the native form runs in the module.
const SYNC_SERVICE: (&str, &str) = ("bootstrap_extensions:\n", "overload_manager:\n");

/// The bootstrap with the edge as the native module: the same plugin configuration, and the
/// sync singleton's, go to the module (`filter_config`), which runs the singleton on a thread
/// of its own and dials the control plane's endpoints itself; the wasm sync service goes.
/// Provider clusters' upstream filters are the module too (the node's metadata says so).
fn native_form(yaml: &str, p: &BootstrapParams) -> String {
    let (sync_configuration, edge_configuration) = configurations(p);
    let control: Vec<String> = p.control.0.iter().map(|a| format!("http://{a}")).collect();
    let module_configuration = format!(
        r#"{{"plugin":{edge_configuration},"sync":{sync_configuration},"clusters":{{"tokenrouter_control":{}}}}}"#,
        serde_json::Value::from(control)
    );
    let filter = format!(
        r#"          - name: tokenrouter.edge
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter
              dynamic_module_config:
                name: {NATIVE_MODULE}
                # Its threads and the SDK's thread locals live as long as the process.
                do_not_close: true
              filter_name: edge
              filter_config:
                "@type": type.googleapis.com/google.protobuf.StringValue
                value: "{}"
"#,
        yaml_dq_escape(&module_configuration)
    );
    let cut = |yaml: &str, (from, to): (&str, &str), with: &str| -> String {
        match (yaml.find(from), yaml.find(to)) {
            (Some(start), Some(end)) if start < end => {
                format!("{}{with}{}", &yaml[..start], &yaml[end..])
            }
            _ => yaml.to_string(),
        }
    };
    let native = cut(&cut(yaml, EDGE_FILTER, &filter), SYNC_SERVICE, "");
    // The control plane gives this node's provider clusters the module as their upstream
    // filter (`xds::META_NATIVE_MODULE`).
    let wasm_line = "    tokenrouter_wasm_path: ";
    match native.find(wasm_line) {
        Some(at) => format!(
            "{}    {}: \"{NATIVE_MODULE}\"\n{}",
            &native[..at],
            crate::xds::META_NATIVE_MODULE,
            &native[at..]
        ),
        None => native,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn params(wasm: &str) -> BootstrapParams {
        BootstrapParams {
            listen: "127.0.0.1:8080".parse().unwrap(),
            admin: "127.0.0.1:9901".parse().unwrap(),
            control: ControlAddress::Ip("[::1]:50051".parse().unwrap()).into(),
            wasm_path: PathBuf::from(wasm),
            admin_token: "0123456789abcdef".into(),
            node_id: "tokenrouter-node-1".into(),
            max_request_body_bytes: 10 * 1024 * 1024,
            native: false,
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
        // Envoy's own 413 names the same limit as the filter's.
        assert!(yaml.contains("exceeds the gateway's limit of 10485760 bytes."));
        // The route's per-try timeout is the one the edge is told it has.
        assert!(yaml.contains("per_try_timeout: 60.000s"));
        assert!(
            yaml.contains(r#"value: "{\"role\":\"edge\",\"max_request_body_bytes\":10485760,\"control_cluster\":\"tokenrouter_control\",\"token\":\"0123456789abcdef\",\"direct_clusters\":true,\"route_per_try_timeout_ms\":60000,\"request_id_in_response\":true,\"auto_host_rewrite\":true}""#)
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
    fn control_address_ip_or_host_name() {
        let ip: ControlAddress = "10.0.0.5:50051".parse().unwrap();
        assert_eq!(ip, ControlAddress::Ip("10.0.0.5:50051".parse().unwrap()));
        assert_eq!(
            (ip.cluster_type(), ip.host(), ip.port()),
            ("STATIC", "10.0.0.5".to_string(), 50051)
        );
        let v6: ControlAddress = "[fd00::1]:443".parse().unwrap();
        assert_eq!(
            (v6.cluster_type(), v6.host()),
            ("STATIC", "fd00::1".to_string())
        );
        assert_eq!(v6.to_string(), "[fd00::1]:443");
        for (given, host) in [
            ("controlplane:50051", "controlplane"),
            (
                "tokenrouter-control.tokenrouter.svc.cluster.local:50051",
                "tokenrouter-control.tokenrouter.svc.cluster.local",
            ),
            ("control_plane:50051", "control_plane"),
            ("localhost:50051", "localhost"),
            ("cp.example.com.:50051", "cp.example.com."),
            (" controlplane:50051 ", "controlplane"),
        ] {
            let a: ControlAddress = given.parse().unwrap();
            assert_eq!(
                a,
                ControlAddress::Dns {
                    host: host.to_string(),
                    port: 50051
                },
                "{given}"
            );
            assert_eq!(a.cluster_type(), "STRICT_DNS");
            assert_eq!(a.to_string(), format!("{host}:50051"));
        }
        assert_eq!(
            ControlAddress::from("127.0.0.1:1".parse::<SocketAddr>().unwrap()).cluster_type(),
            "STATIC"
        );
    }

    #[test]
    fn control_address_errors_say_what_is_expected() {
        for (given, expected) in [
            ("controlplane", "the port is missing"),
            ("controlplane:", "invalid port"),
            ("controlplane:0", "invalid port"),
            ("controlplane:65536", "invalid port"),
            ("127.0.0.1:0", "the port must not be 0"),
            (":50051", "the host is missing"),
            ("http://controlplane:50051", "no scheme or path"),
            ("controlplane:50051/x", "no scheme or path"),
            ("::1:50051", "in brackets"),
            ("[::1:50051", "in brackets"),
            ("-bad.example:50051", "invalid host name"),
            ("a..b:50051", "invalid host name"),
            ("space here:50051", "invalid host name"),
            ("999.1.1.1:50051", "invalid IP address"),
            ("", "the port is missing"),
        ] {
            let err = given.parse::<ControlAddress>().unwrap_err();
            assert!(err.contains(expected), "{given:?}: {err}");
        }
        let long = format!("{}:1", vec!["a".repeat(63); 5].join("."));
        assert!(long.parse::<ControlAddress>().unwrap_err().contains("253"));
    }

    #[test]
    fn bind_addresses_must_be_ips() {
        assert_eq!(
            parse_bind_address("0.0.0.0:8080").unwrap(),
            "0.0.0.0:8080".parse::<SocketAddr>().unwrap()
        );
        assert!(parse_bind_address("[::]:8080").is_ok());
        let err = parse_bind_address("envoy:8080").unwrap_err();
        assert!(err.contains("IP address, not a host name"), "{err}");
        assert!(parse_bind_address("0.0.0.0").is_err());
    }

    #[test]
    fn control_cluster_is_static_for_an_ip_and_strict_dns_for_a_name() {
        let yaml = render(&params("/x.wasm"));
        assert!(yaml.contains("- name: tokenrouter_control\n"));
        let cluster = |yaml: &str| {
            let start = yaml.find("- name: tokenrouter_control").unwrap();
            let end = start + yaml[start..].find("\n\n").unwrap();
            yaml[start..end].to_string()
        };
        let ip = cluster(&yaml);
        assert!(ip.contains("\n    type: STATIC\n"), "{ip}");

        let mut p = params("/etc/tokenrouter/tokenrouter_filter.wasm");
        p.control = "controlplane:50051".parse().unwrap();
        let yaml = render(&p);
        let dns = cluster(&yaml);
        assert!(dns.contains("\n    type: STRICT_DNS\n"), "{dns}");
        assert!(
            dns.contains("\n    dns_lookup_family: V4_PREFERRED\n"),
            "{dns}"
        );
        assert!(
            dns.contains("address: \"controlplane\"\n                port_value: 50051"),
            "{dns}"
        );
        // Nothing else depends on the control address: ADS and the wasm services name the
        // cluster, never the address.
        assert_eq!(yaml.matches("controlplane").count(), 1);
        assert_eq!(
            yaml.replace("type: STRICT_DNS", "type: STATIC")
                .replace("\"controlplane\"", "\"::1\""),
            render(&params("/etc/tokenrouter/tokenrouter_filter.wasm"))
        );
        assert!(
            yaml.contains("tokenrouter_wasm_path: \"/etc/tokenrouter/tokenrouter_filter.wasm\"")
        );
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
        // The IP form (STATIC) and the host name form (STRICT_DNS): validate mode does not
        // resolve the name, so this needs no DNS.
        for control in ["127.0.0.1:50051", "controlplane:50051"] {
            let mut p = params(wasm.to_str().unwrap());
            p.control = control.parse().unwrap();
            let cfg = dir.path().join("bootstrap.yaml");
            std::fs::write(&cfg, render(&p)).unwrap();
            if let Ok(keep) = std::env::var("TOKENROUTER_KEEP_BOOTSTRAP") {
                std::fs::copy(&cfg, keep).unwrap();
            }
            let out = std::process::Command::new(&envoy)
                .args(["--mode", "validate", "--log-level", "warn", "-c"])
                .arg(&cfg)
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                out.status.success() && stdout.contains("OK"),
                "envoy --mode validate failed for --control {control} ({}):\n{stdout}\n{stderr}",
                out.status
            );
        }
    }

    /// The JSON of the native module's `filter_config` in a rendered bootstrap.
    fn module_configuration(yaml: &str) -> serde_json::Value {
        let at = yaml.find("filter_config:").unwrap();
        let line = yaml[at..]
            .lines()
            .find(|l| l.trim_start().starts_with("value: "))
            .unwrap();
        let scalar = unquote(line.trim_start().trim_start_matches("value: "));
        serde_json::from_str(&scalar).unwrap()
    }

    /// A YAML double-quoted scalar's text (the renderer's escapes are JSON's).
    fn unquote(quoted: &str) -> String {
        serde_json::from_str(quoted).unwrap()
    }

    #[test]
    fn the_native_form_puts_the_edge_and_the_sync_singleton_in_the_module() {
        let mut p = params("/opt/tr/tokenrouter_filter.wasm");
        p.control = "127.0.0.1:50051,127.0.0.2:50051".parse().unwrap();
        let wasm = render(&p);
        p.native = true;
        let native = render(&p);
        // Only the edge filter, the sync service and the node's metadata differ.
        assert!(wasm.contains("envoy.bootstrap.wasm") && !native.contains("envoy.bootstrap.wasm"));
        assert!(
            !native.contains("envoy.filters.http.wasm.v3.Wasm"),
            "{native}"
        );
        assert!(native.contains("dynamic_modules.v3.DynamicModuleFilter"));
        assert!(native.contains(&format!("name: {NATIVE_MODULE}")));
        assert!(native.contains("tokenrouter_native_module: \"tokenrouter_native\"\n"));
        assert!(native.contains("tokenrouter_wasm_path: \"/opt/tr/tokenrouter_filter.wasm\""));
        assert!(
            native.contains("envoy.filters.http.router") && native.contains("overload_manager:")
        );
        let c = module_configuration(&native);
        assert_eq!(c["plugin"]["role"], "edge");
        assert_eq!(c["plugin"]["direct_clusters"], true);
        assert_eq!(c["plugin"]["token"], "0123456789abcdef");
        assert_eq!(c["sync"]["role"], "sync");
        assert_eq!(c["sync"]["node_id"], "tokenrouter-node-1");
        assert_eq!(c["sync"]["control_cluster"], "tokenrouter_control");
        // The module dials the replicas itself.
        assert_eq!(
            c["clusters"]["tokenrouter_control"],
            serde_json::json!(["http://127.0.0.1:50051", "http://127.0.0.2:50051"])
        );
    }

    #[test]
    fn several_replicas_are_endpoints_of_one_health_checked_cluster() {
        let mut p = params("/x.wasm");
        p.control = "127.0.0.1:50051, 127.0.0.2:50052".parse().unwrap();
        assert_eq!(p.control.to_string(), "127.0.0.1:50051,127.0.0.2:50052");
        let yaml = render(&p);
        assert!(yaml.contains("\n    type: STATIC\n"));
        assert!(yaml.contains("tcp_health_check: {}"));
        for (address, port) in [("127.0.0.1", 50051), ("127.0.0.2", 50052)] {
            assert!(
                yaml.contains(&format!(
                    "        - endpoint:\n            address:\n              socket_address:\n                address: \"{address}\"\n                port_value: {port}\n"
                )),
                "{yaml}"
            );
        }
        p.control = "127.0.0.1:50051,controlplane:50051".parse().unwrap();
        assert!(render(&p).contains("\n    type: STRICT_DNS\n"));
        let twice = "a:1,a:1".parse::<ControlEndpoints>().unwrap_err();
        assert!(twice.contains("given twice"), "{twice}");
        assert!("a:1,".parse::<ControlEndpoints>().is_err());
        let many = (1..=17)
            .map(|i| format!("h{i}:1"))
            .collect::<Vec<_>>()
            .join(",");
        assert!(many
            .parse::<ControlEndpoints>()
            .unwrap_err()
            .contains("at most 16"));
    }
}
