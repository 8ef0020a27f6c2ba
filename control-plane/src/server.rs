//! `tokenrouter serve`: the gRPC server (Admin, FilterSync, ADS, reflection) and the REST server
//! on listeners the caller bound, until `shutdown` completes.

use std::future::{Future, IntoFuture};
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryServiceServer;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitServiceServer;
use tokenrouter_proto::admin::v1::admin_server::AdminServer;
use tokenrouter_proto::sync::v1::edge_calls_server::EdgeCallsServer;
use tokenrouter_proto::sync::v1::filter_sync_server::FilterSyncServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;

use crate::api::grpc::admin::AdminApi;
use crate::api::grpc::idempotency::{EdgeCallsApi, Idempotency};
use crate::api::grpc::ratelimit::RateLimitApi;
use crate::api::grpc::sync::SyncApi;
use crate::api::grpc::BearerAuth;
use crate::api::rest;
use crate::config::{AdminToken, MasterKey};
use crate::crypto::Sealer;
use crate::service::Service;
use crate::store::Store;
use crate::xds::Ads;

/// How long open streams (Envoys' ADS streams in particular) may delay a shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// The secrets the server runs with.
#[derive(Debug)]
pub struct Secrets {
    pub admin_token: AdminToken,
    pub master_key: MasterKey,
}

/// Runs both servers until `shutdown` completes (then drains for at most [`SHUTDOWN_GRACE`]) or
/// one of them fails.
pub async fn run(
    grpc: TcpListener,
    rest: TcpListener,
    store: Arc<dyn Store>,
    secrets: Secrets,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let idempotency = Idempotency::new(Arc::clone(&store));
    let service = Service::start(store, Sealer::new(&secrets.master_key.0)).await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };

    let auth = BearerAuth::new(secrets.admin_token.as_str());
    let admin_auth = auth.clone();
    let sync_auth = auth.clone();
    let calls_auth = auth.clone();
    let rls_auth = auth.clone();
    let rest_auth = auth;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(tokenrouter_proto::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(tokenrouter_proto::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    let grpc_server = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .add_service(AdminServer::with_interceptor(
            AdminApi::new(service.clone()),
            move |r| admin_auth.intercept(r),
        ))
        .add_service(FilterSyncServer::with_interceptor(
            SyncApi::new(service.clone(), idempotency.clone(), stop_rx.clone()),
            move |r| sync_auth.intercept(r),
        ))
        .add_service(EdgeCallsServer::with_interceptor(
            EdgeCallsApi::new(idempotency),
            move |r| calls_auth.intercept(r),
        ))
        .add_service(RateLimitServiceServer::with_interceptor(
            RateLimitApi::new(service.limiter()),
            move |r| rls_auth.intercept(r),
        ))
        .add_service(AggregatedDiscoveryServiceServer::new(Ads::new(
            service.clusters(),
            Arc::from(secrets.admin_token.as_str()),
        )))
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .serve_with_incoming_shutdown(TcpListenerStream::new(grpc), stopped(stop_rx.clone()));
    let rest_server = axum::serve(rest, rest::router(service.clone(), rest_auth))
        .with_graceful_shutdown(stopped(stop_rx.clone()))
        .into_future();

    let servers = async {
        tokio::try_join!(
            async { grpc_server.await.map_err(anyhow::Error::from) },
            async { rest_server.await.map_err(anyhow::Error::from) },
        )
        .map(drop)
    };
    tokio::pin!(servers);
    tokio::select! {
        result = &mut servers => return result,
        () = shutdown => {}
    }
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    match tokio::time::timeout(SHUTDOWN_GRACE, servers).await {
        Ok(result) => result,
        Err(_) => {
            tracing::warn!("streams still open after {SHUTDOWN_GRACE:?}; closing them");
            Ok(())
        }
    }
}
