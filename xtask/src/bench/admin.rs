//! Seeding the tokenrouter candidate through the control plane's gRPC Admin API (never the
//! database): keys (concurrently), the provider, revokes; and the hooks where routing and
//! firewall rules will be seeded once the Admin API has them.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use tokenrouter_proto::admin::v1 as pb;
use tokenrouter_proto::admin::v1::admin_client::AdminClient;
use tokio::sync::Mutex;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};

/// Key creations in flight at once. The store serialises writes, so more buys nothing (and
/// more makes SQLite's "database is locked" answers, see [`CREATE_RETRIES`], more frequent).
pub const SEED_CONCURRENCY: usize = 4;
/// Retries of a `CreateKey` that failed with `Internal`: concurrent writes sometimes fail with
/// SQLite's "database is locked" (a control-plane finding the report counts and shows).
const CREATE_RETRIES: usize = 5;

/// A created key: its id (to revoke it) and its raw value (to use it).
#[derive(Clone, Debug)]
pub struct Key {
    pub id: String,
    pub raw: String,
}

/// How seeding `count` items went.
#[derive(Clone, Debug)]
pub struct Seeded {
    pub count: usize,
    pub elapsed: Duration,
    /// `CreateKey` calls that failed with `Internal` and were retried.
    pub retried: usize,
}

/// The Admin API with the admin token attached to every call.
#[derive(Clone)]
pub struct Admin {
    client: AdminClient<Channel>,
    token: MetadataValue<tonic::metadata::Ascii>,
}

impl Admin {
    pub async fn connect(grpc_addr: &str, admin_token: &str) -> Result<Admin> {
        let channel = Endpoint::from_shared(format!("http://{grpc_addr}"))?
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(60))
            .connect()
            .await
            .with_context(|| format!("cannot reach the control plane at {grpc_addr}"))?;
        let token = format!("Bearer {admin_token}")
            .parse()
            .map_err(|_| anyhow!("admin token is not a valid header value"))?;
        Ok(Admin {
            client: AdminClient::new(channel),
            token,
        })
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request
            .metadata_mut()
            .insert("authorization", self.token.clone());
        request
    }

    /// Registers (or replaces) an `openai-compatible` provider.
    pub async fn add_provider(&self, name: &str, base_url: &str) -> Result<()> {
        let message = pb::AddProviderRequest {
            name: name.into(),
            kind: "openai-compatible".into(),
            base_url: base_url.into(),
            api_key: "sk-bench-upstream".into(),
            replace: true,
        };
        self.client
            .clone()
            .add_provider(self.request(message))
            .await
            .with_context(|| format!("AddProvider {name}"))?;
        Ok(())
    }

    pub async fn create_key(&self, name: String) -> Result<Key> {
        let message = pb::CreateKeyRequest {
            name,
            workspace_id: String::new(),
        };
        let reply = self
            .client
            .clone()
            .create_key(self.request(message))
            .await
            .context("CreateKey")?
            .into_inner();
        let id = reply
            .key
            .map(|k| k.id)
            .ok_or_else(|| anyhow!("CreateKey answered without a key"))?;
        Ok(Key { id, raw: reply.raw })
    }

    /// [`Admin::create_key`], retried (up to [`CREATE_RETRIES`] times) when the control plane
    /// answers `Internal`; every retry is counted in `retried`.
    async fn create_key_retrying(&self, name: String, retried: &AtomicUsize) -> Result<Key> {
        let mut attempt = 0;
        loop {
            match self.create_key(name.clone()).await {
                Ok(key) => return Ok(key),
                Err(e) if attempt < CREATE_RETRIES && is_internal(&e) => {
                    attempt += 1;
                    retried.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(20 * attempt as u64)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    pub async fn revoke_key(&self, id: &str) -> Result<()> {
        let message = pb::RevokeKeyRequest { id: id.into() };
        self.client
            .clone()
            .revoke_key(self.request(message))
            .await
            .with_context(|| format!("RevokeKey {id}"))?;
        Ok(())
    }

    /// Creates keys `bench-<first>…` concurrently until `count` exist or `budget` is spent.
    /// Returns the keys created (fewer than `count` when the budget ran out) and the time taken.
    pub async fn seed_keys(
        &self,
        first: usize,
        count: usize,
        budget: Duration,
    ) -> Result<(Vec<Key>, Seeded)> {
        let started = Instant::now();
        let next = Arc::new(Mutex::new(0usize));
        let created = Arc::new(Mutex::new(Vec::with_capacity(count)));
        let retried = Arc::new(AtomicUsize::new(0));
        let mut workers = Vec::new();
        for _ in 0..SEED_CONCURRENCY {
            let (admin, next, created, retried) =
                (self.clone(), next.clone(), created.clone(), retried.clone());
            workers.push(tokio::spawn(async move {
                loop {
                    let i = {
                        let mut next = next.lock().await;
                        if *next >= count || started.elapsed() > budget {
                            return Ok::<(), anyhow::Error>(());
                        }
                        *next += 1;
                        *next - 1
                    };
                    let key = admin
                        .create_key_retrying(format!("bench-{}", first + i), &retried)
                        .await?;
                    created.lock().await.push(key);
                }
            }));
        }
        let mut last_report = Instant::now();
        for worker in workers {
            while !worker.is_finished() {
                tokio::time::sleep(Duration::from_millis(200)).await;
                if last_report.elapsed() > Duration::from_secs(10) {
                    last_report = Instant::now();
                    let done = created.lock().await.len();
                    println!(
                        "  … {done}/{count} keys after {:.0}s",
                        started.elapsed().as_secs_f64()
                    );
                }
            }
            worker.await.context("key seeding task failed")??;
        }
        let keys = std::mem::take(&mut *created.lock().await);
        let seeded = Seeded {
            count: keys.len(),
            elapsed: started.elapsed(),
            retried: retried.load(Ordering::Relaxed),
        };
        Ok((keys, seeded))
    }

    /// Seeds `n` routing rules. The hook for issue "routing rules": when the Admin API gains
    /// rule writes, create `n` rules here (none of which match the benchmark's model, plus one
    /// that does, last) and return what was created; the runner then reports the 10 → 1 000
    /// rules row.
    pub async fn seed_routing_rules(&self, _n: usize) -> Result<RulesSeeding> {
        Ok(RulesSeeding::Unavailable(
            "the Admin API has no routing rules yet",
        ))
    }

    /// Seeds `n` firewall rules (same contract as [`Admin::seed_routing_rules`]): rules that
    /// scan the prompt and do not match the benchmark's body. The Admin API's
    /// `CreateFirewallRule` is landing alongside this runner: call it here, `n` times.
    pub async fn seed_firewall_rules(&self, _n: usize) -> Result<RulesSeeding> {
        Ok(RulesSeeding::Unavailable(
            "the runner does not seed them yet (CreateFirewallRule is being built alongside)",
        ))
    }
}

/// Whether rules could be seeded.
#[derive(Debug)]
pub enum RulesSeeding {
    // Built by the hooks above once the Admin API can write rules.
    #[allow(dead_code)]
    Seeded(Seeded),
    /// The feature does not exist yet: the row is reported as not available, with this reason.
    Unavailable(&'static str),
}

fn is_internal(e: &anyhow::Error) -> bool {
    e.downcast_ref::<tonic::Status>()
        .is_some_and(|status| status.code() == tonic::Code::Internal)
}
