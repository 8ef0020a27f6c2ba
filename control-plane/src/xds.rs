//! Aggregated Discovery Service (state of the world, CDS only) for the Envoys.
//!
//! Every provider becomes one cluster `tr_provider_<name>` (see ARCHITECTURE.md, "Provider
//! clusters (CDS)"). The set of clusters comes from a [`tokio::sync::watch`] channel; whenever
//! it changes, every connected Envoy receives the complete new set (removed providers simply
//! disappear, as state-of-the-world xDS requires).
//!
//! The per-stream protocol logic lives in [`AdsStream`], a pure state machine without I/O, so
//! that it can be unit-tested; [`Ads`] only moves messages between tonic and that machine.

use std::collections::HashMap;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;

use envoy_types::pb::envoy::config::cluster::v3::{cluster, Cluster};
use envoy_types::pb::envoy::config::core::v3::{
    address, async_data_source, data_source, socket_address, transport_socket, Address,
    AsyncDataSource, DataSource, Http1ProtocolOptions, Http2ProtocolOptions, Metadata, Node,
    SocketAddress, TransportSocket,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    lb_endpoint, ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::envoy::extensions::clusters::aggregate::v3::ClusterConfig as AggregateClusterConfig;
use envoy_types::pb::envoy::extensions::dynamic_modules::v3::DynamicModuleConfig;
use envoy_types::pb::envoy::extensions::filters::http::dynamic_modules::v3::DynamicModuleFilter;
use envoy_types::pb::envoy::extensions::filters::http::upstream_codec::v3::UpstreamCodec;
use envoy_types::pb::envoy::extensions::filters::http::wasm::v3::Wasm;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_filter, HttpFilter,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    common_tls_context, subject_alt_name_matcher, CertificateValidationContext, CommonTlsContext,
    SubjectAltNameMatcher, UpstreamTlsContext,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    http_protocol_options, HttpProtocolOptions,
};
use envoy_types::pb::envoy::extensions::wasm::v3::{
    plugin_config, FailurePolicy, PluginConfig, VmConfig,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{string_matcher, StringMatcher};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryService;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::{
    value, Any, BoolValue, Duration, StringValue, Struct as PbStruct, Value as PbValue,
};
use envoy_types::util::pack_any;
use tokenrouter_engine::routing;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

/// Type URL of CDS resources.
pub const CLUSTER_TYPE_URL: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
/// Node metadata key carrying the absolute path of `tokenrouter_filter.wasm`.
pub const META_WASM_PATH: &str = "tokenrouter_wasm_path";
/// Node metadata key carrying the CA bundle used to verify providers (optional).
pub const META_CA_FILE: &str = "tokenrouter_ca_file";
/// Node metadata key naming the native module (`tokenrouter_native`) when the node's edge is
/// the native form: its provider clusters then get the module as their upstream filter.
pub const META_NATIVE_MODULE: &str = "tokenrouter_native_module";
/// CA bundle used when the node does not name one.
pub const DEFAULT_CA_FILE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// Name of the upstream wasm filter in every provider cluster.
pub const UPSTREAM_FILTER_NAME: &str = "tokenrouter.upstream";

/// Key of the upstream HTTP protocol options in `typed_extension_protocol_options`.
const HTTP_PROTOCOL_OPTIONS_KEY: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/// One provider as a cluster to push.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProviderCluster {
    /// Provider name (as registered), passed to the upstream filter.
    pub name: String,
    /// Cluster name, `tr_provider_<name>`.
    pub cluster: String,
    /// Provider base URL, `http(s)://host[:port][/path]`.
    pub base_url: String,
}

/// A failover chain: an aggregate cluster over provider clusters, tried in order (one attempt
/// each, `previous_priorities` moving every retry to the next member).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainCluster {
    /// `tr_chain_<a>+<b>…`.
    pub cluster: String,
    /// Member clusters in attempt order.
    pub children: Vec<String>,
}

/// The set Envoys should have, with the config version it belongs to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterSet {
    /// Configuration version; sent as the xDS `version_info`.
    pub version: u64,
    /// Every provider cluster (and slot copy of one) that should exist.
    pub providers: Vec<ProviderCluster>,
    /// Failover chains over them.
    pub chains: Vec<ChainCluster>,
}

/// Errors building xDS resources.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XdsError {
    /// The provider's base URL cannot be turned into an upstream endpoint.
    #[error("provider {provider:?}: invalid base_url {url:?}: {reason}")]
    InvalidBaseUrl {
        /// Provider name.
        provider: String,
        /// The offending URL.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The wasm path is empty.
    #[error("the wasm module path is empty")]
    EmptyWasmPath,
}

// ---------------------------------------------------------------------------------------------
// Cluster construction
// ---------------------------------------------------------------------------------------------

/// The parts of a base URL the cluster needs.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Upstream {
    tls: bool,
    /// Host without brackets, lower-cased (IP literal or DNS name).
    host: String,
    ip: Option<IpAddr>,
    port: u16,
}

/// Parses `http(s)://host[:port][/path][?query][#fragment]`.
fn parse_base_url(url: &str) -> Result<Upstream, String> {
    let url = url.trim();
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| "missing scheme (expected http:// or https://)".to_string())?;
    let tls = match scheme.to_ascii_lowercase().as_str() {
        "http" => false,
        "https" => true,
        other => {
            return Err(format!(
                "unsupported scheme {other:?} (expected http or https)"
            ))
        }
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    if authority.is_empty() {
        return Err("missing host".into());
    }
    if authority.contains('@') {
        return Err("credentials in the URL are not supported".into());
    }
    let (host, port) = if let Some(after) = authority.strip_prefix('[') {
        let (inside, tail) = after
            .split_once(']')
            .ok_or_else(|| "unterminated IPv6 literal".to_string())?;
        let port = match tail {
            "" => None,
            t => Some(
                t.strip_prefix(':')
                    .ok_or_else(|| format!("unexpected {t:?} after IPv6 literal"))?,
            ),
        };
        (inside, port)
    } else {
        match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    let port = match port {
        None => {
            if tls {
                443
            } else {
                80
            }
        }
        Some(p) => match p.parse::<u16>() {
            Ok(0) | Err(_) => return Err(format!("invalid port {p:?}")),
            Ok(n) => n,
        },
    };
    let host = host.to_ascii_lowercase();
    if host.is_empty() {
        return Err("missing host".into());
    }
    let ip = host.parse::<IpAddr>().ok();
    if ip.is_none() && authority.starts_with('[') {
        return Err(format!("invalid IPv6 literal {host:?}"));
    }
    if ip.is_none() {
        validate_dns_name(&host)?;
    }
    Ok(Upstream {
        tls,
        host,
        ip,
        port,
    })
}

/// A DNS name: labels of letters, digits, `-` and `_` (compose service names may have `_`),
/// 1-63 characters each, not starting or ending with `-`, 253 characters at most; one
/// trailing dot allowed. A name of only digits and dots would be read as a (bad) IPv4 address.
pub(crate) fn validate_dns_name(host: &str) -> Result<(), String> {
    let name = host.strip_suffix('.').unwrap_or(host);
    if name.is_empty() {
        return Err(format!("invalid host name {host:?}"));
    }
    if name.len() > 253 {
        return Err(format!(
            "invalid host name {host:?}: longer than 253 characters"
        ));
    }
    for label in name.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok {
            return Err(format!("invalid host name {host:?}"));
        }
    }
    // A name made only of digits and dots would be read as a (bad) IPv4 address by resolvers.
    if name.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err(format!("invalid IP address {host:?}"));
    }
    Ok(())
}

fn duration_secs(seconds: i64) -> Duration {
    Duration { seconds, nanos: 0 }
}

fn filename_source(path: &str) -> DataSource {
    DataSource {
        specifier: Some(data_source::Specifier::Filename(path.to_string())),
        ..Default::default()
    }
}

/// The wasm plugin configuration shared by every tokenrouter filter instance.
fn plugin_config(plugin_name: &str, wasm_path: &str, configuration: String) -> PluginConfig {
    PluginConfig {
        name: plugin_name.to_string(),
        root_id: "tokenrouter".to_string(),
        vm: Some(plugin_config::Vm::VmConfig(VmConfig {
            vm_id: "tokenrouter".to_string(),
            runtime: "envoy.wasm.runtime.v8".to_string(),
            code: Some(AsyncDataSource {
                specifier: Some(async_data_source::Specifier::Local(filename_source(
                    wasm_path,
                ))),
            }),
            ..Default::default()
        })),
        configuration: Some(pack_any(StringValue {
            value: configuration,
        })),
        // `fail_open` is deprecated; FAIL_CLOSED is its `false`.
        failure_policy: FailurePolicy::FailClosed as i32,
        // The upstream filter holds the headers while it reads a body it must translate
        // (ARCHITECTURE.md, "Envoy bootstrap", explains why this flag is needed for that).
        allow_on_headers_stop_iteration: Some(BoolValue { value: true }),
        ..Default::default()
    }
}

/// Which form of the filter a node runs, and so what its clusters' upstream filter is.
#[derive(Clone, Copy, Debug)]
pub enum Module<'a> {
    /// `tokenrouter_filter.wasm` at this path (as Envoy sees it).
    Wasm(&'a str),
    /// The native module (an Envoy dynamic module) of this name.
    Native(&'a str),
}

impl<'a> From<&'a str> for Module<'a> {
    fn from(wasm_path: &'a str) -> Self {
        Module::Wasm(wasm_path)
    }
}

/// The upstream filter chain: the upstream filter for `provider` (empty: a chain cluster,
/// where each attempt's provider comes from the edge's attempt list), then the codec.
fn upstream_http_filters(provider: &str, module: Module<'_>) -> Vec<HttpFilter> {
    let configuration = format!(
        r#"{{"role":"upstream","provider":{}}}"#,
        serde_json::Value::String(provider.to_string())
    );
    let typed_config = match module {
        Module::Wasm(wasm_path) => pack_any(Wasm {
            config: Some(plugin_config(
                "tokenrouter-upstream",
                wasm_path,
                configuration,
            )),
        }),
        Module::Native(name) => pack_any(DynamicModuleFilter {
            dynamic_module_config: Some(DynamicModuleConfig {
                name: name.to_string(),
                do_not_close: true,
                ..Default::default()
            }),
            filter_name: "upstream".to_string(),
            filter_config: Some(pack_any(StringValue {
                value: format!(r#"{{"plugin":{configuration}}}"#),
            })),
            ..Default::default()
        }),
    };
    vec![
        HttpFilter {
            name: UPSTREAM_FILTER_NAME.to_string(),
            config_type: Some(http_filter::ConfigType::TypedConfig(typed_config)),
            ..Default::default()
        },
        codec_filter(),
    ]
}

/// The last upstream HTTP filter of every cluster.
fn codec_filter() -> HttpFilter {
    HttpFilter {
        name: "envoy.filters.http.upstream_codec".to_string(),
        config_type: Some(http_filter::ConfigType::TypedConfig(pack_any(
            UpstreamCodec {},
        ))),
        ..Default::default()
    }
}

fn tls_transport_socket(u: &Upstream, ca_file: &str) -> TransportSocket {
    let san_type = if u.ip.is_some() {
        subject_alt_name_matcher::SanType::IpAddress
    } else {
        subject_alt_name_matcher::SanType::Dns
    };
    let validation = CertificateValidationContext {
        trusted_ca: Some(filename_source(ca_file)),
        // Envoy only checks the certificate chain unless told which name to expect.
        // A DNS `exact` matcher also accepts wildcard certificates (`*.example.com`).
        match_typed_subject_alt_names: vec![SubjectAltNameMatcher {
            san_type: san_type as i32,
            matcher: Some(StringMatcher {
                match_pattern: Some(string_matcher::MatchPattern::Exact(
                    u.host.trim_end_matches('.').to_string(),
                )),
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    };
    let ctx = UpstreamTlsContext {
        common_tls_context: Some(CommonTlsContext {
            alpn_protocols: vec!["h2".to_string(), "http/1.1".to_string()],
            validation_context_type: Some(
                common_tls_context::ValidationContextType::ValidationContext(validation),
            ),
            ..Default::default()
        }),
        // RFC 6066: SNI carries host names only, never IP literals.
        sni: if u.ip.is_some() {
            String::new()
        } else {
            u.host.trim_end_matches('.').to_string()
        },
        ..Default::default()
    };
    TransportSocket {
        name: "envoy.transport_sockets.tls".to_string(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(pack_any(ctx))),
    }
}

/// The Cluster proto for one provider.
///
/// `module` is the node's filter (`tokenrouter_wasm_path`, or its native module), the upstream
/// filter's; `ca_file` the CA bundle https providers are verified against.
pub fn provider_cluster<'a>(
    p: &ProviderCluster,
    module: impl Into<Module<'a>>,
    ca_file: &str,
) -> Result<Cluster, XdsError> {
    let module = module.into();
    if matches!(module, Module::Wasm("") | Module::Native("")) {
        return Err(XdsError::EmptyWasmPath);
    }
    endpoint_cluster(
        p,
        &p.cluster,
        upstream_http_filters(&p.name, module),
        ca_file,
    )
}

/// The direct cluster of a provider (`tr_direct_<name>`): its endpoint, TLS and protocol like
/// its provider cluster, but no upstream filter — the edge has already prepared the request
/// (credential, authority, path, translated body) and translates the answer itself. `None`
/// for a slot copy (`tr_provider_<name>~<n>`, used only inside chains).
///
/// Its metadata names the provider (`filter_metadata.tokenrouter.provider`): when the provider
/// resets while the edge holds its answer, Envoy replies without the edge, and the bootstrap's
/// local-reply mapper names the provider from it (`%CLUSTER_METADATA(tokenrouter:provider)%`).
pub fn direct_cluster(p: &ProviderCluster, ca_file: &str) -> Option<Result<Cluster, XdsError>> {
    (p.cluster == routing::provider_cluster_name(&p.name)).then(|| {
        let mut cluster = endpoint_cluster(
            p,
            &routing::direct_cluster_name(&p.name),
            vec![codec_filter()],
            ca_file,
        )?;
        let provider = PbValue {
            kind: Some(value::Kind::StringValue(p.name.clone())),
        };
        let fields = HashMap::from([(PROVIDER_METADATA_KEY.to_string(), provider)]);
        cluster.metadata = Some(Metadata {
            filter_metadata: HashMap::from([(METADATA_NAMESPACE.to_string(), PbStruct { fields })]),
            ..Default::default()
        });
        Ok(cluster)
    })
}

/// The namespace of the metadata the control plane puts on its clusters.
pub const METADATA_NAMESPACE: &str = "tokenrouter";
/// A direct cluster's provider name, in [`METADATA_NAMESPACE`].
pub const PROVIDER_METADATA_KEY: &str = "provider";

/// A cluster with the provider's one endpoint and the given upstream HTTP filters.
fn endpoint_cluster(
    p: &ProviderCluster,
    name: &str,
    http_filters: Vec<HttpFilter>,
    ca_file: &str,
) -> Result<Cluster, XdsError> {
    let u = parse_base_url(&p.base_url).map_err(|reason| XdsError::InvalidBaseUrl {
        provider: p.name.clone(),
        url: p.base_url.clone(),
        reason,
    })?;

    let endpoint = Endpoint {
        address: Some(Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                protocol: socket_address::Protocol::Tcp as i32,
                address: u.host.clone(),
                port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(u.port))),
                ..Default::default()
            })),
        }),
        // The bootstrap's route rewrites a direct request's authority to it
        // (`auto_host_rewrite`), so it is exactly the `:authority` the filters send: host, and
        // the port when it is not the scheme's default.
        hostname: tokenrouter_engine::upstream::BaseUrl::parse(p.base_url.trim())
            .map(|b| b.authority())
            .unwrap_or_else(|_| u.host.trim_end_matches('.').to_string()),
        ..Default::default()
    };

    let upstream_protocol_options = if u.tls {
        http_protocol_options::UpstreamProtocolOptions::AutoConfig(
            http_protocol_options::AutoHttpConfig {
                http_protocol_options: Some(Http1ProtocolOptions::default()),
                http2_protocol_options: Some(Http2ProtocolOptions::default()),
                ..Default::default()
            },
        )
    } else {
        http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
            http_protocol_options::ExplicitHttpConfig {
                protocol_config: Some(
                    http_protocol_options::explicit_http_config::ProtocolConfig::HttpProtocolOptions(
                        Http1ProtocolOptions::default(),
                    ),
                ),
            },
        )
    };
    let protocol_options = HttpProtocolOptions {
        upstream_protocol_options: Some(upstream_protocol_options),
        http_filters,
        ..Default::default()
    };
    let mut typed_extension_protocol_options: HashMap<String, Any> = HashMap::new();
    typed_extension_protocol_options.insert(
        HTTP_PROTOCOL_OPTIONS_KEY.to_string(),
        pack_any(protocol_options),
    );

    let discovery = if u.ip.is_some() {
        cluster::DiscoveryType::Static
    } else {
        cluster::DiscoveryType::StrictDns
    };

    Ok(Cluster {
        name: name.to_string(),
        connect_timeout: Some(duration_secs(5)),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(discovery as i32)),
        dns_lookup_family: if u.ip.is_some() {
            cluster::DnsLookupFamily::Auto as i32
        } else {
            cluster::DnsLookupFamily::V4Preferred as i32
        },
        lb_policy: cluster::LbPolicy::RoundRobin as i32,
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: name.to_string(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: vec![LbEndpoint {
                    host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(endpoint)),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }),
        transport_socket: if u.tls {
            Some(tls_transport_socket(&u, ca_file))
        } else {
            None
        },
        typed_extension_protocol_options,
        ..Default::default()
    })
}

/// The aggregate cluster of one failover chain.
///
/// Envoy runs the upstream HTTP filters of the cluster the route named — the aggregate, not
/// the member an attempt lands on (checked on Envoy 1.40) — so the aggregate carries the wasm
/// upstream filter itself, without a provider: each attempt's provider is entry `n` of the
/// edge's attempt list. Connections, endpoints and TLS stay the members' own.
pub fn chain_cluster<'a>(c: &ChainCluster, module: impl Into<Module<'a>>) -> Cluster {
    let config = AggregateClusterConfig {
        clusters: c.children.clone(),
    };
    let protocol_options = HttpProtocolOptions {
        upstream_protocol_options: Some(
            http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
                http_protocol_options::ExplicitHttpConfig {
                    protocol_config: Some(
                        http_protocol_options::explicit_http_config::ProtocolConfig::HttpProtocolOptions(
                            Http1ProtocolOptions::default(),
                        ),
                    ),
                },
            ),
        ),
        http_filters: upstream_http_filters("", module.into()),
        ..Default::default()
    };
    let mut typed_extension_protocol_options: HashMap<String, Any> = HashMap::new();
    typed_extension_protocol_options.insert(
        HTTP_PROTOCOL_OPTIONS_KEY.to_string(),
        pack_any(protocol_options),
    );
    Cluster {
        name: c.cluster.clone(),
        connect_timeout: Some(duration_secs(5)),
        lb_policy: cluster::LbPolicy::ClusterProvided as i32,
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::ClusterType(
            cluster::CustomClusterType {
                name: "envoy.clusters.aggregate".to_string(),
                typed_config: Some(pack_any(config)),
            },
        )),
        typed_extension_protocol_options,
        ..Default::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Per-stream state machine
// ---------------------------------------------------------------------------------------------

/// What the node told us on its first request.
#[derive(Debug, Clone, PartialEq, Eq)]
struct NodeInfo {
    id: String,
    wasm_path: String,
    ca_file: String,
    /// The native module's name when the node's edge is the native form.
    native_module: Option<String>,
}

impl NodeInfo {
    fn module(&self) -> Module<'_> {
        match &self.native_module {
            Some(name) => Module::Native(name),
            None => Module::Wasm(&self.wasm_path),
        }
    }
}

fn metadata_string(node: &Node, key: &str) -> Option<String> {
    let field = node.metadata.as_ref()?.fields.get(key)?;
    match &field.kind {
        Some(value::Kind::StringValue(s)) if !s.trim().is_empty() => Some(s.trim().to_string()),
        _ => None,
    }
}

fn node_info(node: Option<&Node>) -> Result<NodeInfo, Status> {
    let node = node.ok_or_else(|| {
        Status::invalid_argument("the first DiscoveryRequest carries no node (is this an Envoy?)")
    })?;
    let wasm_path = metadata_string(node, META_WASM_PATH).ok_or_else(|| {
        Status::invalid_argument(format!(
            "node {:?} has no string metadata `{META_WASM_PATH}` (absolute path of \
             tokenrouter_filter.wasm); render the bootstrap with `tokenrouter envoy-bootstrap`",
            node.id
        ))
    })?;
    let ca_file =
        metadata_string(node, META_CA_FILE).unwrap_or_else(|| DEFAULT_CA_FILE.to_string());
    Ok(NodeInfo {
        id: node.id.clone(),
        wasm_path,
        ca_file,
        native_module: metadata_string(node, META_NATIVE_MODULE),
    })
}

/// Per type URL: what we last sent.
#[derive(Debug, Clone, Default)]
struct Subscription {
    /// Nonce of the last response sent for this type.
    nonce: String,
    /// For CDS: the set the last response was built from.
    sent: Option<ClusterSet>,
}

/// Protocol state of one ADS stream (state of the world). No I/O: feed it requests and
/// cluster-set changes, send what it returns.
#[derive(Debug, Default)]
pub struct AdsStream {
    node: Option<NodeInfo>,
    subscriptions: HashMap<String, Subscription>,
    nonce_counter: u64,
}

impl AdsStream {
    /// A stream that has seen nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The node id (known after the first request).
    pub fn node_id(&self) -> Option<&str> {
        self.node.as_ref().map(|n| n.id.as_str())
    }

    fn next_nonce(&mut self) -> String {
        self.nonce_counter += 1;
        self.nonce_counter.to_string()
    }

    /// Handles one request from Envoy; returns the responses to send (zero or one).
    ///
    /// An `Err` ends the stream with that status.
    pub fn on_request(
        &mut self,
        req: &DiscoveryRequest,
        current: &ClusterSet,
    ) -> Result<Vec<DiscoveryResponse>, Status> {
        if self.node.is_none() {
            let info = node_info(req.node.as_ref())?;
            tracing::info!(node = %info.id, wasm = %info.wasm_path, native = ?info.native_module, ca = %info.ca_file, "ADS stream opened");
            self.node = Some(info);
        }
        let type_url = req.type_url.as_str();
        if type_url.is_empty() {
            return Err(Status::invalid_argument(
                "DiscoveryRequest without type_url on an ADS stream",
            ));
        }
        let last_nonce = self
            .subscriptions
            .get(type_url)
            .map(|s| s.nonce.as_str())
            .unwrap_or("");

        if !req.response_nonce.is_empty() && req.response_nonce != last_nonce {
            // Answer to a response that has since been superseded: ignore (xDS protocol).
            tracing::debug!(type_url, nonce = %req.response_nonce, "ignoring stale xDS request");
            return Ok(Vec::new());
        }
        if let Some(err) = &req.error_detail {
            tracing::warn!(
                node = self.node_id().unwrap_or(""),
                type_url,
                nonce = %req.response_nonce,
                accepted_version = %req.version_info,
                code = err.code,
                error = %err.message,
                "Envoy rejected (NACK) the pushed configuration; keeping the stream, will push again when the configuration changes"
            );
            return Ok(Vec::new());
        }
        if !req.response_nonce.is_empty() {
            // ACK of our latest response. Only a CDS set that changed since then needs a push
            // (the watch normally pushes right away; this covers any gap).
            let stale = type_url == CLUSTER_TYPE_URL
                && self
                    .subscriptions
                    .get(type_url)
                    .and_then(|s| s.sent.as_ref())
                    .is_some_and(|sent| sent != current);
            if stale {
                return Ok(self.respond(type_url, current).into_iter().collect());
            }
            return Ok(Vec::new());
        }
        // Initial request for this type (or Envoy re-subscribing): send the full state.
        Ok(self.respond(type_url, current).into_iter().collect())
    }

    /// Handles a change of the cluster set; returns the responses to send (zero or one).
    pub fn on_update(&mut self, current: &ClusterSet) -> Vec<DiscoveryResponse> {
        let subscribed_and_changed = self
            .subscriptions
            .get(CLUSTER_TYPE_URL)
            .is_some_and(|s| s.sent.as_ref() != Some(current));
        if subscribed_and_changed {
            self.respond(CLUSTER_TYPE_URL, current)
                .into_iter()
                .collect()
        } else {
            Vec::new()
        }
    }

    fn respond(&mut self, type_url: &str, current: &ClusterSet) -> Option<DiscoveryResponse> {
        let node = self.node.clone()?;
        let nonce = self.next_nonce();
        let (version_info, resources, sent) = if type_url == CLUSTER_TYPE_URL {
            let mut resources = Vec::with_capacity(current.providers.len() * 2);
            for p in &current.providers {
                let direct = direct_cluster(p, &node.ca_file);
                for cluster in
                    std::iter::once(provider_cluster(p, node.module(), &node.ca_file)).chain(direct)
                {
                    match cluster {
                        Ok(c) => resources.push(pack_any(c)),
                        Err(e) => tracing::warn!(error = %e, "skipping provider cluster"),
                    }
                }
            }
            for c in &current.chains {
                resources.push(pack_any(chain_cluster(c, node.module())));
            }
            (
                current.version.to_string(),
                resources,
                Some(current.clone()),
            )
        } else {
            // We serve nothing but clusters; an empty answer keeps Envoy from waiting forever.
            ("0".to_string(), Vec::new(), None)
        };
        tracing::debug!(
            node = %node.id,
            type_url,
            version = %version_info,
            resources = resources.len(),
            nonce = %nonce,
            "sending DiscoveryResponse"
        );
        self.subscriptions.insert(
            type_url.to_string(),
            Subscription {
                nonce: nonce.clone(),
                sent,
            },
        );
        Some(DiscoveryResponse {
            version_info,
            resources,
            type_url: type_url.to_string(),
            nonce,
            ..Default::default()
        })
    }
}

// ---------------------------------------------------------------------------------------------
// gRPC service
// ---------------------------------------------------------------------------------------------

/// Compares two byte strings in time that depends only on their lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Checks `authorization: Bearer <admin token>`.
fn authenticate<T>(req: &Request<T>, admin_token: &str) -> Result<(), Status> {
    let header = req
        .metadata()
        .get("authorization")
        .ok_or_else(|| Status::unauthenticated("missing authorization metadata"))?;
    let expected = format!("Bearer {admin_token}");
    if admin_token.is_empty() || !constant_time_eq(header.as_bytes(), expected.as_bytes()) {
        return Err(Status::unauthenticated("invalid admin token"));
    }
    Ok(())
}

/// The ADS gRPC service (`envoy.service.discovery.v3.AggregatedDiscoveryService`).
#[derive(Debug, Clone)]
pub struct Ads {
    clusters: watch::Receiver<ClusterSet>,
    admin_token: Arc<str>,
}

impl Ads {
    /// A service pushing the sets sent on `clusters` to every Envoy that authenticates with
    /// `admin_token`.
    pub fn new(clusters: watch::Receiver<ClusterSet>, admin_token: Arc<str>) -> Self {
        Self {
            clusters,
            admin_token,
        }
    }
}

/// Output stream type of the ADS methods.
pub type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Drives one stream: requests from `inbound`, cluster changes from `clusters`, responses to
/// `out`. Returns when Envoy goes away or the stream fails.
async fn run_stream(
    mut inbound: Streaming<DiscoveryRequest>,
    mut clusters: watch::Receiver<ClusterSet>,
    out: mpsc::Sender<Result<DiscoveryResponse, Status>>,
) {
    let mut state = AdsStream::new();
    let mut watching = true;
    loop {
        let responses = tokio::select! {
            msg = inbound.message() => match msg {
                Ok(Some(req)) => {
                    let current = clusters.borrow_and_update().clone();
                    match state.on_request(&req, &current) {
                        Ok(r) => r,
                        Err(status) => {
                            tracing::warn!(error = %status.message(), "closing ADS stream");
                            let _ = out.send(Err(status)).await;
                            return;
                        }
                    }
                }
                Ok(None) => break,
                Err(status) => {
                    tracing::debug!(error = %status, "ADS stream receive error");
                    break;
                }
            },
            changed = clusters.changed(), if watching => {
                if changed.is_err() {
                    // The publisher is gone (shutdown): keep answering requests only.
                    watching = false;
                    continue;
                }
                let current = clusters.borrow_and_update().clone();
                state.on_update(&current)
            },
            () = out.closed() => break,
        };
        for r in responses {
            if out.send(Ok(r)).await.is_err() {
                return;
            }
        }
    }
    tracing::info!(node = state.node_id().unwrap_or(""), "ADS stream closed");
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for Ads {
    type StreamAggregatedResourcesStream = ResponseStream<DiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        authenticate(&request, &self.admin_token)?;
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(run_stream(inbound, self.clusters.clone(), tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type DeltaAggregatedResourcesStream = ResponseStream<DeltaDiscoveryResponse>;

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        authenticate(&request, &self.admin_token)?;
        Err(Status::unimplemented(
            "tokenrouter serves state-of-the-world ADS only (api_type: GRPC)",
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use envoy_types::pb::google::protobuf::{Struct, Value};
    use envoy_types::pb::google::rpc::Status as RpcStatus;
    use prost::Message;

    const WASM: &str = "/opt/tokenrouter/tokenrouter_filter.wasm";
    const CA: &str = "/etc/ssl/certs/ca-certificates.crt";

    fn provider(name: &str, url: &str) -> ProviderCluster {
        ProviderCluster {
            name: name.to_string(),
            cluster: format!("tr_provider_{name}"),
            base_url: url.to_string(),
        }
    }

    fn socket_address(c: &Cluster) -> (&str, u32, &str) {
        let la = c.load_assignment.as_ref().unwrap();
        assert_eq!(la.cluster_name, c.name);
        assert_eq!(la.endpoints.len(), 1);
        assert_eq!(la.endpoints[0].lb_endpoints.len(), 1);
        let Some(lb_endpoint::HostIdentifier::Endpoint(ep)) =
            &la.endpoints[0].lb_endpoints[0].host_identifier
        else {
            panic!("no endpoint");
        };
        let Some(address::Address::SocketAddress(sa)) = &ep.address.as_ref().unwrap().address
        else {
            panic!("no socket address");
        };
        let Some(socket_address::PortSpecifier::PortValue(port)) = sa.port_specifier else {
            panic!("no port");
        };
        (sa.address.as_str(), port, ep.hostname.as_str())
    }

    fn protocol_options(c: &Cluster) -> HttpProtocolOptions {
        let any = c
            .typed_extension_protocol_options
            .get("envoy.extensions.upstreams.http.v3.HttpProtocolOptions")
            .unwrap();
        assert_eq!(
            any.type_url,
            "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
        );
        HttpProtocolOptions::decode(any.value.as_slice()).unwrap()
    }

    fn check_filters(opts: &HttpProtocolOptions, provider_name: &str) {
        assert_eq!(opts.http_filters.len(), 2);
        let wasm = &opts.http_filters[0];
        assert_eq!(wasm.name, "tokenrouter.upstream");
        let Some(http_filter::ConfigType::TypedConfig(any)) = &wasm.config_type else {
            panic!("wasm filter without typed_config");
        };
        assert_eq!(
            any.type_url,
            "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
        );
        let wasm = Wasm::decode(any.value.as_slice()).unwrap();
        let pc = wasm.config.unwrap();
        assert_eq!(pc.name, "tokenrouter-upstream");
        assert_eq!(pc.root_id, "tokenrouter");
        assert_eq!(pc.failure_policy, FailurePolicy::FailClosed as i32);
        let Some(plugin_config::Vm::VmConfig(vm)) = pc.vm else {
            panic!("no vm_config");
        };
        assert_eq!(vm.vm_id, "tokenrouter");
        assert_eq!(vm.runtime, "envoy.wasm.runtime.v8");
        let Some(async_data_source::Specifier::Local(ds)) = vm.code.unwrap().specifier else {
            panic!("code is not local");
        };
        assert_eq!(
            ds.specifier,
            Some(data_source::Specifier::Filename(WASM.to_string()))
        );
        let cfg = pc.configuration.unwrap();
        assert_eq!(
            cfg.type_url,
            "type.googleapis.com/google.protobuf.StringValue"
        );
        let json: serde_json::Value =
            serde_json::from_str(&StringValue::decode(cfg.value.as_slice()).unwrap().value)
                .unwrap();
        assert_eq!(
            json,
            serde_json::json!({"role": "upstream", "provider": provider_name})
        );

        let codec = &opts.http_filters[1];
        assert_eq!(codec.name, "envoy.filters.http.upstream_codec");
        let Some(http_filter::ConfigType::TypedConfig(any)) = &codec.config_type else {
            panic!("codec without typed_config");
        };
        assert_eq!(
            any.type_url,
            "type.googleapis.com/envoy.extensions.filters.http.upstream_codec.v3.UpstreamCodec"
        );
    }

    #[test]
    fn http_ip_provider() {
        let c = provider_cluster(&provider("local", "http://127.0.0.1:9000"), WASM, CA).unwrap();
        assert_eq!(c.name, "tr_provider_local");
        assert_eq!(c.connect_timeout, Some(duration_secs(5)));
        assert_eq!(
            c.cluster_discovery_type,
            Some(cluster::ClusterDiscoveryType::Type(
                cluster::DiscoveryType::Static as i32
            ))
        );
        assert_eq!(socket_address(&c), ("127.0.0.1", 9000, "127.0.0.1:9000"));
        assert!(c.transport_socket.is_none());
        let opts = protocol_options(&c);
        assert!(matches!(
            opts.upstream_protocol_options,
            Some(
                http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
                    http_protocol_options::ExplicitHttpConfig {
                        protocol_config: Some(
                            http_protocol_options::explicit_http_config::ProtocolConfig::HttpProtocolOptions(_)
                        )
                    }
                )
            )
        ));
        check_filters(&opts, "local");
    }

    #[test]
    fn a_native_node_gets_the_module_as_its_upstream_filter() {
        let p = provider("local", "http://127.0.0.1:9000");
        let wasm = provider_cluster(&p, WASM, CA).unwrap();
        let native = provider_cluster(&p, Module::Native("tokenrouter_native"), CA).unwrap();
        let chain = ChainCluster {
            cluster: "tr_chain_x".into(),
            children: vec!["tr_provider_local".into()],
        };
        let chain = chain_cluster(&chain, Module::Native("tokenrouter_native"));
        for c in [&native, &chain] {
            let opts = protocol_options(c);
            assert_eq!(opts.http_filters.len(), 2);
            assert_eq!(opts.http_filters[0].name, UPSTREAM_FILTER_NAME);
            let Some(http_filter::ConfigType::TypedConfig(any)) = &opts.http_filters[0].config_type
            else {
                panic!("filter without typed_config");
            };
            assert_eq!(
                any.type_url,
                "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter"
            );
            let f = DynamicModuleFilter::decode(any.value.as_slice()).unwrap();
            let module = f.dynamic_module_config.unwrap();
            assert_eq!(module.name, "tokenrouter_native");
            assert!(module.do_not_close);
            assert_eq!(f.filter_name, "upstream");
            let config = StringValue::decode(f.filter_config.unwrap().value.as_slice()).unwrap();
            let config: serde_json::Value = serde_json::from_str(&config.value).unwrap();
            assert_eq!(config["plugin"]["role"], "upstream");
            let provider = if std::ptr::eq(c, &native) {
                "local"
            } else {
                ""
            };
            assert_eq!(config["plugin"]["provider"], provider);
            assert_eq!(
                opts.http_filters[1].name,
                "envoy.filters.http.upstream_codec"
            );
        }
        // Everything but the upstream filter is the wasm node's cluster.
        let (mut a, mut b) = (protocol_options(&wasm), protocol_options(&native));
        a.http_filters.clear();
        b.http_filters.clear();
        assert_eq!(a, b);
        assert_eq!(wasm.load_assignment, native.load_assignment);
    }

    #[test]
    fn direct_cluster_is_the_provider_cluster_without_the_wasm_filter() {
        for url in ["http://127.0.0.1:9000", "https://api.openai.com/v1"] {
            let p = provider("local", url);
            let own = provider_cluster(&p, WASM, CA).unwrap();
            let direct = direct_cluster(&p, CA).unwrap().unwrap();
            assert_eq!(direct.name, "tr_direct_local");
            assert_eq!(
                direct.load_assignment.as_ref().unwrap().cluster_name,
                "tr_direct_local"
            );
            assert_eq!(socket_address(&direct), socket_address(&own));
            assert_eq!(direct.transport_socket, own.transport_socket);
            assert_eq!(direct.cluster_discovery_type, own.cluster_discovery_type);
            let (opts, own_opts) = (protocol_options(&direct), protocol_options(&own));
            assert_eq!(
                opts.upstream_protocol_options,
                own_opts.upstream_protocol_options
            );
            let names: Vec<&str> = opts.http_filters.iter().map(|f| f.name.as_str()).collect();
            assert_eq!(names, ["envoy.filters.http.upstream_codec"]);
            // The provider's name, for the bootstrap's local-reply mapper; the provider
            // cluster needs none.
            let provider = &direct.metadata.as_ref().unwrap().filter_metadata["tokenrouter"].fields
                ["provider"];
            assert_eq!(
                provider.kind,
                Some(value::Kind::StringValue("local".into()))
            );
            assert!(own.metadata.is_none());
        }
        // A slot copy (only used inside chains) has no direct cluster.
        let slot = ProviderCluster {
            cluster: "tr_provider_local~2".into(),
            ..provider("local", "http://127.0.0.1:9000")
        };
        assert!(direct_cluster(&slot, CA).is_none());
    }

    #[test]
    fn http_default_port_and_ipv6() {
        let c = provider_cluster(&provider("a", "http://[::1]/v1"), WASM, CA).unwrap();
        assert_eq!(socket_address(&c), ("::1", 80, "[::1]"));
        let c = provider_cluster(&provider("b", "http://ollama.lan"), WASM, CA).unwrap();
        assert_eq!(socket_address(&c), ("ollama.lan", 80, "ollama.lan"));
    }

    #[test]
    fn https_dns_provider_with_path() {
        let c = provider_cluster(
            &provider("openai", "https://API.OpenAI.com/v1"),
            WASM,
            "/tmp/ca.pem",
        )
        .unwrap();
        assert_eq!(c.name, "tr_provider_openai");
        assert_eq!(
            c.cluster_discovery_type,
            Some(cluster::ClusterDiscoveryType::Type(
                cluster::DiscoveryType::StrictDns as i32
            ))
        );
        assert_eq!(
            c.dns_lookup_family,
            cluster::DnsLookupFamily::V4Preferred as i32
        );
        assert_eq!(
            socket_address(&c),
            // Resolved in lower case; the hostname is the `:authority` the filters send.
            ("api.openai.com", 443, "API.OpenAI.com")
        );

        let ts = c.transport_socket.as_ref().unwrap();
        assert_eq!(ts.name, "envoy.transport_sockets.tls");
        let Some(transport_socket::ConfigType::TypedConfig(any)) = &ts.config_type else {
            panic!("no tls config");
        };
        assert_eq!(
            any.type_url,
            "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
        );
        let tls = UpstreamTlsContext::decode(any.value.as_slice()).unwrap();
        assert_eq!(tls.sni, "api.openai.com");
        let common = tls.common_tls_context.unwrap();
        assert_eq!(common.alpn_protocols, vec!["h2", "http/1.1"]);
        let Some(common_tls_context::ValidationContextType::ValidationContext(v)) =
            common.validation_context_type
        else {
            panic!("no validation context");
        };
        assert_eq!(v.trusted_ca, Some(filename_source("/tmp/ca.pem")));
        assert_eq!(v.match_typed_subject_alt_names.len(), 1);
        assert_eq!(
            v.match_typed_subject_alt_names[0].san_type,
            subject_alt_name_matcher::SanType::Dns as i32
        );

        let opts = protocol_options(&c);
        assert!(matches!(
            opts.upstream_protocol_options,
            Some(http_protocol_options::UpstreamProtocolOptions::AutoConfig(
                _
            ))
        ));
        check_filters(&opts, "openai");
    }

    #[test]
    fn https_explicit_port() {
        let c = provider_cluster(
            &provider("az", "https://my.openai.azure.com:8443/openai?x=1"),
            WASM,
            CA,
        )
        .unwrap();
        assert_eq!(
            socket_address(&c),
            ("my.openai.azure.com", 8443, "my.openai.azure.com:8443")
        );
    }

    #[test]
    fn bad_urls_are_errors() {
        for url in [
            "",
            "api.openai.com",
            "ftp://example.com",
            "https://",
            "https:///v1",
            "http://host:0",
            "http://host:99999",
            "http://host:abc",
            "http://user:pw@host",
            "http://exa mple.com",
            "http://[::1",
            "http://[nothex]:80",
            "http://-bad-.com",
            "http://256.1.1.1",
        ] {
            let err = provider_cluster(&provider("x", url), WASM, CA).unwrap_err();
            assert!(
                matches!(&err, XdsError::InvalidBaseUrl { provider, url: u, .. } if provider == "x" && u == url),
                "{url:?} -> {err:?}"
            );
        }
        assert_eq!(
            provider_cluster(&provider("x", "http://127.0.0.1"), "", CA).unwrap_err(),
            XdsError::EmptyWasmPath
        );
    }

    // ----- stream state machine -----

    fn node(wasm: Option<&str>, ca: Option<&str>) -> Node {
        let mut fields = std::collections::HashMap::new();
        for (k, v) in [(META_WASM_PATH, wasm), (META_CA_FILE, ca)] {
            if let Some(v) = v {
                fields.insert(
                    k.to_string(),
                    Value {
                        kind: Some(value::Kind::StringValue(v.to_string())),
                    },
                );
            }
        }
        Node {
            id: "envoy-1".into(),
            cluster: "tokenrouter".into(),
            metadata: Some(Struct { fields }),
            ..Default::default()
        }
    }

    fn cds_request(version: &str, nonce: &str) -> DiscoveryRequest {
        DiscoveryRequest {
            version_info: version.into(),
            type_url: CLUSTER_TYPE_URL.into(),
            response_nonce: nonce.into(),
            ..Default::default()
        }
    }

    fn first_request() -> DiscoveryRequest {
        DiscoveryRequest {
            node: Some(node(Some(WASM), None)),
            ..cds_request("", "")
        }
    }

    fn set(version: u64, names: &[&str]) -> ClusterSet {
        ClusterSet {
            version,
            providers: names
                .iter()
                .enumerate()
                .map(|(i, n)| provider(n, &format!("http://127.0.0.{}:8000", i + 1)))
                .collect(),
            chains: Vec::new(),
        }
    }

    #[test]
    fn chains_are_aggregate_clusters_in_order() {
        let c = chain_cluster(
            &ChainCluster {
                cluster: "tr_chain_a+b".into(),
                children: vec!["tr_provider_a".into(), "tr_provider_b".into()],
            },
            WASM,
        );
        let opts = protocol_options(&c);
        check_filters(&opts, "");
        assert_eq!(c.lb_policy, cluster::LbPolicy::ClusterProvided as i32);
        let Some(cluster::ClusterDiscoveryType::ClusterType(t)) = c.cluster_discovery_type else {
            panic!("not a custom cluster type")
        };
        assert_eq!(t.name, "envoy.clusters.aggregate");
        let config =
            AggregateClusterConfig::decode(t.typed_config.unwrap().value.as_slice()).unwrap();
        assert_eq!(config.clusters, ["tr_provider_a", "tr_provider_b"]);
        let mut s = AdsStream::new();
        let mut set = set(1, &["a", "b"]);
        set.chains.push(ChainCluster {
            cluster: "tr_chain_a+b".into(),
            children: vec!["tr_provider_a".into(), "tr_provider_b".into()],
        });
        let r = s.on_request(&first_request(), &set).unwrap();
        assert_eq!(
            cluster_names(&r[0]),
            [
                "tr_provider_a",
                "tr_direct_a",
                "tr_provider_b",
                "tr_direct_b",
                "tr_chain_a+b"
            ]
        );
    }

    fn cluster_names(r: &DiscoveryResponse) -> Vec<String> {
        r.resources
            .iter()
            .map(|a| {
                assert_eq!(a.type_url, CLUSTER_TYPE_URL);
                Cluster::decode(a.value.as_slice()).unwrap().name
            })
            .collect()
    }

    #[test]
    fn initial_request_ack_update_removal() {
        let mut s = AdsStream::new();
        let v1 = set(1, &["a", "b"]);
        let r = s.on_request(&first_request(), &v1).unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].version_info, "1");
        assert_eq!(r[0].type_url, CLUSTER_TYPE_URL);
        assert_eq!(
            cluster_names(&r[0]),
            vec![
                "tr_provider_a",
                "tr_direct_a",
                "tr_provider_b",
                "tr_direct_b"
            ]
        );
        assert_eq!(s.node_id(), Some("envoy-1"));
        let n1 = r[0].nonce.clone();
        assert!(!n1.is_empty());

        // ACK: nothing to send.
        assert!(s
            .on_request(&cds_request("1", &n1), &v1)
            .unwrap()
            .is_empty());
        // The same set again: nothing.
        assert!(s.on_update(&v1).is_empty());

        // New set: pushed with a fresh nonce; "a" removed.
        let v2 = set(2, &["b"]);
        let r = s.on_update(&v2);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].version_info, "2");
        assert_ne!(r[0].nonce, n1);
        assert_eq!(cluster_names(&r[0]), vec!["tr_provider_b", "tr_direct_b"]);
        let n2 = r[0].nonce.clone();

        // A late ACK of the first response is stale: ignored.
        assert!(s
            .on_request(&cds_request("1", &n1), &v2)
            .unwrap()
            .is_empty());
        assert!(s
            .on_request(&cds_request("2", &n2), &v2)
            .unwrap()
            .is_empty());

        // Everything removed: an empty set is still pushed (SotW deletes all clusters).
        let r = s.on_update(&set(3, &[]));
        assert_eq!(r.len(), 1);
        assert!(r[0].resources.is_empty());
        assert_eq!(r[0].version_info, "3");
    }

    #[test]
    fn nack_is_not_answered_and_next_change_is_pushed() {
        let mut s = AdsStream::new();
        let v1 = set(1, &["a"]);
        let r = s.on_request(&first_request(), &v1).unwrap();
        let nack = DiscoveryRequest {
            error_detail: Some(RpcStatus {
                code: 3,
                message: "bad cluster".into(),
                details: vec![],
            }),
            ..cds_request("", &r[0].nonce)
        };
        assert!(s.on_request(&nack, &v1).unwrap().is_empty());
        // Same set again: still nothing (no NACK loop).
        assert!(s.on_update(&v1).is_empty());
        let r = s.on_update(&set(2, &["a", "c"]));
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].version_info, "2");
        assert_eq!(r[0].resources.len(), 4);
    }

    #[test]
    fn ack_after_missed_update_triggers_push() {
        let mut s = AdsStream::new();
        let r = s.on_request(&first_request(), &set(1, &["a"])).unwrap();
        // The set changed but on_update was not called (yet): the ACK notices.
        let r = s
            .on_request(&cds_request("1", &r[0].nonce), &set(2, &["a", "b"]))
            .unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].version_info, "2");
    }

    #[test]
    fn no_push_before_subscription() {
        let mut s = AdsStream::new();
        assert!(s.on_update(&set(5, &["a"])).is_empty());
    }

    #[test]
    fn invalid_provider_is_skipped() {
        let mut s = AdsStream::new();
        let mut v = set(1, &["a"]);
        v.providers.push(provider("bad", "not a url"));
        let r = s.on_request(&first_request(), &v).unwrap();
        assert_eq!(cluster_names(&r[0]), vec!["tr_provider_a", "tr_direct_a"]);
    }

    #[test]
    fn other_types_get_an_empty_answer_once() {
        let mut s = AdsStream::new();
        let v = set(1, &["a"]);
        let lds = "type.googleapis.com/envoy.config.listener.v3.Listener";
        let req = DiscoveryRequest {
            node: Some(node(Some(WASM), None)),
            type_url: lds.into(),
            ..Default::default()
        };
        let r = s.on_request(&req, &v).unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].type_url, lds);
        assert!(r[0].resources.is_empty());
        let ack = DiscoveryRequest {
            type_url: lds.into(),
            version_info: r[0].version_info.clone(),
            response_nonce: r[0].nonce.clone(),
            ..Default::default()
        };
        assert!(s.on_request(&ack, &v).unwrap().is_empty());
        // Cluster updates do not concern that subscription.
        assert!(s.on_update(&set(2, &[])).is_empty());
    }

    #[test]
    fn node_metadata_is_required() {
        let mut s = AdsStream::new();
        let req = DiscoveryRequest {
            node: Some(node(None, None)),
            ..cds_request("", "")
        };
        let err = s.on_request(&req, &set(1, &[])).unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains(META_WASM_PATH), "{}", err.message());

        let mut s = AdsStream::new();
        let err = s
            .on_request(&cds_request("", ""), &set(1, &[]))
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
    }

    #[test]
    fn ca_file_from_metadata() {
        let mut s = AdsStream::new();
        let req = DiscoveryRequest {
            node: Some(node(Some(WASM), Some("/my/ca.pem"))),
            ..cds_request("", "")
        };
        let v = ClusterSet {
            version: 1,
            providers: vec![provider("o", "https://api.example.com")],
            chains: Vec::new(),
        };
        let r = s.on_request(&req, &v).unwrap();
        let c = Cluster::decode(r[0].resources[0].value.as_slice()).unwrap();
        let Some(transport_socket::ConfigType::TypedConfig(any)) =
            c.transport_socket.unwrap().config_type
        else {
            panic!()
        };
        let tls = UpstreamTlsContext::decode(any.value.as_slice()).unwrap();
        let Some(common_tls_context::ValidationContextType::ValidationContext(vc)) =
            tls.common_tls_context.unwrap().validation_context_type
        else {
            panic!()
        };
        assert_eq!(vc.trusted_ca, Some(filename_source("/my/ca.pem")));
    }

    #[test]
    fn auth() {
        let token = "abc123";
        let mut req = Request::new(());
        assert_eq!(
            authenticate(&req, token).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        req.metadata_mut()
            .insert("authorization", "Bearer wrong".parse().unwrap());
        assert_eq!(
            authenticate(&req, token).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        req.metadata_mut()
            .insert("authorization", "Bearer abc123".parse().unwrap());
        assert!(authenticate(&req, token).is_ok());
        assert!(authenticate(&req, "").is_err());
        assert!(constant_time_eq(b"", b""));
        assert!(!constant_time_eq(b"a", b"ab"));
    }
}
