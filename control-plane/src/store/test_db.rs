//! Fresh databases for the storage tests, one per test so that tests run in parallel: a
//! temporary SQLite file, or a PostgreSQL database created on the server at
//! `TOKENROUTER_TEST_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`) and
//! dropped afterwards (best effort).
//!
//! Without a reachable PostgreSQL server the PostgreSQL tests are skipped with a message, except
//! in CI (`CI=true`), where they fail.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};

use super::{PostgresStore, SqliteStore, Store};

pub const POSTGRES_URL_ENV: &str = "TOKENROUTER_TEST_POSTGRES_URL";
const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A store on a database of its own, and how to reach that database behind the store's back.
pub struct TestDb {
    pub store: Arc<dyn Store>,
    backend: Backend,
}

enum Backend {
    Sqlite {
        pool: sqlx::SqlitePool,
        _dir: tempfile::TempDir,
    },
    Postgres(Box<PgDatabase>),
}

impl TestDb {
    /// A store on a new SQLite file.
    pub async fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/t.db?mode=rwc", dir.path().display());
        let store = SqliteStore::open(&url).await.unwrap();
        TestDb {
            backend: Backend::Sqlite {
                pool: store.pool().clone(),
                _dir: dir,
            },
            store: Arc::new(store),
        }
    }

    /// A store on a new PostgreSQL database; `None` (after saying why) when there is no server
    /// to test against outside CI.
    pub async fn postgres() -> Option<TestDb> {
        let db = PgDatabase::create().await?;
        let store = db.open().await;
        Some(TestDb {
            store: Arc::new(store),
            backend: Backend::Postgres(Box::new(db)),
        })
    }

    /// A second store on the same database, as another process (a replica) would open it.
    pub async fn reopen(&self) -> Arc<dyn Store> {
        match &self.backend {
            Backend::Sqlite { _dir, .. } => {
                let url = format!("sqlite://{}/t.db?mode=rwc", _dir.path().display());
                Arc::new(SqliteStore::open(&url).await.unwrap())
            }
            Backend::Postgres(db) => Arc::new(db.open().await),
        }
    }

    /// The integer one query (written for both backends) returns.
    pub async fn scalar(&self, sql: &str) -> i64 {
        match &self.backend {
            Backend::Sqlite { pool, .. } => sqlx::query_scalar(sql).fetch_one(pool).await.unwrap(),
            Backend::Postgres(db) => {
                let mut conn = PgConnection::connect_with(&db.options).await.unwrap();
                sqlx::query_scalar(sql).fetch_one(&mut conn).await.unwrap()
            }
        }
    }

    /// Runs one SQL statement (written for both backends) on the store's database.
    pub async fn execute(&self, sql: &str) {
        match &self.backend {
            Backend::Sqlite { pool, .. } => {
                sqlx::query(sql).execute(pool).await.unwrap();
            }
            Backend::Postgres(db) => {
                let mut conn = PgConnection::connect_with(&db.options).await.unwrap();
                sqlx::query(sql).execute(&mut conn).await.unwrap();
            }
        }
    }
}

/// A PostgreSQL database created for one test, dropped (with its connections) on drop.
pub struct PgDatabase {
    /// The server's maintenance database, where the test database is created and dropped.
    admin: PgConnectOptions,
    /// The test database.
    pub options: PgConnectOptions,
    name: String,
}

impl PgDatabase {
    /// Creates `tr_test_<random>`; `None` when the server cannot be reached outside CI.
    pub async fn create() -> Option<PgDatabase> {
        let url = std::env::var(POSTGRES_URL_ENV)
            .ok()
            .filter(|u| !u.trim().is_empty())
            .unwrap_or_else(|| DEFAULT_POSTGRES_URL.to_string());
        let admin = PgConnectOptions::from_str(&url)
            .unwrap_or_else(|e| panic!("{POSTGRES_URL_ENV}={url:?}: {e}"));
        let mut conn = match connect(&admin).await {
            Ok(conn) => conn,
            Err(e) if std::env::var("CI").as_deref() == Ok("true") => {
                panic!("PostgreSQL at {url} is unreachable (required in CI): {e}")
            }
            Err(e) => {
                eprintln!(
                    "skipped: PostgreSQL at {url} is unreachable ({e}); set {POSTGRES_URL_ENV} \
                     to a server's URL to run the PostgreSQL storage tests"
                );
                return None;
            }
        };
        let name = format!("tr_test_{:016x}", rand::random::<u64>());
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .unwrap();
        let _ = conn.close().await;
        Some(PgDatabase {
            options: admin.clone().database(&name),
            admin,
            name,
        })
    }

    /// A store (a replica) on this database.
    pub async fn open(&self) -> PostgresStore {
        PostgresStore::open_with(self.options.clone())
            .await
            .unwrap()
    }
}

async fn connect(options: &PgConnectOptions) -> Result<PgConnection, sqlx::Error> {
    tokio::time::timeout(Duration::from_secs(5), PgConnection::connect_with(options))
        .await
        .map_err(|_| sqlx::Error::PoolTimedOut)?
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        // Drop runs outside any async context the test can offer: a thread of its own with a
        // small runtime, waited for so the database is gone when the test ends.
        let admin = self.admin.clone();
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async {
                let mut conn = PgConnection::connect_with(&admin).await.ok()?;
                sqlx::query(&sql).execute(&mut conn).await.ok()?;
                conn.close().await.ok()
            })
        });
        let _ = dropped.join();
    }
}
