//! Following the configuration versions other replicas commit ([`Store::config_notifications`]):
//! a background task `LISTEN`s on [`CONFIG_CHANNEL`] and raises a watch channel to every
//! version announced. Notifications are not queued for a listener that is not connected, so on
//! every (re)connection, once listening, the task also reads the committed version: a commit
//! missed while disconnected is seen then. A lost or refused connection is retried with a
//! backoff; the task ends when the store is closed.
//!
//! [`Store::config_notifications`]: crate::store::Store::config_notifications

use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::{PgPool, Row};
use tokio::sync::watch;

use super::CONFIG_CHANNEL;

/// First wait before reconnecting; doubled after every failed attempt up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Starts the task; the receiver shows the newest version seen (0 until the first read).
pub(super) fn follow(pool: PgPool) -> watch::Receiver<u64> {
    let (sender, receiver) = watch::channel(0);
    tokio::spawn(run(pool, sender));
    receiver
}

async fn run(pool: PgPool, versions: watch::Sender<u64>) {
    let mut backoff = MIN_BACKOFF;
    loop {
        match listen(&pool, &versions).await {
            Err(sqlx::Error::PoolClosed) => return,
            // Connected, then lost: reconnect soon.
            Ok(()) => backoff = MIN_BACKOFF,
            Err(e) => tracing::warn!(
                error = %e,
                retry_in_ms = backoff.as_millis(),
                "following configuration versions on PostgreSQL"
            ),
        }
        if pool.is_closed() {
            return;
        }
        tokio::select! {
            () = pool.close_event() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One connection's worth of following: listen, read the committed version, then take every
/// notification until the connection is lost (`Ok`) or fails otherwise.
async fn listen(pool: &PgPool, versions: &watch::Sender<u64>) -> Result<(), sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    // A lost connection ends this round (`Ok(None)`), so the next one reads the version again.
    listener.eager_reconnect(false);
    listener.listen(CONFIG_CHANNEL).await?;
    let committed: i64 = sqlx::query("SELECT version FROM config_version WHERE id = 1")
        .fetch_one(pool)
        .await?
        .try_get(0)?;
    raise(versions, u64::try_from(committed).unwrap_or(0));
    while let Some(notification) = listener.try_recv().await? {
        match notification.payload().parse::<u64>() {
            Ok(version) => raise(versions, version),
            Err(_) => tracing::warn!(
                payload = notification.payload(),
                "ignoring a {CONFIG_CHANNEL} notification that is not a version"
            ),
        }
    }
    Ok(())
}

/// Shows `version` unless a newer one is already shown.
fn raise(versions: &watch::Sender<u64>, version: u64) {
    versions.send_if_modified(|newest| {
        let newer = version > *newest;
        if newer {
            *newest = version;
        }
        newer
    });
}
