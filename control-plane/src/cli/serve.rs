//! `tokenrouter serve`: loads the configuration, opens the store, binds, runs until a signal.

use std::net::SocketAddr;
use std::sync::Arc;

use clap::Args;
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

use super::error::chain;
use super::{CliError, ErrorKind, Globals};
use crate::config::ServeConfig;
use crate::server::{self, Secrets};
use crate::store::{PostgresStore, SqliteStore, Store, StoreError};

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// gRPC listen address (Admin, FilterSync, ADS, reflection).
    #[arg(long, default_value = "127.0.0.1:50051")]
    grpc_addr: SocketAddr,
    /// REST listen address (/healthz, /metrics, /demo/v1).
    #[arg(long, default_value = "127.0.0.1:8081")]
    rest_addr: SocketAddr,
}

pub async fn run(args: ServeArgs, g: &Globals) -> Result<(), CliError> {
    let _ = tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .try_init();

    let config = ServeConfig::load(&g.data_dir, g.admin_token.as_deref())
        .map_err(|e| CliError::config(e.to_string()))?;
    match &config.admin_token_file {
        Some(path) => tracing::info!("admin token: {}", path.display()),
        None => tracing::info!("admin token: from --admin-token / TOKENROUTER_ADMIN_TOKEN"),
    }
    let store = open_store(&config.database_url).await?;
    let grpc = bind(args.grpc_addr).await?;
    let rest = bind(args.rest_addr).await?;
    tracing::info!(
        grpc = %args.grpc_addr,
        rest = %args.rest_addr,
        data_dir = %config.data_dir.display(),
        "tokenrouter control plane listening"
    );
    let secrets = Secrets {
        admin_token: config.admin_token,
        master_key: config.master_key,
    };
    let result = server::run(grpc, rest, store.clone(), secrets, shutdown_signal()).await;
    store.close().await;
    result.map_err(|e| CliError::new(ErrorKind::Server, chain(e.as_ref())))?;
    tracing::info!("stopped");
    Ok(())
}

async fn open_store(url: &str) -> Result<Arc<dyn Store>, CliError> {
    let cannot_open = |e: StoreError| {
        CliError::new(
            ErrorKind::Server,
            format!("cannot open the database: {}", chain(&e)),
        )
    };
    if url.starts_with("sqlite:") {
        Ok(Arc::new(SqliteStore::open(url).await.map_err(cannot_open)?))
    } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        Ok(Arc::new(
            PostgresStore::open(url).await.map_err(cannot_open)?,
        ))
    } else {
        Err(CliError::config(
            "DATABASE_URL must start with sqlite: or postgres: (or postgresql:)",
        ))
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, CliError> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| CliError::config(format!("cannot listen on {addr}: {e}")))
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
