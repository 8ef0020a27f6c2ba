//! The REST client the verbs a gateway key may run use (`balance`, `topup` with
//! `--api-key` / `TOKENROUTER_API_KEY`): the key as the bearer token, JSON both ways, the
//! seeds' error envelope turned into a [`CliError`].

use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use hyper::{Method, Request};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{CliError, ErrorKind};
use crate::payments::http::{HttpClient, HttpError};

const CALL_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Rest {
    /// Without a trailing `/`.
    base: String,
    key: String,
    http: HttpClient,
}

impl Rest {
    /// A client of the REST API at `rest_url` calling as the gateway key `key`.
    pub fn new(rest_url: &str, key: &str) -> Result<Rest, CliError> {
        let base = rest_url.trim().trim_end_matches('/').to_string();
        match base.parse::<hyper::Uri>() {
            Ok(uri)
                if matches!(uri.scheme_str(), Some("http" | "https")) && uri.host().is_some() => {}
            _ => {
                return Err(CliError::new(
                    ErrorKind::Usage,
                    format!("invalid --rest-url {rest_url:?}: expected http(s)://host:port"),
                ))
            }
        }
        if !key.starts_with(tokenrouter_engine::keys::KEY_PREFIX) {
            return Err(CliError::config(format!(
                "TOKENROUTER_API_KEY / --api-key must be a gateway key ({}…)",
                tokenrouter_engine::keys::KEY_PREFIX
            )));
        }
        let http = HttpClient::new().map_err(|e| CliError::new(ErrorKind::Server, e))?;
        Ok(Rest {
            base,
            key: key.to_string(),
            http,
        })
    }

    /// `GET /api/v1{path}` with `query` (pairs whose value is empty are left out).
    pub async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, &str)],
    ) -> Result<T, CliError> {
        let pairs: Vec<(&str, &str)> = query
            .iter()
            .copied()
            .filter(|(_, v)| !v.is_empty())
            .collect();
        let mut path = path.to_string();
        if !pairs.is_empty() {
            let encoded = serde_urlencoded::to_string(&pairs)
                .map_err(|e| CliError::new(ErrorKind::Usage, format!("bad query: {e}")))?;
            path = format!("{path}?{encoded}");
        }
        self.call(Method::GET, &path, None).await
    }

    /// `POST /api/v1{path}` with a JSON body.
    pub async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl Serialize,
    ) -> Result<T, CliError> {
        let body = serde_json::to_vec(body)
            .map_err(|e| CliError::new(ErrorKind::Usage, format!("cannot encode JSON: {e}")))?;
        self.call(Method::POST, path, Some(body)).await
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, CliError> {
        let url = format!("{}/api/v1{path}", self.base);
        let mut request = Request::builder()
            .method(method)
            .uri(&url)
            .header(AUTHORIZATION, format!("Bearer {}", self.key))
            .header(ACCEPT, "application/json");
        if body.is_some() {
            request = request.header(CONTENT_TYPE, "application/json");
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| {
                CliError::config(format!(
                    "cannot build the request to {url} (is the API key valid header text?): {e}"
                ))
            })?;
        let (status, body) = self
            .http
            .send(request, CALL_TIMEOUT)
            .await
            .map_err(|e| match e {
                HttpError::Network(m) => CliError::new(
                    ErrorKind::Network,
                    format!(
                        "cannot reach the control plane REST API at {}: {m}",
                        self.base
                    ),
                ),
                HttpError::Body(m) => CliError::new(ErrorKind::Network, m),
            })?;
        if !status.is_success() {
            return Err(CliError::from_http(status.as_u16(), &body));
        }
        serde_json::from_slice(&body).map_err(|e| {
            CliError::new(
                ErrorKind::Server,
                format!("the control plane's answer is not the expected JSON: {e}"),
            )
        })
    }
}
