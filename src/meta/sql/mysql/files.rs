//! File rows: reads, the listing with its filters, search and keyset
//! pages, and the changes a user makes to a file (each with its event).
//!
//! Without `UPDATE … RETURNING`, a change is made and the row read back in
//! the same transaction, which still holds the row's lock.

use chrono::{DateTime, Utc};
use sqlx::mysql::MySqlRow;
use uuid::Uuid;

use super::super::{Param, FILE_COLS};
use super::{file_from_row, like_pattern, MySqlStore, Tx};
use crate::meta::{
    FileRecord, ListQuery, MediaUpdate, MetaError, MetaResult, NewEvent, Rename, SortKey, SortOrder,
};

impl MySqlStore {
    pub(super) async fn file(
        &self,
        user_id: Option<&str>,
        id: Uuid,
    ) -> MetaResult<Option<FileRecord>> {
        let row = match user_id {
            Some(u) => {
                let sql =
                    format!("SELECT {FILE_COLS} FROM user_files WHERE id = ? AND user_id = ?");
                sqlx::query(&sql)
                    .bind(id)
                    .bind(u)
                    .fetch_optional(&self.pool)
                    .await
            }
            None => {
                let sql = format!("SELECT {FILE_COLS} FROM user_files WHERE id = ?");
                sqlx::query(&sql).bind(id).fetch_optional(&self.pool).await
            }
        }
        .map_err(MetaError::from_sqlx)?;
        Ok(row.map(|r| file_from_row(&r)).transpose()?)
    }

    /// The file row `id` of `user_id` as `tx` sees it (after a change).
    async fn file_in(
        tx: &mut Tx,
        user_id: &str,
        id: Uuid,
    ) -> Result<Option<MySqlRow>, sqlx::Error> {
        let sql = format!("SELECT {FILE_COLS} FROM user_files WHERE id = ? AND user_id = ?");
        sqlx::query(&sql)
            .bind(id)
            .bind(user_id)
            .fetch_optional(&mut **tx)
            .await
    }

    /// One page of the user's files. Parameters are pushed in the order
    /// their `?` appear in the text.
    pub(super) async fn file_page(
        &self,
        user_id: &str,
        q: &ListQuery,
    ) -> MetaResult<Vec<FileRecord>> {
        let mut sql = format!("SELECT {FILE_COLS} FROM user_files WHERE user_id = ?");
        let mut params = vec![Param::Str(user_id.to_string())];
        if let Some(t) = q.file_type {
            sql.push_str(" AND file_type = ?");
            params.push(Param::Str(t.as_str().into()));
        }
        if let Some(f) = q.favorite {
            sql.push_str(" AND is_favorite = ?");
            params.push(Param::Bool(f));
        }
        if let Some(tag) = &q.tag {
            sql.push_str(" AND JSON_CONTAINS(tags, JSON_QUOTE(?))");
            params.push(Param::Str(tag.clone()));
        }
        if let Some(search) = q.q.as_deref().filter(|s| !s.is_empty()) {
            // No trigram index here: the user's rows are read through the
            // sort order's index and each name is tested.
            sql.push_str(" AND LOWER(file_name) LIKE ? ESCAPE '!'");
            params.push(Param::Str(like_pattern(search)));
        }
        let col = match q.sort {
            SortKey::UploadDate => "upload_date",
            SortKey::FileName => "file_name",
            SortKey::FileSize => "file_size",
        };
        let (cmp, dir) = match q.order {
            SortOrder::Asc => (">", "ASC"),
            SortOrder::Desc => ("<", "DESC"),
        };
        if let Some(c) = &q.after {
            let key = match q.sort {
                SortKey::UploadDate => Param::Time(
                    DateTime::parse_from_rfc3339(&c.k)
                        .map_err(|_| MetaError::Conflict("bad cursor".into()))?
                        .with_timezone(&Utc),
                ),
                SortKey::FileName => Param::Str(c.k.clone()),
                SortKey::FileSize => Param::I64(
                    c.k.parse()
                        .map_err(|_| MetaError::Conflict("bad cursor".into()))?,
                ),
            };
            sql.push_str(&format!(" AND ({col}, id) {cmp} (?, ?)"));
            params.push(key);
            params.push(Param::Id(c.id));
        }
        sql.push_str(&format!(" ORDER BY {col} {dir}, id {dir} LIMIT ?"));
        params.push(Param::I64(i64::from(q.limit)));
        let mut query = sqlx::query(&sql);
        for p in params {
            query = match p {
                Param::Str(s) => query.bind(s),
                Param::I64(i) => query.bind(i),
                Param::Bool(b) => query.bind(b),
                Param::Id(u) => query.bind(u),
                Param::Time(t) => query.bind(t),
            };
        }
        let rows = query
            .fetch_all(&self.pool)
            .await
            .map_err(MetaError::from_sqlx)?;
        Ok(rows.iter().map(file_from_row).collect::<Result<_, _>>()?)
    }

    pub(super) async fn every_file(&self, user_id: Option<&str>) -> MetaResult<Vec<FileRecord>> {
        let rows = match user_id {
            Some(u) => {
                let sql =
                    format!("SELECT {FILE_COLS} FROM user_files WHERE user_id = ? ORDER BY id");
                sqlx::query(&sql).bind(u).fetch_all(&self.pool).await
            }
            None => {
                let sql = format!("SELECT {FILE_COLS} FROM user_files ORDER BY user_id, id");
                sqlx::query(&sql).fetch_all(&self.pool).await
            }
        }
        .map_err(MetaError::from_sqlx)?;
        Ok(rows.iter().map(file_from_row).collect::<Result<_, _>>()?)
    }

    pub(super) async fn delete_one_file(
        &self,
        user_id: &str,
        id: Uuid,
    ) -> MetaResult<Option<FileRecord>> {
        let mut tx = self.begin_write().await.map_err(MetaError::from_sqlx)?;
        // The user row before the file row, the order every change of
        // usage takes them in (the delete trigger writes the user row).
        sqlx::query("SELECT 1 FROM user_storage WHERE user_id = ? FOR UPDATE")
            .bind(user_id)
            .fetch_optional(&mut *tx)
            .await?;
        let sql =
            format!("SELECT {FILE_COLS} FROM user_files WHERE id = ? AND user_id = ? FOR UPDATE");
        let Some(row) = sqlx::query(&sql)
            .bind(id)
            .bind(user_id)
            .fetch_optional(&mut *tx)
            .await?
        else {
            return Ok(None);
        };
        let rec = file_from_row(&row)?;
        sqlx::query("DELETE FROM user_files WHERE id = ?")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        Self::record_event_in(&mut tx, &NewEvent::file_deleted(&rec, "deleted")).await?;
        // Usage back below a threshold re-arms it.
        Self::check_threshold_in(&mut tx, user_id).await?;
        tx.commit().await?;
        Ok(Some(rec))
    }

    pub(super) async fn favorite(
        &self,
        user_id: &str,
        id: Uuid,
        fav: Option<bool>,
    ) -> MetaResult<Option<FileRecord>> {
        let mut tx = self.begin_write().await.map_err(MetaError::from_sqlx)?;
        let n = match fav {
            Some(v) => {
                sqlx::query("UPDATE user_files SET is_favorite = ? WHERE id = ? AND user_id = ?")
                    .bind(v)
                    .bind(id)
                    .bind(user_id)
                    .execute(&mut *tx)
                    .await?
            }
            None => sqlx::query(
                "UPDATE user_files SET is_favorite = NOT is_favorite WHERE id = ? AND user_id = ?",
            )
            .bind(id)
            .bind(user_id)
            .execute(&mut *tx)
            .await?,
        }
        .rows_affected();
        if n == 0 {
            return Ok(None);
        }
        let Some(row) = Self::file_in(&mut tx, user_id, id).await? else {
            return Ok(None);
        };
        let rec = file_from_row(&row)?;
        Self::record_event_in(&mut tx, &NewEvent::file_updated(&rec, &["is_favorite"])).await?;
        tx.commit().await?;
        Ok(Some(rec))
    }

    pub(super) async fn tags(
        &self,
        user_id: &str,
        id: Uuid,
        tags: &[String],
    ) -> MetaResult<Option<FileRecord>> {
        let mut tx = self.begin_write().await.map_err(MetaError::from_sqlx)?;
        let n = sqlx::query("UPDATE user_files SET tags = ? WHERE id = ? AND user_id = ?")
            .bind(super::tags_in(tags))
            .bind(id)
            .bind(user_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if n == 0 {
            return Ok(None);
        }
        let Some(row) = Self::file_in(&mut tx, user_id, id).await? else {
            return Ok(None);
        };
        let rec = file_from_row(&row)?;
        Self::record_event_in(&mut tx, &NewEvent::file_updated(&rec, &["tags"])).await?;
        tx.commit().await?;
        Ok(Some(rec))
    }

    pub(super) async fn media(&self, id: Uuid, m: &MediaUpdate) -> MetaResult<bool> {
        let mut tx = self.begin_write().await.map_err(MetaError::from_sqlx)?;
        let n = sqlx::query(
            "UPDATE user_files SET resolution = COALESCE(?, resolution), \
             duration = COALESCE(?, duration), thumbnail_path = COALESCE(?, thumbnail_path) \
             WHERE id = ?",
        )
        .bind(&m.resolution)
        .bind(&m.duration)
        .bind(&m.thumbnail_path)
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n == 0 {
            return Ok(false);
        }
        let sql = format!("SELECT {FILE_COLS} FROM user_files WHERE id = ?");
        let Some(row) = sqlx::query(&sql).bind(id).fetch_optional(&mut *tx).await? else {
            return Ok(false);
        };
        let rec = file_from_row(&row)?;
        Self::record_event_in(&mut tx, &NewEvent::media_ready(&rec)).await?;
        tx.commit().await?;
        Ok(true)
    }

    pub(super) async fn rename(
        &self,
        user_id: &str,
        id: Uuid,
        c: &Rename,
    ) -> MetaResult<Option<FileRecord>> {
        let mut tx = self.begin_write().await.map_err(MetaError::from_sqlx)?;
        let n = sqlx::query(
            "UPDATE user_files SET file_name = COALESCE(?, file_name), \
             package_name = CASE WHEN ? THEN ? ELSE package_name END \
             WHERE id = ? AND user_id = ?",
        )
        .bind(&c.file_name)
        .bind(c.package_name.is_some())
        .bind(c.package_name.clone().flatten())
        .bind(id)
        .bind(user_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n == 0 {
            return Ok(None);
        }
        let Some(row) = Self::file_in(&mut tx, user_id, id).await? else {
            return Ok(None);
        };
        let rec = file_from_row(&row)?;
        let mut changed = Vec::new();
        if c.file_name.is_some() {
            changed.push("file_name");
        }
        if c.package_name.is_some() {
            changed.push("package_name");
        }
        if !changed.is_empty() {
            Self::record_event_in(&mut tx, &NewEvent::file_updated(&rec, &changed)).await?;
        }
        tx.commit().await?;
        Ok(Some(rec))
    }

    pub(super) async fn package(
        &self,
        user_id: &str,
        package: &str,
    ) -> MetaResult<Vec<FileRecord>> {
        let sql = format!(
            "SELECT {FILE_COLS} FROM user_files WHERE user_id = ? AND package_name = ? \
             ORDER BY upload_date, id"
        );
        let rows = sqlx::query(&sql)
            .bind(user_id)
            .bind(package)
            .fetch_all(&self.pool)
            .await
            .map_err(MetaError::from_sqlx)?;
        Ok(rows.iter().map(file_from_row).collect::<Result<_, _>>()?)
    }
}

impl MySqlStore {
    pub(super) async fn usage_per_type(
        &self,
        user_id: &str,
    ) -> MetaResult<Vec<(crate::domain::filetype::FileType, crate::meta::TypeUsage)>> {
        use sqlx::Row;
        let rows = sqlx::query(
            "SELECT file_type, CAST(COALESCE(SUM(file_size), 0) AS SIGNED) AS bytes, \
             CAST(COUNT(*) AS SIGNED) AS n FROM user_files WHERE user_id = ? GROUP BY file_type",
        )
        .bind(user_id)
        .fetch_all(&self.pool)
        .await
        .map_err(MetaError::from_sqlx)?;
        let mut out = Vec::new();
        for r in rows {
            let t = super::text(&r, "file_type")?;
            if let Some(ft) = crate::domain::filetype::FileType::parse(&t) {
                out.push((
                    ft,
                    crate::meta::TypeUsage {
                        bytes: r.try_get("bytes")?,
                        count: r.try_get("n")?,
                    },
                ));
            }
        }
        Ok(out)
    }
}
