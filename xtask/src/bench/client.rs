//! A minimal keep-alive HTTP/1.1 client (hyper) for what the load tool cannot measure: time to
//! first and last byte of a streamed answer, the first 401 after a key revoke, and the soak's
//! mixed load (whose streams must end with `[DONE]`).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Longest any single request may take before the run fails.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// One keep-alive connection.
pub struct Conn {
    addr: SocketAddr,
    sender: SendRequest<Full<Bytes>>,
}

/// What one request saw.
pub struct Timing {
    pub status: u16,
    /// From sending the request to the first non-empty body frame (the response end when the
    /// body is empty).
    pub first_byte: Duration,
    /// From sending the request to the end of the body.
    pub last_byte: Duration,
    pub body_bytes: usize,
    /// The gateway's `x-tokenrouter-rule-trace` response header, if any.
    pub rule_trace: Option<String>,
    /// The body's last [`TAIL_BYTES`] bytes (or all of it when shorter).
    pub tail: Vec<u8>,
}

/// How much of a body's end [`Timing::tail`] keeps (enough for a stream's `data: [DONE]`).
pub const TAIL_BYTES: usize = 64;

impl Conn {
    pub async fn connect(addr: SocketAddr) -> Result<Conn> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("cannot connect to {addr}"))?;
        stream.set_nodelay(true)?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            // The connection ends with the benchmark (or the server closes it): nothing to do.
            let _ = connection.await;
        });
        Ok(Conn { addr, sender })
    }

    /// Whether the server closed the connection (a keep-alive connection may be closed between
    /// requests; nothing was sent on it then).
    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }

    /// `POST path` with a JSON body and, when given, `authorization: Bearer <key>`; reads the
    /// whole response body.
    pub async fn post(&mut self, path: &str, key: Option<&str>, body: &Bytes) -> Result<Timing> {
        tokio::time::timeout(REQUEST_TIMEOUT, self.post_inner(path, key, body))
            .await
            .with_context(|| format!("request to {}{path} timed out", self.addr))?
    }

    async fn post_inner(&mut self, path: &str, key: Option<&str>, body: &Bytes) -> Result<Timing> {
        self.sender
            .ready()
            .await
            .context("connection closed by the server")?;
        let mut request = Request::post(path)
            .header("host", self.addr.to_string())
            .header("content-type", "application/json");
        if let Some(key) = key {
            request = request.header("authorization", format!("Bearer {key}"));
        }
        let request = request.body(Full::new(body.clone()))?;
        let started = Instant::now();
        let response = self.sender.send_request(request).await?;
        let status = response.status().as_u16();
        let rule_trace = response
            .headers()
            .get("x-tokenrouter-rule-trace")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let mut body = response.into_body();
        let mut first_byte = None;
        let mut body_bytes = 0;
        let mut tail = Vec::with_capacity(2 * TAIL_BYTES);
        while let Some(frame) = body.frame().await {
            if let Some(data) = frame?.data_ref() {
                if !data.is_empty() && first_byte.is_none() {
                    first_byte = Some(started.elapsed());
                }
                body_bytes += data.len();
                tail.extend_from_slice(&data[data.len().saturating_sub(TAIL_BYTES)..]);
                if tail.len() > TAIL_BYTES {
                    tail.drain(..tail.len() - TAIL_BYTES);
                }
            }
        }
        let last_byte = started.elapsed();
        Ok(Timing {
            status,
            first_byte: first_byte.unwrap_or(last_byte),
            last_byte,
            body_bytes,
            rule_trace,
            tail,
        })
    }
}

/// `n` sequential streamed requests on one connection (after `warmup` unrecorded ones).
/// Returns (time to first byte, time to last byte) per request, in microseconds.
pub async fn stream_timings(
    addr: SocketAddr,
    key: Option<&str>,
    body: &Bytes,
    warmup: usize,
    n: usize,
) -> Result<Vec<(f64, f64)>> {
    let mut conn = Conn::connect(addr).await?;
    let mut out = Vec::with_capacity(n);
    for i in 0..warmup + n {
        let timing = conn.post("/v1/chat/completions", key, body).await?;
        if timing.status != 200 {
            bail!("streamed request to {addr} answered {}", timing.status);
        }
        if timing.body_bytes < 1000 {
            bail!(
                "streamed answer from {addr} is only {} bytes: not a stream",
                timing.body_bytes
            );
        }
        if i >= warmup {
            out.push((
                timing.first_byte.as_secs_f64() * 1e6,
                timing.last_byte.as_secs_f64() * 1e6,
            ));
        }
    }
    Ok(out)
}
