//! `tokenrouter envoy-bootstrap`: renders the Envoy bootstrap locally.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;

use super::output::Output;
use super::{CliError, Globals};
use crate::bootstrap::{parse_bind_address, render, BootstrapParams, ControlEndpoints};
use crate::config::admin_token_from_file;

#[derive(Debug, Args)]
pub struct EnvoyBootstrapArgs {
    /// Gateway listener address (IP:PORT; Envoy binds to an IP, e.g. 0.0.0.0:8080).
    #[arg(long, default_value = "127.0.0.1:8080", value_parser = parse_bind_address)]
    listen: SocketAddr,
    /// Envoy admin address (IP:PORT).
    #[arg(long, default_value = "127.0.0.1:9901", value_parser = parse_bind_address)]
    admin: SocketAddr,
    /// Control plane gRPC address: IP:PORT (STATIC cluster) or HOST:PORT, e.g.
    /// controlplane:50051 (STRICT_DNS cluster, resolved by Envoy); several replicas separated
    /// by commas (endpoints of one health-checked cluster).
    #[arg(long, default_value = "127.0.0.1:50051")]
    control: ControlEndpoints,
    /// Path of tokenrouter_filter.wasm as Envoy sees it (made absolute; need not exist here, so
    /// a bootstrap for a container can be rendered elsewhere).
    #[arg(long)]
    wasm: PathBuf,
    /// Envoy node id.
    #[arg(long, default_value = "tokenrouter")]
    node_id: String,
    /// Largest request body the gateway accepts (413 beyond).
    #[arg(long, default_value_t = 4 * 1024 * 1024)]
    max_request_body_bytes: u64,
    /// The edge as the native module (an Envoy dynamic module, `libtokenrouter_native.so`,
    /// which Envoy finds in `ENVOY_DYNAMIC_MODULES_SEARCH_PATH`) instead of the wasm filter.
    #[arg(long)]
    native: bool,
    /// Write to this file instead of stdout.
    #[arg(long)]
    out: Option<PathBuf>,
}

pub fn run(args: EnvoyBootstrapArgs, g: &Globals, out: &Output) -> Result<(), CliError> {
    // The same token the control plane uses: given, or the data directory's (created here when
    // the bootstrap is rendered before the first `serve`, which then adopts it).
    let admin_token = match &g.admin_token {
        Some(t) => t.trim().to_string(),
        None => admin_token_from_file(&g.data_dir, true)
            .map_err(|e| CliError::config(format!("cannot read the admin token: {e}")))?
            .map(|t| t.as_str().to_string())
            .ok_or_else(|| CliError::config("no admin token"))?,
    };
    let wasm_path = std::path::absolute(&args.wasm)
        .map_err(|e| CliError::config(format!("cannot resolve {}: {e}", args.wasm.display())))?;
    let yaml = render(&BootstrapParams {
        listen: args.listen,
        admin: args.admin,
        control: args.control,
        wasm_path,
        admin_token,
        node_id: args.node_id,
        max_request_body_bytes: args.max_request_body_bytes,
        native: args.native,
    });
    match args.out {
        None => {
            print!("{yaml}");
            Ok(())
        }
        Some(path) => {
            write_private(&path, &yaml)
                .map_err(|e| CliError::config(format!("cannot write {}: {e}", path.display())))?;
            let shown = path.display().to_string();
            out.print(&serde_json::json!({"written": shown}), || {
                format!("wrote {shown}")
            })
        }
    }
}

/// The bootstrap holds the admin token: owner-readable only.
fn write_private(path: &std::path::Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)?.write_all(contents.as_bytes())
}
