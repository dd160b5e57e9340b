//! The metadata store over SQL ([`SqlStore`]): every statement written
//! once for PostgreSQL, SQLite and MySQL/MariaDB, run through [`engine`],
//! which answers what differs between them (placeholders, value encodings,
//! `FOR UPDATE`, SQLite's write transactions).
//!
//! One module per concern, each implementing its trait of [`super`] for
//! [`SqlStore`] with its SQL in one place: `users` (user rows and counters),
//! `quota` (reservations), `nodes` (the process registry), `files` (file
//! rows; `search` how `q=` is matched on each engine), `signed` (signed
//! upload URLs), `tus` (resumable uploads and their lease), `jobs`, `events`
//! (the outbox), `leases` (task leases and run history) and `snapshot`
//! (backup rows). Shared pieces: `rows` (column lists and decoders of tables
//! more than one concern reads), `outbox` (recording an event and
//! re-checking thresholds inside a change's transaction), `commit` (the
//! steps that turn a reservation into a file row), `probe` (`doctor`'s
//! read-only look).

use std::{str::FromStr, sync::Arc, time::Duration};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{
    mysql::{MySqlConnectOptions, MySqlPoolOptions},
    postgres::PgPoolOptions,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
    Executor,
};

use super::clock::{self, Clock, SystemClock};
use super::*;

mod commit;
pub(crate) mod engine;
mod events;
mod files;
mod jobs;
mod leases;
mod nodes;
mod outbox;
pub(crate) mod probe;
mod quota;
mod rows;
mod search;
mod signed;
mod snapshot;
mod tus;
mod users;

use engine::{Db, Engine};

/// The metadata store on one of the three engines.
pub struct SqlStore {
    db: Db,
    clock: Arc<dyn Clock>,
}

impl SqlStore {
    pub(crate) fn new(db: Db, clock: Arc<dyn Clock>) -> Self {
        SqlStore { db, clock }
    }

    pub(crate) fn db(&self) -> &Db {
        &self.db
    }

    pub(crate) fn engine(&self) -> Engine {
        self.db.engine()
    }

    /// The store clock's now, at the microsecond precision every engine keeps.
    pub(crate) fn now(&self) -> DateTime<Utc> {
        clock::micros(self.clock.as_ref())
    }
}

#[async_trait]
impl MetaStore for SqlStore {
    async fn migrate(&self) -> MetaResult<()> {
        self.db.migrate().await?;
        Ok(())
    }

    async fn ping(&self) -> MetaResult<()> {
        engine::query("SELECT 1").execute(&self.db).await?;
        Ok(())
    }

    fn backend(&self) -> &'static str {
        self.engine().name()
    }
}

/// Opens the store named by `url` (`postgres://…`, `mysql://…` (or
/// `mariadb://…`) or `sqlite://…`).
pub async fn connect(url: &str) -> MetaResult<Arc<dyn MetaStore>> {
    connect_with_clock(url, Arc::new(SystemClock)).await
}

/// [`connect`] with the store reading the time from `clock` (tests move a
/// [`super::ManualClock`] to expire leases without sleeping).
pub async fn connect_with_clock(
    url: &str,
    clock: Arc<dyn Clock>,
) -> MetaResult<Arc<dyn MetaStore>> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(5))
            .connect(url)
            .await
            .map_err(MetaError::from_sqlx)?;
        Ok(Arc::new(SqlStore::new(Db::Pg(pool), clock)))
    } else if url.starts_with("mysql://") || url.starts_with("mariadb://") {
        let url = url.replacen("mariadb://", "mysql://", 1);
        let opts = MySqlConnectOptions::from_str(&url)?
            .charset("utf8mb4")
            .timezone(Some("+00:00".into()));
        let pool = MySqlPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(5))
            // Each statement sees what was committed before it, as on
            // PostgreSQL, and InnoDB takes no gap locks; the quota rules
            // rest on row locks, not on the isolation level.
            .after_connect(|conn, _| {
                Box::pin(async move {
                    conn.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
                        .await?;
                    Ok(())
                })
            })
            .connect_with(opts)
            .await
            .map_err(MetaError::from_sqlx)?;
        Ok(Arc::new(SqlStore::new(Db::MySql(pool), clock)))
    } else if url.starts_with("sqlite:") {
        let opts = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(30))
            .foreign_keys(true);
        if let Some(parent) = opts.get_filename().parent() {
            if !parent.as_os_str().is_empty() {
                std::fs::create_dir_all(parent).map_err(|e| {
                    MetaError::Unavailable(format!("cannot create {}: {e}", parent.display()))
                })?;
            }
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(opts)
            .await
            .map_err(MetaError::from_sqlx)?;
        Ok(Arc::new(SqlStore::new(Db::Sqlite(pool), clock)))
    } else {
        Err(MetaError::Unavailable(format!(
            "unsupported database URL {url:?}: expected postgres://…, mysql://… or sqlite://…"
        )))
    }
}

/// `t + ttl` (an hour when `ttl` is out of range).
fn plus(t: DateTime<Utc>, ttl: Duration) -> DateTime<Utc> {
    t + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::hours(1))
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// MySQL error numbers that mean "try again later" rather than a bug:
/// lock wait timeout, deadlock (the transaction was rolled back), too many
/// connections, server shutting down, connection killed.
pub(crate) fn mysql_transient(n: u16) -> bool {
    matches!(n, 1205 | 1213 | 1040 | 1053 | 1927 | 2002 | 2006 | 2013)
}
