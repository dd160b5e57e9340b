//! Snapshot and restore of the rows a backup holds ([`SnapshotStore`]),
//! written once for every engine.
//!
//! A snapshot reads every user, then every file, inside one transaction
//! that sees a single moment ([`Db::begin_snapshot`]), and hands each row
//! to the sink as it comes off the connection ([`Query::for_each`]): memory
//! stays bounded however many files there are. On SQLite that transaction
//! is a plain read transaction, which in WAL mode keeps the view of its
//! first read while writers go on: as consistent as copying the database
//! (`VACUUM INTO`) and reading the copy, but it reads only the two tables
//! and needs no scratch space.
//!
//! The rows are [`DumpUser`] and [`DumpFile`] on every engine, so a
//! snapshot of one restores into any other. A restore writes every row in
//! one transaction; users start with zero counters and the triggers add
//! the files, and with the quota threshold their usage had reached (see
//! `insert_user`), so that no threshold is announced twice.
//!
//! [`Db::begin_snapshot`]: super::engine::Db::begin_snapshot
//! [`Query::for_each`]: super::engine::Query::for_each

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::commit::insert_file_row;
use super::engine::{query, EachRow, Engine, Row, Tx};
use super::rows::{file_from_row, user_from_row, FILE_COLS, USER_COLS};
use super::SqlStore;
use crate::meta::events::threshold_level;
use crate::meta::{
    DumpFile, DumpUser, MetaError, MetaResult, RowSource, SnapshotSink, SnapshotStore,
};

/// Hands each `user_storage` row to the sink.
struct Users<'a>(&'a mut dyn SnapshotSink);

#[async_trait]
impl EachRow<MetaError> for Users<'_> {
    async fn row(&mut self, row: Row) -> MetaResult<()> {
        self.0.user(DumpUser::from(user_from_row(&row)?)).await
    }
}

/// Hands each `user_files` row to the sink.
struct Files<'a>(&'a mut dyn SnapshotSink);

#[async_trait]
impl EachRow<MetaError> for Files<'_> {
    async fn row(&mut self, row: Row) -> MetaResult<()> {
        let file = DumpFile {
            file: file_from_row(&row)?,
            created_at: row.get("created_at")?,
        };
        self.0.file(file).await
    }
}

/// Inserts a user with zero counters, or sets an existing one's quota, and
/// sets the threshold the user had reached. The engines spell the upsert
/// differently.
fn insert_user_sql(engine: Engine) -> &'static str {
    match engine {
        Engine::MySql => {
            "INSERT INTO user_storage (user_id, max_bytes, total_bytes, reserved_bytes, \
             file_count, last_threshold, created_at, updated_at) \
             VALUES (?, ?, 0, 0, 0, ?, ?, ?) \
             ON DUPLICATE KEY UPDATE max_bytes = ?, last_threshold = ?"
        }
        Engine::Postgres | Engine::Sqlite => {
            "INSERT INTO user_storage (user_id, max_bytes, total_bytes, reserved_bytes, \
             file_count, last_threshold, created_at, updated_at) \
             VALUES (?, ?, 0, 0, 0, ?, ?, ?) \
             ON CONFLICT (user_id) DO UPDATE SET max_bytes = ?, last_threshold = ?"
        }
    }
}

/// Inserts the user of a snapshot's line. Its threshold state is the level
/// its usage had reached at the snapshot (what `last_threshold` is after
/// every change of usage): each crossing up to it was recorded before the
/// backup, so a change after the restore records only a new one, instead
/// of every threshold the restored usage is past once more.
async fn insert_user(tx: &mut Tx, u: &DumpUser) -> Result<(), sqlx::Error> {
    let reached = threshold_level(u.total_bytes, u.max_bytes) as i32;
    query(insert_user_sql(tx.engine()))
        .bind(&u.user_id)
        .bind(u.max_bytes)
        .bind(reached)
        .bind(u.created_at)
        .bind(u.updated_at)
        .bind(u.max_bytes)
        .bind(reached)
        .execute(tx)
        .await?;
    Ok(())
}

#[async_trait]
impl SnapshotStore for SqlStore {
    async fn snapshot(&self, sink: &mut dyn SnapshotSink) -> MetaResult<DateTime<Utc>> {
        let s = self;
        let mut tx = s.db().begin_snapshot().await?;
        // At or before the snapshot's moment: whatever committed before it
        // is in the snapshot.
        let at = s.now();
        query(format!(
            "SELECT {USER_COLS} FROM user_storage ORDER BY user_id"
        ))
        .for_each::<MetaError>(&mut tx, &mut Users(&mut *sink))
        .await?;
        query(format!(
            "SELECT {FILE_COLS}, created_at FROM user_files ORDER BY user_id, id"
        ))
        .for_each::<MetaError>(&mut tx, &mut Files(&mut *sink))
        .await?;
        tx.commit().await?;
        Ok(at)
    }

    async fn has_files(&self) -> MetaResult<bool> {
        let s = self;
        let row = query("SELECT 1 AS one FROM user_files LIMIT 1")
            .fetch_optional(s.db())
            .await?;
        Ok(row.is_some())
    }

    async fn restore_rows(&self, src: &mut dyn RowSource) -> MetaResult<()> {
        let s = self;
        let mut tx = s.db().begin_write().await?;
        while let Some(u) = src.next_user().await? {
            insert_user(&mut tx, &u).await?;
        }
        while let Some(f) = src.next_file().await? {
            insert_file_row(&mut tx, &f.file, f.created_at).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}
