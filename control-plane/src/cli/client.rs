//! The Admin API client the verbs use: connect timeout, admin token from the usual sources.

use std::time::Duration;

use tokenrouter_proto::admin::v1::admin_client::AdminClient;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use super::error::chain;
use super::{CliError, ErrorKind, Globals};
use crate::config::{admin_token_from_file, ADMIN_TOKEN_FILE};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

type Auth = Box<dyn FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Send>;
pub type Admin = AdminClient<InterceptedService<Channel, Auth>>;

/// The admin token: `--admin-token` / `TOKENROUTER_ADMIN_TOKEN`, else `<data-dir>/admin_token`.
pub fn admin_token(g: &Globals) -> Result<String, CliError> {
    if let Some(t) = &g.admin_token {
        return Ok(t.trim().to_string());
    }
    match admin_token_from_file(&g.data_dir, false) {
        Ok(Some(t)) => Ok(t.as_str().to_string()),
        Ok(None) => Err(CliError::config(format!(
            "admin token required: set TOKENROUTER_ADMIN_TOKEN, pass --admin-token, or point \
             --data-dir at the control plane's data directory (no {} there)",
            g.data_dir.join(ADMIN_TOKEN_FILE).display()
        ))),
        Err(e) => Err(CliError::config(format!(
            "cannot read the admin token: {e}"
        ))),
    }
}

/// Connects to the control plane's Admin API.
pub async fn connect(g: &Globals) -> Result<Admin, CliError> {
    let token = admin_token(g)?;
    let header: MetadataValue<_> = format!("Bearer {token}").parse().map_err(|_| {
        CliError::config("the admin token contains characters not allowed in a header")
    })?;
    let endpoint = Endpoint::from_shared(g.api_url.clone())
        .map_err(|e| {
            CliError::new(
                ErrorKind::Usage,
                format!("invalid --api-url {:?}: {e}", g.api_url),
            )
        })?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(CALL_TIMEOUT);
    let channel = endpoint.connect().await.map_err(|e| {
        CliError::new(
            ErrorKind::Network,
            format!(
                "cannot reach the control plane at {}: {}",
                g.api_url,
                chain(&e)
            ),
        )
    })?;
    let auth: Auth = Box::new(move |mut request: tonic::Request<()>| {
        request
            .metadata_mut()
            .insert("authorization", header.clone());
        Ok(request)
    });
    Ok(AdminClient::with_interceptor(channel, auth))
}
