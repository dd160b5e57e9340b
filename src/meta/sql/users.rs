//! Users ([`UserStore`]): the `user_storage` rows, their quotas, deleting a
//! user with every row they own, and the audit's view of the counters the
//! triggers keep (row sums, and their repair).

use async_trait::async_trait;

use super::engine::{query, Engine, Tx};
use super::outbox::{check_threshold_in, record_event_in};
use super::rows::{file_from_row, user_from_row, FILE_COLS, USER_COLS};
use super::{to_i64, SqlStore};
use crate::meta::{
    DeletedUser, MetaError, MetaResult, NewEvent, UserStorage, UserStore, USER_SCOPED_TABLES,
};

/// Inserts the user row `(user_id, max_bytes, created_at, updated_at)`
/// unless it exists. The upsert syntax differs: PostgreSQL and SQLite do
/// nothing on conflict; MySQL has no such clause, and `INSERT IGNORE` would
/// turn a too-long id into a truncated one and take a shared lock on an
/// existing row (two reservations holding it would deadlock upgrading it),
/// so a no-op assignment takes the exclusive lock the next UPDATE needs.
pub(crate) fn create_user_sql(engine: Engine) -> &'static str {
    match engine {
        Engine::MySql => {
            "INSERT INTO user_storage (user_id, max_bytes, created_at, updated_at) \
             VALUES (?, ?, ?, ?) ON DUPLICATE KEY UPDATE user_id = user_id"
        }
        Engine::Postgres | Engine::Sqlite => {
            "INSERT INTO user_storage (user_id, max_bytes, created_at, updated_at) \
             VALUES (?, ?, ?, ?) ON CONFLICT (user_id) DO NOTHING"
        }
    }
}

/// Creates user `user_id` with quota `max_bytes` inside `tx` unless it
/// exists (then it is left as it is).
pub(crate) async fn create_user_in(
    tx: &mut Tx,
    user_id: &str,
    max_bytes: u64,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<(), sqlx::Error> {
    query(create_user_sql(tx.engine()))
        .bind(user_id)
        .bind(to_i64(max_bytes))
        .bind(now)
        .bind(now)
        .execute(tx)
        .await?;
    Ok(())
}

/// The user row, read inside `tx`.
async fn user_in(tx: &mut Tx, user_id: &str) -> MetaResult<UserStorage> {
    let row = query(format!(
        "SELECT {USER_COLS} FROM user_storage WHERE user_id = ?"
    ))
    .bind(user_id)
    .fetch_optional(tx)
    .await?;
    Ok(user_from_row(&row.ok_or(MetaError::NotFound)?)?)
}

/// Sums of the file rows per user, `(user_id, bytes, count)`.
const ROW_TOTALS_SQL: &str = "SELECT s.user_id AS user_id, \
     CAST(COALESCE(SUM(f.file_size), 0) AS BIGINT) AS bytes, CAST(COUNT(f.id) AS BIGINT) AS n \
     FROM user_storage s LEFT JOIN user_files f ON f.user_id = s.user_id \
     GROUP BY s.user_id ORDER BY s.user_id";

/// What a user's counters should be, as subqueries of a statement on
/// `user_storage`: the sums of their file rows and of their reservations.
const ROW_BYTES: &str = "(SELECT CAST(COALESCE(SUM(f.file_size), 0) AS BIGINT) \
     FROM user_files f WHERE f.user_id = user_storage.user_id)";
const ROW_FILES: &str =
    "(SELECT COUNT(*) FROM user_files f WHERE f.user_id = user_storage.user_id)";
const ROW_RESERVED: &str = "(SELECT CAST(COALESCE(SUM(r.bytes), 0) AS BIGINT) \
     FROM upload_reservations r WHERE r.user_id = user_storage.user_id)";

#[async_trait]
impl UserStore for SqlStore {
    async fn ensure_user(&self, user_id: &str, default_quota: u64) -> MetaResult<UserStorage> {
        let s = self;
        let mut tx = s.db().begin_write().await?;
        create_user_in(&mut tx, user_id, default_quota, s.now()).await?;
        let user = user_in(&mut tx, user_id).await?;
        tx.commit().await?;
        Ok(user)
    }

    async fn get_user(&self, user_id: &str) -> MetaResult<Option<UserStorage>> {
        let s = self;
        let row = query(format!(
            "SELECT {USER_COLS} FROM user_storage WHERE user_id = ?"
        ))
        .bind(user_id)
        .fetch_optional(s.db())
        .await?;
        Ok(row.map(|r| user_from_row(&r)).transpose()?)
    }

    async fn list_users(&self) -> MetaResult<Vec<UserStorage>> {
        let s = self;
        let rows = query(format!(
            "SELECT {USER_COLS} FROM user_storage ORDER BY user_id"
        ))
        .fetch_all(s.db())
        .await?;
        Ok(rows.iter().map(user_from_row).collect::<Result<_, _>>()?)
    }

    async fn set_quota(&self, user_id: &str, max_bytes: u64) -> MetaResult<UserStorage> {
        let s = self;
        let t = s.now();
        let mut tx = s.db().begin_write().await?;
        create_user_in(&mut tx, user_id, max_bytes, t).await?;
        query("UPDATE user_storage SET max_bytes = ?, updated_at = ? WHERE user_id = ?")
            .bind(to_i64(max_bytes))
            .bind(t)
            .bind(user_id)
            .execute(&mut tx)
            .await?;
        // A lower quota can carry usage past a threshold.
        check_threshold_in(&mut tx, user_id).await?;
        let user = user_in(&mut tx, user_id).await?;
        tx.commit().await?;
        Ok(user)
    }

    async fn delete_user(&self, user_id: &str) -> MetaResult<Option<DeletedUser>> {
        let s = self;
        let tx = s.db().begin_write().await?;
        // The user row first: concurrent uploads of this user wait here.
        let Some(mut tx) = query("UPDATE user_storage SET updated_at = ? WHERE user_id = ?")
            .bind(s.now())
            .bind(user_id)
            .execute_one(tx)
            .await?
        else {
            return Ok(None);
        };
        let out = delete_files_in(&mut tx, user_id).await?;
        for table in USER_SCOPED_TABLES {
            query(format!("DELETE FROM {table} WHERE user_id = ?"))
                .bind(user_id)
                .execute(&mut tx)
                .await?;
        }
        query("DELETE FROM user_storage WHERE user_id = ?")
            .bind(user_id)
            .execute(&mut tx)
            .await?;
        tx.commit().await?;
        Ok(Some(out))
    }

    async fn row_totals(&self) -> MetaResult<Vec<(String, i64, i64)>> {
        let s = self;
        let rows = query(ROW_TOTALS_SQL).fetch_all(s.db()).await?;
        rows.iter()
            .map(|r| Ok((r.get("user_id")?, r.get("bytes")?, r.get("n")?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(MetaError::from)
    }

    async fn repair_counters(&self) -> MetaResult<u64> {
        let s = self;
        let lock = s.engine().for_update();
        let mut tx = s.db().begin_write().await?;
        // The users whose counters differ, their rows locked (in one order,
        // so two repairs cannot deadlock) until the repair commits.
        let drifted = query(format!(
            "SELECT user_id FROM user_storage \
             WHERE total_bytes <> {ROW_BYTES} OR file_count <> {ROW_FILES} \
                OR reserved_bytes <> {ROW_RESERVED} \
             ORDER BY user_id{lock}"
        ))
        .fetch_all(&mut tx)
        .await?;
        let repair = format!(
            "UPDATE user_storage SET total_bytes = {ROW_BYTES}, file_count = {ROW_FILES}, \
             reserved_bytes = {ROW_RESERVED} WHERE user_id = ?"
        );
        for r in &drifted {
            let user: String = r.get("user_id")?;
            query(repair.clone()).bind(&user).execute(&mut tx).await?;
            // Corrected usage is changed usage: it may cross a threshold
            // (recorded) or fall back below one (re-armed).
            check_threshold_in(&mut tx, &user).await?;
        }
        tx.commit().await?;
        Ok(drifted.len() as u64)
    }
}

/// Deletes every file row of `user_id` inside `tx` (its rows locked first),
/// recording one `file.deleted` per file, like a delete of each; returns
/// what went, for the caller to remove the blobs.
async fn delete_files_in(tx: &mut Tx, user_id: &str) -> MetaResult<DeletedUser> {
    let lock = tx.engine().for_update();
    let rows = query(format!(
        "SELECT {FILE_COLS} FROM user_files WHERE user_id = ?{lock}"
    ))
    .bind(user_id)
    .fetch_all(&mut *tx)
    .await?;
    query("DELETE FROM user_files WHERE user_id = ?")
        .bind(user_id)
        .execute(&mut *tx)
        .await?;
    let mut out = DeletedUser::default();
    for r in &rows {
        let rec = file_from_row(r)?;
        record_event_in(tx, &NewEvent::file_deleted(&rec, "user_deleted")).await?;
        out.files += 1;
        out.bytes += rec.file_size.max(0) as u64;
        out.blob_keys.push(rec.file_path);
        out.blob_keys.extend(rec.thumbnail_path);
    }
    Ok(out)
}
