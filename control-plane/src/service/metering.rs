//! Workspaces, balances, credit and top-ups (seed 002's `balance` / `topup`, seed 000's
//! workspaces). Enforcement is `crate::limits`; money is integer pico-dollars, written and read
//! as exact decimal USD.

use std::sync::Arc;

use tokenrouter_engine::money::{parse_usd_to_micros, PICOS_PER_USD};
use tokenrouter_engine::snapshot::valid_name;

use super::{now_ms, unexpected, Result, Service, ServiceError};
use crate::limits::Limiter;
use crate::payments::{PaymentError, WebhookEvent};
use crate::store::metering::{Grant, Granted, Owner, TopupSession};
use crate::store::{Changed, ConfigChange, Limits, WorkspaceRow};

/// Largest amount one grant or top-up may add (USD).
pub const MAX_CREDIT_USD: i64 = 1_000_000;

/// A balance as `balance` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BalanceView {
    /// "key", "workspace" or "total".
    pub owner: &'static str,
    pub id: String,
    pub metered: bool,
    pub balance_picos: i64,
    /// Held by requests in flight.
    pub reserved_picos: i64,
}

impl BalanceView {
    pub fn available_picos(&self) -> i64 {
        self.balance_picos
            .saturating_sub(self.reserved_picos)
            .max(0)
    }
}

/// What a payment webhook did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WebhookOutcome {
    Credited {
        key_id: String,
        balance_picos: i64,
    },
    /// This event was credited before.
    Duplicate,
    Ignored,
}

/// Parses an exact decimal USD amount (at most 6 decimals) into pico-dollars, > 0 and at most
/// [`MAX_CREDIT_USD`].
pub fn parse_credit_usd(s: &str) -> Result<i64> {
    let micros = parse_usd_to_micros(s).ok_or_else(|| {
        ServiceError::InvalidArgument(format!(
            "amount {s:?} is not a decimal USD amount (e.g. \"5\" or \"0.25\", at most 6 decimals)"
        ))
    })?;
    if micros <= 0 || micros > MAX_CREDIT_USD * 1_000_000 {
        return Err(ServiceError::InvalidArgument(format!(
            "amount must be more than 0 and at most {MAX_CREDIT_USD} USD"
        )));
    }
    let per_micro = i64::try_from(PICOS_PER_USD / 1_000_000).unwrap_or(1_000_000);
    Ok(micros.saturating_mul(per_micro))
}

/// A balance that may be zero (a key created with `"0"` is metered and refused until credited).
pub fn parse_balance_usd(s: &str) -> Result<i64> {
    if parse_usd_to_micros(s) == Some(0) {
        return Ok(0);
    }
    parse_credit_usd(s)
}

/// An optional starting balance as the APIs take it (`None` = not metered).
pub fn parse_optional_balance_usd(s: Option<&str>) -> Result<Option<i64>> {
    s.map(parse_balance_usd).transpose()
}

fn workspace_id(id: &str) -> Result<&str> {
    let id = id.trim();
    if valid_name(id) {
        Ok(id)
    } else {
        Err(ServiceError::InvalidArgument(format!(
            "workspace {id:?} is not valid: use 1-64 of a-z, 0-9, '-' and '_'"
        )))
    }
}

impl Service {
    pub fn limiter(&self) -> Arc<Limiter> {
        self.limiter.clone()
    }

    pub async fn create_workspace(
        &self,
        id: &str,
        balance_picos: Option<i64>,
        limits: Limits,
    ) -> Result<WorkspaceRow> {
        let id = workspace_id(id)?;
        if balance_picos.is_some_and(|b| b < 0) {
            return Err(ServiceError::InvalidArgument(
                "a balance cannot be negative".into(),
            ));
        }
        let row = WorkspaceRow {
            id: id.to_string(),
            created_at_ms: now_ms(),
            limits,
            metered: balance_picos.is_some(),
        };
        let workspace = match self.write(ConfigChange::CreateWorkspace(row)).await? {
            Changed::Workspace(w) => w,
            other => return Err(unexpected(other)),
        };
        if let Some(amount) = balance_picos.filter(|b| *b > 0) {
            self.grant(
                Owner::Workspace(workspace.id.clone()),
                amount,
                "initial",
                None,
                "balance at creation",
            )
            .await?;
        }
        Ok(workspace)
    }

    /// Every workspace with its number of active keys.
    pub async fn list_workspaces(&self) -> Result<Vec<(WorkspaceRow, u32)>> {
        Ok(self.store.list_workspaces().await?)
    }

    pub async fn get_workspace(&self, id: &str) -> Result<(WorkspaceRow, u32)> {
        let id = id.trim();
        self.list_workspaces()
            .await?
            .into_iter()
            .find(|(w, _)| w.id == id)
            .ok_or_else(|| ServiceError::NotFound(format!("workspace {id} not found")))
    }

    pub async fn update_workspace(&self, id: &str, limits: Limits) -> Result<WorkspaceRow> {
        let change = ConfigChange::UpdateWorkspace {
            id: workspace_id(id)?.to_string(),
            limits,
        };
        match self.write(change).await? {
            Changed::Workspace(w) => Ok(w),
            other => Err(unexpected(other)),
        }
    }

    /// Adds credit. An owner without a balance gets one (and the edges learn that its requests
    /// are metered now).
    pub async fn grant(
        &self,
        owner: Owner,
        amount_picos: i64,
        source: &str,
        external_id: Option<String>,
        note: &str,
    ) -> Result<Granted> {
        let granted = self
            .store
            .metering()
            .grant(&Grant {
                owner,
                amount_picos,
                source: source.to_string(),
                external_id,
                note: note.to_string(),
                at_ms: now_ms(),
            })
            .await?;
        if let Some(version) = granted.new_version {
            self.coalescer.committed(version);
        }
        Ok(granted)
    }

    /// A key's or a workspace's balance; `None` = the sum over every active key.
    pub async fn balance(&self, owner: Option<Owner>) -> Result<BalanceView> {
        let Some(owner) = owner else {
            return Ok(BalanceView {
                owner: "total",
                id: String::new(),
                metered: true,
                balance_picos: self.store.metering().total_key_balance().await?,
                reserved_picos: 0,
            });
        };
        let balance = self.store.metering().balance(&owner).await?;
        let reserved = if balance.is_some() {
            self.limiter
                .reserved(&owner, crate::service::now_ms())
                .await
                .map_err(|e| ServiceError::Unavailable(e.to_string()))?
        } else {
            0
        };
        Ok(BalanceView {
            owner: owner.kind(),
            id: owner.id().to_string(),
            metered: balance.is_some(),
            balance_picos: balance.unwrap_or(0),
            reserved_picos: reserved,
        })
    }

    /// A checkout URL for `amount_picos` of credit on the key, from the payment backend.
    pub async fn create_topup(&self, key_id: &str, amount_picos: i64) -> Result<TopupSession> {
        let backend = self.payments.clone().ok_or_else(|| {
            ServiceError::Unavailable(
                "no payment backend is configured (TOKENROUTER_PAYMENTS); an operator can add \
                 credit with `tokenrouter credit grant`"
                    .into(),
            )
        })?;
        let key = self.get_key(key_id).await?;
        if key.status != crate::store::KeyStatus::Active {
            return Err(ServiceError::InvalidArgument(format!(
                "key {} is revoked",
                key.id
            )));
        }
        let checkout = backend
            .checkout(&key.id, amount_picos)
            .await
            .map_err(|e| match e {
                PaymentError::Invalid(m) => ServiceError::InvalidArgument(m),
                PaymentError::Unavailable(m) => {
                    ServiceError::Unavailable(format!("payment backend: {m}"))
                }
            })?;
        let session = TopupSession {
            session_id: checkout.session_id,
            key_id: key.id,
            amount_picos,
            checkout_url: checkout.url,
            created_at_ms: now_ms(),
            expires_at_ms: checkout.expires_at_s.saturating_mul(1000),
        };
        self.store.metering().insert_topup_session(&session).await?;
        Ok(session)
    }

    /// A payment backend's webhook delivery: verified, then credited once per event id. The
    /// amount credited is the one of the checkout session this control plane created.
    pub async fn payment_webhook(&self, signature: &str, payload: &[u8]) -> Result<WebhookOutcome> {
        let backend = self
            .payments
            .clone()
            .ok_or_else(|| ServiceError::NotFound("no payment backend is configured".into()))?;
        let event = backend
            .verify_webhook(signature, payload, now_ms() / 1000)
            .map_err(ServiceError::Unauthenticated)?;
        let payment = match event {
            WebhookEvent::Paid(p) => p,
            WebhookEvent::Ignored { event_id, kind } => {
                tracing::info!(%event_id, %kind, "payment webhook ignored");
                return Ok(WebhookOutcome::Ignored);
            }
        };
        let session = self
            .store
            .metering()
            .topup_session(&payment.session_id)
            .await?
            .ok_or_else(|| {
                ServiceError::InvalidArgument(format!(
                    "checkout session {} was not created here",
                    payment.session_id
                ))
            })?;
        if session.key_id != payment.key_id || session.amount_picos != payment.amount_picos {
            return Err(ServiceError::InvalidArgument(format!(
                "checkout session {} does not match the payment (key or amount)",
                payment.session_id
            )));
        }
        let granted = self
            .grant(
                Owner::Key(session.key_id.clone()),
                session.amount_picos,
                backend.name(),
                Some(payment.event_id.clone()),
                &format!("checkout session {}", session.session_id),
            )
            .await?;
        if !granted.credited {
            return Ok(WebhookOutcome::Duplicate);
        }
        tracing::info!(key = %session.key_id, event = %payment.event_id, "top-up credited");
        Ok(WebhookOutcome::Credited {
            key_id: session.key_id,
            balance_picos: granted.balance_picos,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::limits::Refusal;
    use crate::service::tests::service;
    use tokenrouter_engine::admission::Ask;
    use tokenrouter_proto::sync::v1::UsageRecord;

    const CENT: i64 = 10_000_000_000;

    fn ask(key: &str, request: &str, reserve_picos: i64) -> Ask {
        Ask {
            key_id: key.into(),
            request_id: request.into(),
            input_tokens: 10,
            output_tokens: 10,
            reserve_picos,
        }
    }

    fn record(key: &str, request: &str, cost_picos: i64, input: u64, output: u64) -> UsageRecord {
        UsageRecord {
            request_id: request.into(),
            key_id: key.into(),
            status: 200,
            cost_picos,
            input_tokens: input,
            output_tokens: output,
            started_at_unix_ms: now_ms(),
            ..UsageRecord::default()
        }
    }

    fn no_rps() -> Limits {
        Limits {
            rps: Some(0),
            ..Limits::default()
        }
    }

    #[test]
    fn amounts_parse_exactly() {
        assert_eq!(parse_credit_usd("5").unwrap(), 5 * 100 * CENT);
        assert_eq!(parse_credit_usd("0.000001").unwrap(), 1_000_000);
        assert!(parse_credit_usd("0").is_err());
        assert!(parse_credit_usd("-1").is_err());
        assert!(parse_credit_usd("1.0000001").is_err());
        assert!(parse_credit_usd("abc").is_err());
        assert!(parse_credit_usd("1000001").is_err());
        assert_eq!(parse_balance_usd("0").unwrap(), 0);
        assert_eq!(parse_balance_usd("0.00").unwrap(), 0);
        assert_eq!(parse_balance_usd("2.5").unwrap(), 250 * CENT);
        assert!(parse_balance_usd("").is_err());
    }

    /// 50 concurrent admissions against a balance that covers 5 admit exactly 5; settling
    /// charges the real cost and frees the rest.
    #[tokio::test]
    async fn concurrent_reservations_never_overdraw() {
        let (svc, _dir) = service().await;
        let (key, _) = svc
            .create_key_with("k", "", Some(10 * CENT), no_rps())
            .await
            .unwrap();
        svc.settled().await;
        let limiter = svc.limiter();
        let asks: Vec<Ask> = (0..50)
            .map(|i| ask(&key.id, &format!("r{i}"), 2 * CENT))
            .collect();
        let verdicts =
            futures::future::join_all(asks.iter().map(|a| limiter.admit(a, now_ms()))).await;
        let admitted: Vec<&Ask> = asks
            .iter()
            .zip(&verdicts)
            .filter(|(_, v)| matches!(v, Ok(Ok(()))))
            .map(|(a, _)| a)
            .collect();
        assert_eq!(admitted.len(), 5);
        for v in &verdicts {
            if let Ok(Err(refusal)) = v {
                assert!(
                    matches!(refusal, Refusal::Quota { message } if message.contains("has $0 available")),
                    "{refusal:?}"
                );
            }
        }
        let view = svc.balance(Some(Owner::Key(key.id.clone()))).await.unwrap();
        assert_eq!(
            (view.balance_picos, view.reserved_picos),
            (10 * CENT, 10 * CENT)
        );
        // Each cost 1 cent in the end.
        let records: Vec<UsageRecord> = admitted
            .iter()
            .map(|a| record(&key.id, &a.request_id, CENT, 5, 5))
            .collect();
        svc.ingest_usage(&records).await.unwrap();
        // A resent batch charges nothing more.
        svc.ingest_usage(&records).await.unwrap();
        let view = svc.balance(Some(Owner::Key(key.id.clone()))).await.unwrap();
        assert_eq!((view.balance_picos, view.reserved_picos), (5 * CENT, 0));
        assert_eq!(view.available_picos(), 5 * CENT);
        // Now 2 more fit (2 cents each), not 3.
        let more: Vec<_> = (0..3)
            .map(|i| ask(&key.id, &format!("m{i}"), 2 * CENT))
            .collect();
        let mut ok = 0;
        for a in &more {
            if matches!(limiter.admit(a, now_ms()).await, Ok(Ok(()))) {
                ok += 1;
            }
        }
        assert_eq!(ok, 2);
        // The same request asking twice holds one reservation.
        assert!(matches!(
            limiter.admit(&more[0], now_ms()).await,
            Ok(Ok(()))
        ));
        assert_eq!(
            limiter
                .reserved(&Owner::Key(key.id.clone()), now_ms())
                .await
                .unwrap(),
            4 * CENT
        );
    }

    #[tokio::test]
    async fn zero_balance_refuses_and_a_grant_admits() {
        let (svc, _dir) = service().await;
        let (key, _) = svc
            .create_key_with("k", "", Some(0), no_rps())
            .await
            .unwrap();
        svc.settled().await;
        let snapshot = svc.whole_snapshot();
        let entry = snapshot.keys.iter().find(|k| k.id == key.id).unwrap();
        assert!(entry.admission && entry.metered);
        let limiter = svc.limiter();
        assert!(matches!(
            limiter.admit(&ask(&key.id, "a", 0), now_ms()).await,
            Ok(Err(Refusal::Quota { .. }))
        ));
        svc.grant(Owner::Key(key.id.clone()), CENT, "admin", None, "")
            .await
            .unwrap();
        assert!(matches!(
            limiter.admit(&ask(&key.id, "b", CENT / 2), now_ms()).await,
            Ok(Ok(()))
        ));
    }

    #[tokio::test]
    async fn an_unmetered_key_becomes_metered_by_a_grant_and_webhook_ids_credit_once() {
        let (svc, _dir) = service().await;
        let (key, _) = svc.create_key_with("k", "", None, no_rps()).await.unwrap();
        svc.settled().await;
        let entry = |svc: &Service| {
            let snapshot = svc.whole_snapshot();
            let k = snapshot
                .keys
                .iter()
                .find(|k| k.id == key.id)
                .cloned()
                .unwrap();
            (k.admission, k.metered)
        };
        assert_eq!(entry(&svc), (false, false));
        let first = svc
            .grant(
                Owner::Key(key.id.clone()),
                CENT,
                "stripe",
                Some("evt_1".into()),
                "",
            )
            .await
            .unwrap();
        assert!(first.credited && first.new_version.is_some());
        svc.settled().await;
        assert_eq!(entry(&svc), (true, true));
        let again = svc
            .grant(
                Owner::Key(key.id.clone()),
                CENT,
                "stripe",
                Some("evt_1".into()),
                "",
            )
            .await
            .unwrap();
        assert!(!again.credited);
        assert_eq!(again.balance_picos, CENT);
        let missing = svc
            .grant(Owner::Key("key_nope".into()), CENT, "admin", None, "")
            .await;
        assert!(matches!(missing, Err(ServiceError::NotFound(_))));
    }

    #[tokio::test]
    async fn request_rate_and_hourly_budgets() {
        let (svc, _dir) = service().await;
        let limits = Limits {
            rps: Some(3),
            hour_total_tokens: Some(1000),
            hour_output_tokens: Some(400),
            ..Limits::default()
        };
        let (key, _) = svc.create_key_with("k", "", None, limits).await.unwrap();
        svc.settled().await;
        let limiter = svc.limiter();
        let now = now_ms();
        for i in 0..3 {
            assert_eq!(
                limiter
                    .admit(&ask(&key.id, &format!("r{i}"), 0), now)
                    .await
                    .unwrap(),
                Ok(())
            );
        }
        match limiter.admit(&ask(&key.id, "r3", 0), now).await.unwrap() {
            Err(Refusal::Rate {
                limit,
                retry_after_s,
                ..
            }) => assert_eq!((limit, retry_after_s), ("requests_per_second", Some(1))),
            other => panic!("{other:?}"),
        }
        // 900 tokens used (500 of them output): the output budget (400) is spent.
        svc.ingest_usage(&[record(&key.id, "used", 0, 400, 500)])
            .await
            .unwrap();
        let later = now + 1000;
        match limiter.admit(&ask(&key.id, "r4", 0), later).await.unwrap() {
            Err(Refusal::Rate {
                limit,
                retry_after_s: Some(wait),
                message,
            }) => {
                assert_eq!(limit, "hour_output_tokens");
                assert!(
                    message.contains("500 of its 400 output tokens"),
                    "{message}"
                );
                assert!((3500..=3600).contains(&wait), "{wait}");
            }
            other => panic!("{other:?}"),
        }
        // With the output budget off, the total budget (1000) admits a 10-token prompt but not
        // a 200-token one.
        svc.update_key(
            &key.id,
            crate::service::KeyPatch {
                limits: Limits {
                    hour_output_tokens: Some(0),
                    ..Limits::default()
                },
                ..Default::default()
            },
        )
        .await
        .unwrap();
        svc.settled().await;
        assert_eq!(
            limiter
                .admit(&ask(&key.id, "r5", 0), later + 1000)
                .await
                .unwrap(),
            Ok(())
        );
        let big = Ask {
            input_tokens: 200,
            ..ask(&key.id, "r6", 0)
        };
        assert!(matches!(
            limiter.admit(&big, later + 2000).await.unwrap(),
            Err(Refusal::Rate {
                limit: "hour_total_tokens",
                ..
            })
        ));
        // A prompt bigger than the whole budget can never pass.
        let huge = Ask {
            input_tokens: 5000,
            ..ask(&key.id, "r7", 0)
        };
        assert!(matches!(
            limiter.admit(&huge, later + 3000).await.unwrap(),
            Err(Refusal::Rate {
                retry_after_s: None,
                ..
            })
        ));
    }

    #[tokio::test]
    async fn keys_inherit_their_workspace() {
        let (svc, _dir) = service().await;
        svc.create_workspace(
            "team",
            Some(0),
            Limits {
                rps: Some(0),
                hour_input_tokens: Some(50),
                ..Limits::default()
            },
        )
        .await
        .unwrap();
        let (key, _) = svc.create_key("k", "team").await.unwrap();
        svc.settled().await;
        let full = svc.key_usage(key.clone()).await.unwrap();
        assert_eq!(full.effective.hour_input_tokens, 50);
        assert_eq!(full.effective.rps, 0);
        assert_eq!(full.balance_picos, None);
        let limiter = svc.limiter();
        // The workspace has no credit.
        assert!(matches!(
            limiter.admit(&ask(&key.id, "a", 0), now_ms()).await.unwrap(),
            Err(Refusal::Quota { message }) if message.contains("workspace team")
        ));
        svc.grant(Owner::Workspace("team".into()), CENT, "admin", None, "")
            .await
            .unwrap();
        assert_eq!(
            limiter
                .admit(&ask(&key.id, "b", 0), now_ms())
                .await
                .unwrap(),
            Ok(())
        );
        // The key's own limit wins over the workspace's.
        svc.update_key(
            &key.id,
            crate::service::KeyPatch {
                limits: Limits {
                    hour_input_tokens: Some(5),
                    ..Limits::default()
                },
                ..Default::default()
            },
        )
        .await
        .unwrap();
        svc.settled().await;
        assert!(matches!(
            limiter
                .admit(&ask(&key.id, "c", 0), now_ms())
                .await
                .unwrap(),
            Err(Refusal::Rate {
                limit: "hour_input_tokens",
                ..
            })
        ));
        let listed = svc.list_workspaces().await.unwrap();
        assert!(listed
            .iter()
            .any(|(w, n)| w.id == "team" && w.metered && *n == 1));
    }

    /// Two control planes ("replicas") on one database with their counters in one Redis:
    /// `None` (the test is skipped) when no Redis answers, unless `CI=true`.
    async fn replicas() -> Option<(Service, Service, tempfile::TempDir)> {
        use crate::limits::shared::SharedCounters;
        use crate::limits::Counters;
        use crate::store::SqliteStore;
        let url = std::env::var("TOKENROUTER_TEST_REDIS_URL")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        let prefix = format!("trtest-{}-{}", std::process::id(), now_ms());
        let counters = match SharedCounters::connect(&url, &prefix).await {
            Ok(c) => c,
            Err(e) if std::env::var("CI").as_deref() != Ok("true") => {
                eprintln!("skipped: no Redis at {url} ({e}); set TOKENROUTER_TEST_REDIS_URL");
                return None;
            }
            Err(e) => panic!("Redis at {url}: {e}"),
        };
        let dir = tempfile::tempdir().unwrap();
        let db = format!("sqlite://{}/t.db?mode=rwc", dir.path().display());
        let open = || async { Arc::new(SqliteStore::open(&db).await.unwrap()) };
        let a = Service::start_with(
            open().await,
            crate::crypto::Sealer::new(&[9; 32]),
            Counters::Shared(counters),
        )
        .await
        .unwrap();
        let b_counters = SharedCounters::connect(&url, &prefix).await.unwrap();
        let b = Service::start_with(
            open().await,
            crate::crypto::Sealer::new(&[9; 32]),
            Counters::Shared(b_counters),
        )
        .await
        .unwrap();
        Some((a, b, dir))
    }

    /// Keys created on `a` become known to `b` when it reloads (here: a restart would; the
    /// test publishes `a`'s stored configuration on `b` directly).
    async fn sync(a: &Service, b: &Service) {
        a.settled().await;
        let state = a.store.load_config().await.unwrap();
        b.publisher.publish(&state).unwrap();
    }

    /// Balances, rates and hourly budgets hold across replicas sharing Redis: 50 admissions
    /// split over two replicas against a balance for 5 admit 5, a settlement on one frees the
    /// reservation for the other, 3 requests per second means 3 in all, and tokens reported
    /// through one replica count against the budget checked on the other.
    #[tokio::test]
    async fn shared_counters_hold_across_replicas() {
        let Some((a, b, _dir)) = replicas().await else {
            return;
        };
        let (key, _) = a
            .create_key_with("k", "", Some(10 * CENT), no_rps())
            .await
            .unwrap();
        let (fast, _) = a
            .create_key_with(
                "fast",
                "",
                None,
                Limits {
                    rps: Some(3),
                    ..Limits::default()
                },
            )
            .await
            .unwrap();
        let (budget, _) = a
            .create_key_with(
                "budget",
                "",
                None,
                Limits {
                    rps: Some(0),
                    hour_total_tokens: Some(100),
                    ..Limits::default()
                },
            )
            .await
            .unwrap();
        sync(&a, &b).await;
        let (la, lb) = (a.limiter(), b.limiter());
        assert!(la.shared() && lb.shared());

        let asks: Vec<Ask> = (0..50)
            .map(|i| ask(&key.id, &format!("r{i}"), 2 * CENT))
            .collect();
        let verdicts = futures::future::join_all(asks.iter().enumerate().map(|(i, a)| {
            let limiter = if i % 2 == 0 { la.clone() } else { lb.clone() };
            async move { limiter.admit(a, now_ms()).await }
        }))
        .await;
        let admitted: Vec<&Ask> = asks
            .iter()
            .zip(&verdicts)
            .filter(|(_, v)| matches!(v, Ok(Ok(()))))
            .map(|(a, _)| a)
            .collect();
        assert_eq!(admitted.len(), 5, "{verdicts:?}");
        let owner = Owner::Key(key.id.clone());
        assert_eq!(lb.reserved(&owner, now_ms()).await.unwrap(), 10 * CENT);
        // The same request asking the other replica holds no second reservation.
        assert!(matches!(lb.admit(admitted[0], now_ms()).await, Ok(Ok(()))));
        assert_eq!(la.reserved(&owner, now_ms()).await.unwrap(), 10 * CENT);
        let records: Vec<UsageRecord> = admitted
            .iter()
            .map(|r| record(&key.id, &r.request_id, CENT, 5, 5))
            .collect();
        a.ingest_usage(&records).await.unwrap();
        let view = b.balance(Some(owner.clone())).await.unwrap();
        assert_eq!((view.balance_picos, view.reserved_picos), (5 * CENT, 0));
        let more: Vec<Ask> = (0..3)
            .map(|i| ask(&key.id, &format!("m{i}"), 2 * CENT))
            .collect();
        let mut ok = 0;
        for (i, m) in more.iter().enumerate() {
            let limiter = if i % 2 == 0 { &lb } else { &la };
            if matches!(limiter.admit(m, now_ms()).await, Ok(Ok(()))) {
                ok += 1;
            }
        }
        assert_eq!(ok, 2);

        let now = now_ms();
        let mut admitted = 0;
        for i in 0..10 {
            let limiter = if i % 2 == 0 { &la } else { &lb };
            match limiter
                .admit(&ask(&fast.id, &format!("f{i}"), 0), now)
                .await
                .unwrap()
            {
                Ok(()) => admitted += 1,
                Err(Refusal::Rate {
                    limit,
                    retry_after_s,
                    ..
                }) => {
                    assert_eq!((limit, retry_after_s), ("requests_per_second", Some(1)));
                }
                Err(other) => panic!("{other:?}"),
            }
        }
        assert_eq!(admitted, 3);
        // A third of a second later one more request's worth is back, for both.
        assert!(matches!(
            lb.admit(&ask(&fast.id, "f10", 0), now + 334).await,
            Ok(Ok(()))
        ));
        assert!(matches!(
            la.admit(&ask(&fast.id, "f11", 0), now + 334).await,
            Ok(Err(Refusal::Rate { .. }))
        ));

        // b loads the (empty) window; 95 tokens reported through a count on b.
        assert!(matches!(
            lb.admit(&ask(&budget.id, "b0", 0), now_ms()).await,
            Ok(Ok(()))
        ));
        a.ingest_usage(&[record(&budget.id, "b0", 0, 90, 5)])
            .await
            .unwrap();
        match lb.admit(&ask(&budget.id, "b1", 0), now_ms()).await.unwrap() {
            Err(Refusal::Rate { limit, message, .. }) => {
                assert_eq!(limit, "hour_total_tokens");
                assert!(message.contains("has used 95 of its 100"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }
}
