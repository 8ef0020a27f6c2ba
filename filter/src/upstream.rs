//! The upstream filter: runs in the provider cluster, once per attempt. It removes the gateway's
//! internal headers, sets the provider's credential, and lets the engine's translator turn the
//! client's request into the provider's wire format and the provider's response back into the
//! client's format (SSE chunk by chunk).

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
use tokenrouter_engine::request::ClientApi;
use tokenrouter_engine::snapshot::ProviderEntry;
use tokenrouter_engine::translate::{translator_for, AttemptTarget, Translator, UpstreamRequest};
use tokenrouter_engine::usage::ChunkOutput;
use tokenrouter_engine::{ErrorKind, GatewayError};

use crate::{host, vm};

/// Headers the edge sets for Envoy and this filter only.
pub const INTERNAL_HEADERS: [&str; 6] = [
    "x-tr-cluster",
    "x-tr-provider",
    "x-tr-model",
    "x-tr-request-id",
    "x-tr-client-api",
    "x-tr-stream",
];

/// What the attempt needs once the body is in (read from the internal headers).
struct Attempt {
    provider: ProviderEntry,
    upstream_model: String,
    request_id: String,
    stream: bool,
}

pub struct Upstream {
    /// Provider of the cluster this filter instance belongs to.
    provider: String,
    /// Set once the request headers were read; `None` for a local reply.
    translator: Option<Box<dyn Translator>>,
    /// Set while the body is awaited (the translator reads it).
    pending: Option<Attempt>,
}

impl Upstream {
    pub fn new(provider: String) -> Upstream {
        Upstream {
            provider,
            translator: None,
            pending: None,
        }
    }

    fn start(&mut self, end_of_stream: bool) -> Result<Action, GatewayError> {
        let header = |name: &str| host::request_header(name).unwrap_or_default();
        let request_id = header("x-tr-request-id");
        let api =
            ClientApi::parse(&header("x-tr-client-api")).unwrap_or(ClientApi::ChatCompletions);
        let attempt = Attempt {
            provider: self.provider_entry()?,
            upstream_model: header("x-tr-model"),
            stream: header("x-tr-stream") == "1",
            request_id,
        };
        for h in INTERNAL_HEADERS {
            host::set_request_header(h, None);
        }
        host::set_request_header("authorization", None);
        host::set_request_header("x-api-key", None);
        let translator = translator_for(api, attempt.provider.kind)?;
        let provider = &attempt.provider;
        host::set_request_header(":authority", Some(&provider.base_url.authority()));
        if !provider.credential.is_empty() {
            let (name, value) = provider.kind.credential_header(&provider.credential);
            host::set_request_header(name, Some(&value));
        }
        let needs_body = translator.needs_request_body() && !end_of_stream;
        self.translator = Some(translator);
        if needs_body {
            self.pending = Some(attempt);
            return Ok(Action::Pause);
        }
        self.translate_request(&attempt, None)?;
        Ok(Action::Continue)
    }

    fn provider_entry(&self) -> Result<ProviderEntry, GatewayError> {
        if vm::snapshot().is_none() {
            vm::refresh_snapshot();
        }
        vm::snapshot()
            .and_then(|s| s.provider(&self.provider).cloned())
            .ok_or_else(|| {
                GatewayError::new(
                    ErrorKind::ServiceUnavailable,
                    format!(
                        "Provider '{}' is not configured on this gateway.",
                        self.provider
                    ),
                )
            })
    }

    /// Applies the translator's upstream request; `body` is the buffered client body and its
    /// size, when the translator reads it.
    fn translate_request(
        &mut self,
        attempt: &Attempt,
        body: Option<(&[u8], usize)>,
    ) -> Result<(), GatewayError> {
        let Some(translator) = self.translator.as_mut() else {
            return Ok(());
        };
        let target = AttemptTarget {
            provider: &attempt.provider.name,
            kind: attempt.provider.kind,
            base_url: &attempt.provider.base_url,
            upstream_model: &attempt.upstream_model,
            stream: attempt.stream,
            request_id: &attempt.request_id,
            now_unix_s: u64::try_from(host::now_ms() / 1000).unwrap_or(0),
        };
        let UpstreamRequest {
            path,
            set_headers,
            default_headers,
            remove_headers,
            body: new_body,
        } = translator.request(body.map_or(&[][..], |(b, _)| b), &target)?;
        host::set_request_header(":path", Some(&path));
        for name in &remove_headers {
            host::set_request_header(name, None);
        }
        for (name, value) in &default_headers {
            if host::request_header(name).is_none() {
                host::set_request_header(name, Some(value));
            }
        }
        for (name, value) in &set_headers {
            host::set_request_header(name, Some(value));
        }
        if let (Some(new_body), Some((_, size))) = (new_body, body) {
            host::set_request_header("content-length", Some(&new_body.len().to_string()));
            if !host::set_request_body(size, &new_body) {
                return Err(GatewayError::new(
                    ErrorKind::ServiceUnavailable,
                    "The gateway could not write the translated request.",
                ));
            }
        }
        Ok(())
    }

    fn reject(&mut self, error: GatewayError, request_id: &str) -> Action {
        self.translator = None;
        self.pending = None;
        host::send_json(error.status(), &error.to_json(request_id), &[]);
        Action::Pause
    }
}

impl Context for Upstream {}

impl HttpContext for Upstream {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        match self.start(end_of_stream) {
            Ok(action) => action,
            Err(mut e) => {
                let request_id = host::request_header("x-tr-request-id").unwrap_or_default();
                e.provider.get_or_insert_with(|| self.provider.clone());
                self.reject(e, &request_id)
            }
        }
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.pending.is_none() {
            return Action::Continue;
        }
        if !end_of_stream {
            return Action::Pause;
        }
        let Some(attempt) = self.pending.take() else {
            return Action::Continue;
        };
        let body = host::request_body(body_size).unwrap_or_default();
        match self.translate_request(&attempt, Some((&body, body_size))) {
            Ok(()) => Action::Continue,
            Err(mut e) => {
                e.provider
                    .get_or_insert_with(|| attempt.provider.name.clone());
                self.reject(e, &attempt.request_id)
            }
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(translator) = self.translator.as_mut() else {
            return Action::Continue;
        };
        let status = host::response_header(":status")
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let content_type = host::response_header("content-type");
        let mutation = translator.response_headers(status, content_type.as_deref());
        for name in &mutation.remove_headers {
            host::set_response_header(name, None);
        }
        for (name, value) in &mutation.set_headers {
            host::set_response_header(name, Some(value));
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let Some(translator) = self.translator.as_mut() else {
            return Action::Continue;
        };
        let chunk = if body_size > 0 {
            host::response_body(body_size).unwrap_or_default()
        } else {
            Vec::new()
        };
        if let ChunkOutput::Replace(out) = translator.response_body(&chunk, end_of_stream) {
            host::set_response_body(body_size, &out);
        }
        Action::Continue
    }
}
