//! The upstream filter: runs in the provider cluster, once per attempt. It removes the gateway's
//! internal headers, sets the provider's credential, and lets the engine's translator turn the
//! client's request into the provider's wire format and the provider's response back into the
//! client's format (SSE chunk by chunk). A non-streamed 2xx answer is held until it is whole
//! and checked to be JSON; an unusable one becomes a 502 that Envoy retries on the chain's next
//! attempt.

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
use tokenrouter_engine::request::ClientApi;
use tokenrouter_engine::routing;
use tokenrouter_engine::snapshot::ProviderEntry;
use tokenrouter_engine::translate::{translator_for, AttemptTarget, Translator, UpstreamRequest};
use tokenrouter_engine::upstream::ProviderKind;
use tokenrouter_engine::usage::ChunkOutput;
use tokenrouter_engine::{ErrorKind, GatewayError};

use crate::held::{apply_mutation, HeldReply, Released};
use crate::{attempts, host, vm};

/// Headers the edge (or Envoy's router) sets for Envoy and this filter only; no provider sees
/// them.
pub const INTERNAL_HEADERS: [&str; 9] = [
    "x-tr-cluster",
    "x-tr-attempts",
    "x-tr-request-id",
    "x-tr-client-api",
    "x-tr-stream",
    "x-envoy-attempt-count",
    "x-envoy-max-retries",
    "x-envoy-upstream-rq-per-try-timeout-ms",
    "x-envoy-expected-rq-timeout-ms",
];

/// Bring-your-own-key headers (provider kind → header). The one of the attempt's provider kind
/// replaces the stored credential for that attempt; all are removed before the provider is
/// called, and none is ever logged or stored.
pub const BYOK_HEADERS: [(&str, &str); 5] = routing::BYOK_HEADER_KINDS;

/// The BYOK key a request carried for this provider kind, if any: it replaces the stored
/// credential for the attempt.
pub fn byok_credential(byok: &[(String, String)], kind: ProviderKind) -> Option<String> {
    byok.iter()
        .rev()
        .find(|(k, key)| k == kind.catalogue_kind().as_str() && !key.trim().is_empty())
        .map(|(_, key)| key.trim().to_string())
}

/// Provider credential headers (of every provider kind) an earlier attempt may have set.
pub const CREDENTIAL_HEADERS: [&str; 4] =
    ["authorization", "x-api-key", "api-key", "x-goog-api-key"];

/// Response header telling the edge which attempt (1-based) answered.
pub const ATTEMPT_HEADER: &str = "x-tr-attempt";

/// What the attempt needs once the body is in (read from the internal headers).
struct Attempt {
    provider: ProviderEntry,
    upstream_model: String,
    /// The model the edge wrote into the body (the first attempt's).
    body_model: String,
    request_id: String,
    stream: bool,
}

pub struct Upstream {
    /// Provider of the cluster this filter instance belongs to.
    provider: String,
    /// The attempt's provider, client API and whether the client asked for a stream.
    attempt_provider: String,
    client: ClientApi,
    stream: bool,
    held: Option<HeldReply>,
    /// Set once the request headers were read; `None` for a local reply.
    translator: Option<Box<dyn Translator>>,
    /// Set while the body is awaited (the translator reads it).
    pending: Option<Attempt>,
    request_id: String,
    number: u32,
}

impl Upstream {
    pub fn new(provider: String) -> Upstream {
        Upstream {
            provider,
            attempt_provider: String::new(),
            client: ClientApi::ChatCompletions,
            stream: false,
            held: None,
            translator: None,
            pending: None,
            request_id: String::new(),
            number: 0,
        }
    }

    fn start(&mut self, end_of_stream: bool) -> Result<Action, GatewayError> {
        // Read once: every single-header read is a host call.
        let headers = host::request_headers();
        let header = |name: &str| headers.value(name).unwrap_or_default();
        // The edge's plan (same worker, same VM); the internal headers only for the first
        // attempt of a request whose plan is not here (they are gone on retries).
        let request_id = headers
            .value("x-tr-request-id")
            .unwrap_or_else(|| header("x-request-id"));
        let plan = attempts::planned(&request_id).unwrap_or_else(|| attempts::Plan {
            chain: routing::parse_attempts_header(&header("x-tr-attempts")),
            client_api: header("x-tr-client-api"),
            stream: header("x-tr-stream") == "1",
            body_len: None,
            credentials: Vec::new(),
            byok: BYOK_HEADERS
                .iter()
                .filter_map(|(kind, h)| headers.value(h).map(|v| ((*kind).to_string(), v)))
                .collect(),
        });
        let api = ClientApi::parse(&plan.client_api).unwrap_or(ClientApi::ChatCompletions);
        let chain = plan.chain.clone();
        // Envoy's attempt count when the route adds it (the Istio path); else this worker's
        // count of the request's attempts so far (both filters run on the same worker).
        let number: u32 = headers
            .value("x-envoy-attempt-count")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| u32::try_from(attempts::started(&request_id) + 1).unwrap_or(1))
            .max(1);
        // Attempt n is chain entry n - 1. In a provider's own cluster the entry must name that
        // provider (should Envoy ever reach it out of order, its first entry is used); in a
        // chain cluster (no provider configured) the entry names the attempt's provider.
        let own = if self.provider.is_empty() {
            chain
                .get(number as usize - 1)
                .map(|(p, _)| p.clone())
                .unwrap_or_default()
        } else {
            self.provider.clone()
        };
        let mut provider = self.provider_entry(&own)?;
        let entry = chain
            .get(number as usize - 1)
            .filter(|(p, _)| *p == provider.name)
            .or_else(|| chain.iter().find(|(p, _)| *p == provider.name))
            .ok_or_else(|| {
                GatewayError::new(
                    ErrorKind::ServiceUnavailable,
                    format!(
                        "Attempt {number} reached provider '{}' outside its chain.",
                        provider.name
                    ),
                )
            })?;
        let attempt = Attempt {
            upstream_model: entry.1.clone(),
            body_model: chain.first().map(|(_, m)| m.clone()).unwrap_or_default(),
            stream: plan.stream,
            request_id,
            provider: provider.clone(),
        };
        self.request_id = attempt.request_id.clone();
        self.number = number;
        self.attempt_provider = provider.name.clone();
        self.client = api;
        self.stream = plan.stream;
        attempts::start(
            &attempt.request_id,
            &provider.name,
            &attempt.upstream_model,
            host::now_ms(),
        );
        // Every attempt gets the same header map (Envoy's retries share it): credentials of an
        // earlier attempt's provider go before this one's is set. Only headers that are there
        // are removed (each removal is a host call).
        let removed = INTERNAL_HEADERS
            .iter()
            .chain(CREDENTIAL_HEADERS.iter())
            .chain(BYOK_HEADERS.iter().map(|(_, h)| h));
        for h in removed.filter(|h| headers.contains(h)) {
            host::set_request_header(h, None);
        }
        // The credential the edge chose for this attempt (a fallback key on a retry).
        if let Some(chosen) = plan
            .credentials
            .get(number as usize - 1)
            .filter(|c| !c.is_empty())
        {
            provider.credential = chosen.clone();
        }
        if let Some(key) = byok_credential(&plan.byok, provider.kind) {
            provider.credential = key;
        }
        let translator = translator_for(api, provider.kind)?;
        if let Some(len) = plan.body_len {
            host::set_request_header("content-length", Some(&len.to_string()));
        }
        host::set_request_header(":authority", Some(&provider.base_url.authority()));
        if !provider.credential.is_empty() {
            let (name, value) = provider.kind.credential_header(&provider.credential);
            host::set_request_header(name, Some(&value));
        }
        let attempt = Attempt {
            provider,
            ..attempt
        };
        // A pass-through attempt to another model than the body names rewrites the body.
        let needs_body = (translator.needs_request_body()
            || attempt.upstream_model != attempt.body_model)
            && !end_of_stream;
        self.translator = Some(translator);
        if needs_body {
            self.pending = Some(attempt);
            return Ok(Action::Pause);
        }
        self.translate_request(&attempt, None)?;
        Ok(Action::Continue)
    }

    fn provider_entry(&self, name: &str) -> Result<ProviderEntry, GatewayError> {
        if vm::snapshot().is_none() {
            vm::refresh_snapshot();
        }
        vm::snapshot()
            .and_then(|s| s.provider(name).cloned())
            .ok_or_else(|| {
                GatewayError::new(
                    ErrorKind::ServiceUnavailable,
                    format!("Provider '{name}' is not configured on this gateway."),
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
        let new_body = match (new_body, body) {
            (None, Some((b, _))) if attempt.upstream_model != attempt.body_model => {
                routing::with_model(b, &attempt.upstream_model)
            }
            (new_body, _) => new_body,
        };
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
        // Marked as this attempt's answer, so the edge passes the envelope on as it is.
        let number = self.number.max(1).to_string();
        host::send_json(
            error.status(),
            &error.to_json(request_id),
            &[(ATTEMPT_HEADER, number.as_str())],
        );
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

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let Some(translator) = self.translator.as_mut() else {
            return Action::Continue;
        };
        let headers = host::response_headers();
        let status: u16 = headers
            .get(":status")
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let content_type = headers.value("content-type");
        host::set_response_header(ATTEMPT_HEADER, Some(&self.number.to_string()));
        let streamed = content_type
            .as_deref()
            .is_some_and(|c| c.trim_start().starts_with("text/event-stream"));
        if (200..300).contains(&status) && !self.stream && !streamed {
            // Judged once the body is in (`on_http_response_body`), headers included.
            self.held = Some(HeldReply::new(status, content_type));
            if end_of_stream {
                return self.release_held(0);
            }
            return Action::Pause;
        }
        let retry_after = (status == 429)
            .then(|| headers.get("retry-after"))
            .flatten()
            .and_then(|v| v.trim().parse::<u32>().ok());
        attempts::answered(&self.request_id, status, retry_after, host::now_ms());
        let mutation = translator.response_headers(status, content_type.as_deref());
        apply_mutation(&mutation, content_type);
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.translator.is_none() {
            return Action::Continue;
        }
        let chunk = if body_size > 0 {
            host::response_body(body_size).unwrap_or_default()
        } else {
            Vec::new()
        };
        if let Some(held) = self.held.as_mut() {
            if !held.collect(body_size, &chunk, end_of_stream) {
                return Action::Pause;
            }
            return self.release_held(body_size);
        }
        let Some(translator) = self.translator.as_mut() else {
            return Action::Continue;
        };
        if let ChunkOutput::Replace(out) = translator.response_body(&chunk, end_of_stream) {
            host::set_response_body(body_size, &out);
        }
        Action::Continue
    }
}

impl Upstream {
    /// Lets a held answer go: as it came (translated) when usable, else as a 502 naming the
    /// provider — which Envoy retries on the chain's next attempt, if there is one.
    fn release_held(&mut self, body_size: usize) -> Action {
        let (Some(held), Some(translator)) = (self.held.take(), self.translator.as_mut()) else {
            return Action::Continue;
        };
        let request_id = &self.request_id;
        let released = held.release(
            body_size,
            translator.as_mut(),
            &self.attempt_provider,
            self.client,
            request_id,
            |status, now| attempts::answered(request_id, status, None, now),
        );
        if let Released::Unusable = released {
            self.translator = None;
        }
        Action::Continue
    }
}
