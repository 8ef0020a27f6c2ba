//! The tokenrouter control plane: stores keys, providers, the model catalogue and usage, and
//! pushes configuration to every Envoy (FilterSync snapshots for the wasm filter, CDS over ADS
//! for the provider clusters). The same binary is the operator CLI.
//!
//! # Layout
//! - [`server`]: `run(grpc, rest, store, secrets, shutdown)` — the gRPC and REST servers.
//! - [`api`]: wire ↔ domain only: [`api::grpc`] (Admin, FilterSync, bearer auth) and
//!   [`api::rest`] (the management API `/api/v1/*` with its OpenAPI document, `/healthz`,
//!   `/metrics`, the demo provider in [`api::demo`]).
//! - [`service`]: domain logic with validated inputs; every config write is published.
//! - [`publisher`]: stored configuration → validated `Snapshot` + xDS [`xds::ClusterSet`],
//!   on two watch channels that always carry the same version.
//! - [`scores`]: live provider scores (latency, errors, 429 cool-downs) from ingested usage,
//!   pushed to every edge over FilterSync.
//! - [`store`]: the [`store::Store`] trait and its SQLite backend (migrations in `migrations/`).
//! - [`xds`]: the ADS server (CDS); [`bootstrap`]: the Envoy bootstrap template.
//! - [`config`], [`crypto`]: data directory, admin token, master key; credential sealing.
//! - [`metrics`]: counters and the OpenTelemetry GenAI histograms for `/metrics`.
//! - [`calendar`]: UTC days (usage summaries, the CLI's dates).
//! - [`cli`]: the `tokenrouter` command line (`serve` and the Admin client verbs).

pub mod api;
pub mod bootstrap;
pub mod calendar;
pub mod cli;
pub mod config;
pub mod crypto;
pub mod limits;
pub mod metrics;
pub mod payments;
pub mod publisher;
pub mod scores;
pub mod server;
pub mod service;
pub mod store;
pub mod xds;
