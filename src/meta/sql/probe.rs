//! A read-only look at a database for `stowage doctor`: which engine
//! answers, which migrations it has applied against the ones this binary
//! carries, and how far its clock is from ours. Unlike [`super::connect`] it
//! never creates anything (no SQLite file where there is none) and never
//! migrates: a pending migration is reported, not fixed.

use std::{path::PathBuf, str::FromStr, time::Duration};

use chrono::{DateTime, Utc};
use sqlx::{mysql::MySqlConnectOptions, postgres::PgConnectOptions, sqlite::SqliteConnectOptions};

use super::engine::{query, Db, Engine};

/// Why a [`Probe`] could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The SQLite file named by the URL does not exist.
    #[error("{} does not exist; `stowage migrate` creates it", .0.display())]
    NoFile(PathBuf),
    #[error("timed out")]
    TimedOut,
    #[error("{0}")]
    Connect(sqlx::Error),
    #[error("unsupported database URL: expected postgres://…, mysql://… or sqlite://…")]
    Unsupported,
}

/// A migration this binary carries.
pub struct KnownMigration {
    pub version: i64,
    pub description: String,
    pub checksum: Vec<u8>,
}

/// A migration as the database's `_sqlx_migrations` records it.
pub struct AppliedMigration {
    pub version: i64,
    pub checksum: Vec<u8>,
    pub success: bool,
}

/// One connection to the database at a URL; see the module doc.
pub struct Probe {
    db: Db,
}

impl Probe {
    /// Connects within `timeout`.
    pub async fn open(url: &str, timeout: Duration) -> Result<Probe, ProbeError> {
        let connect = async {
            let db = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
                let opts = PgConnectOptions::from_str(url).map_err(ProbeError::Connect)?;
                Db::Pg(
                    one()
                        .connect_with(opts)
                        .await
                        .map_err(ProbeError::Connect)?,
                )
            } else if url.starts_with("mysql://") || url.starts_with("mariadb://") {
                let url = url.replacen("mariadb://", "mysql://", 1);
                let opts = MySqlConnectOptions::from_str(&url)
                    .map_err(ProbeError::Connect)?
                    .timezone(Some("+00:00".into()));
                Db::MySql(
                    one()
                        .connect_with(opts)
                        .await
                        .map_err(ProbeError::Connect)?,
                )
            } else if url.starts_with("sqlite:") {
                let opts = SqliteConnectOptions::from_str(url)
                    .map_err(ProbeError::Connect)?
                    .create_if_missing(false);
                let file = opts.get_filename();
                if !file.exists() {
                    return Err(ProbeError::NoFile(file.to_path_buf()));
                }
                Db::Sqlite(
                    one()
                        .connect_with(opts)
                        .await
                        .map_err(ProbeError::Connect)?,
                )
            } else {
                return Err(ProbeError::Unsupported);
            };
            Ok(Probe { db })
        };
        tokio::time::timeout(timeout, connect)
            .await
            .map_err(|_| ProbeError::TimedOut)?
    }

    /// "postgres", "mysql" or "sqlite".
    pub fn backend(&self) -> &'static str {
        self.db.engine().name()
    }

    /// The migrations this binary would apply to this engine.
    pub fn known_migrations(&self) -> Vec<KnownMigration> {
        self.db
            .migrator()
            .iter()
            .filter(|m| !m.migration_type.is_down_migration())
            .map(|m| KnownMigration {
                version: m.version,
                description: m.description.to_string(),
                checksum: m.checksum.to_vec(),
            })
            .collect()
    }

    /// The migrations recorded in the database (none when it has no
    /// `_sqlx_migrations` table yet).
    pub async fn applied_migrations(&self) -> Result<Vec<AppliedMigration>, sqlx::Error> {
        let exists = match self.db.engine() {
            Engine::Postgres => {
                "SELECT COUNT(*) AS n FROM information_schema.tables \
                 WHERE table_name = '_sqlx_migrations' AND table_schema = current_schema()"
            }
            Engine::MySql => {
                "SELECT COUNT(*) AS n FROM information_schema.tables \
                 WHERE table_name = '_sqlx_migrations' AND table_schema = DATABASE()"
            }
            Engine::Sqlite => {
                "SELECT COUNT(*) AS n FROM sqlite_master \
                 WHERE type = 'table' AND name = '_sqlx_migrations'"
            }
        };
        if query(exists).fetch_one(&self.db).await?.get::<i64>("n")? == 0 {
            return Ok(Vec::new());
        }
        query("SELECT version, checksum, success FROM _sqlx_migrations ORDER BY version")
            .fetch_all(&self.db)
            .await?
            .iter()
            .map(|r| {
                Ok(AppliedMigration {
                    version: r.get("version")?,
                    checksum: r.get("checksum")?,
                    success: r.get("success")?,
                })
            })
            .collect()
    }

    /// The database's clock minus ours, seconds, and how precise that is
    /// (half the round trip); `None` for SQLite, which reads our clock.
    pub async fn clock_skew(&self) -> Result<Option<(f64, f64)>, sqlx::Error> {
        let now = match self.db.engine() {
            Engine::Postgres => "SELECT now() AS t",
            Engine::MySql => "SELECT UTC_TIMESTAMP(6) AS t",
            Engine::Sqlite => return Ok(None),
        };
        // The wall clock is what is compared here, on purpose.
        let before = Utc::now();
        let theirs: DateTime<Utc> = query(now).fetch_one(&self.db).await?.get("t")?;
        let after = Utc::now();
        let half = (after - before) / 2;
        let ours = before + half;
        Ok(Some((
            secs(theirs - ours),
            half.num_microseconds().unwrap_or(0) as f64 / 1e6,
        )))
    }

    pub async fn close(self) {
        self.db.close().await;
    }
}

/// A pool of one connection that opens it at once.
fn one<DB: sqlx::Database>() -> sqlx::pool::PoolOptions<DB> {
    sqlx::pool::PoolOptions::new()
        .max_connections(1)
        .min_connections(0)
}

fn secs(d: chrono::TimeDelta) -> f64 {
    d.num_microseconds().unwrap_or(i64::MAX) as f64 / 1e6
}
