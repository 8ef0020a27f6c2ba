//! The upstream filter: runs in the provider cluster, once per attempt. It sets the provider's
//! authority, path and credential, and removes the gateway's internal headers.

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
use tokenrouter_engine::upstream::openai_style_path;
use tokenrouter_engine::{ErrorKind, GatewayError};

use crate::{host, vm};

/// Headers the edge sets for Envoy and this filter only.
const INTERNAL_HEADERS: [&str; 4] = [
    "x-tr-cluster",
    "x-tr-provider",
    "x-tr-model",
    "x-tr-request-id",
];

pub struct Upstream {
    /// Provider of the cluster this filter instance belongs to.
    provider: String,
}

impl Upstream {
    pub fn new(provider: String) -> Upstream {
        Upstream { provider }
    }
}

impl Context for Upstream {}

impl HttpContext for Upstream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let request_id = host::request_header("x-tr-request-id").unwrap_or_default();
        for h in INTERNAL_HEADERS {
            host::set_request_header(h, None);
        }
        host::set_request_header("authorization", None);
        host::set_request_header("x-api-key", None);
        if vm::snapshot().is_none() {
            vm::refresh_snapshot();
        }
        let provider = vm::snapshot().and_then(|s| s.provider(&self.provider).cloned());
        let Some(provider) = provider else {
            let e = GatewayError::new(
                ErrorKind::ServiceUnavailable,
                format!(
                    "Provider '{}' is not configured on this gateway.",
                    self.provider
                ),
            );
            host::send_json(e.status(), &e.to_json(&request_id), &[]);
            return Action::Pause;
        };
        let path = host::request_header(":path").unwrap_or_default();
        host::set_request_header(":authority", Some(&provider.base_url.authority()));
        host::set_request_header(":path", Some(&openai_style_path(&provider.base_url, &path)));
        if !provider.credential.is_empty() {
            let (name, value) = provider.kind.credential_header(&provider.credential);
            host::set_request_header(name, Some(&value));
        }
        Action::Continue
    }
}
