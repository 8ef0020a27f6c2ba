//! A small HTTP(S) client for outgoing calls (the Stripe API, the CLI's REST and gateway calls): hyper's
//! pooled client over rustls with the `ring` provider and Mozilla's root certificates (built in,
//! so no system CA store is needed), HTTP/1.1, a time limit per call and a bounded answer.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::{HeaderMap, Request, StatusCode};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// Largest answer body read.
pub const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// Cheap to clone (one connection pool).
#[derive(Clone)]
pub struct HttpClient {
    inner: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HttpClient")
    }
}

/// Why a call got no answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    /// No connection, a broken one, or no answer in time.
    #[error("{0}")]
    Network(String),
    /// An answer that could not be read (too large, cut off).
    #[error("{0}")]
    Body(String),
}

/// An answer: its status, headers and (bounded) body.
#[derive(Clone, Debug)]
pub struct HttpAnswer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl HttpClient {
    pub fn new() -> Result<HttpClient, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(provider)
            .map_err(|e| format!("TLS configuration: {e}"))?
            .https_or_http()
            .enable_http1()
            .build();
        Ok(HttpClient {
            inner: Client::builder(TokioExecutor::new()).build(connector),
        })
    }

    /// Sends `request`; the status and the body of the answer, all within `timeout`.
    pub async fn send(
        &self,
        request: Request<Full<Bytes>>,
        timeout: Duration,
    ) -> Result<(StatusCode, Bytes), HttpError> {
        let answer = self.send_full(request, timeout).await?;
        Ok((answer.status, answer.body))
    }

    /// Like [`HttpClient::send`], with the answer's headers too.
    pub async fn send_full(
        &self,
        request: Request<Full<Bytes>>,
        timeout: Duration,
    ) -> Result<HttpAnswer, HttpError> {
        let call = async {
            let response = self
                .inner
                .request(request)
                .await
                .map_err(|e| HttpError::Network(error_chain(&e)))?;
            let status = response.status();
            let headers = response.headers().clone();
            let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map_err(|e| HttpError::Body(format!("cannot read the answer: {e}")))?
                .to_bytes();
            Ok(HttpAnswer {
                status,
                headers,
                body,
            })
        };
        tokio::time::timeout(timeout, call)
            .await
            .map_err(|_| HttpError::Network(format!("no answer within {} s", timeout.as_secs())))?
    }
}

/// `e` and its sources, `a: b: c` (each only once).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}
