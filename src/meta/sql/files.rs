//! File rows (`user_files`) on every engine: the commit that turns a
//! reservation into a file, lookups, the listing (filters, `q=` through
//! [`super::search`], keyset pages on each sort order's index), and the
//! changes a user makes to a file, each recording its event in its own
//! transaction.
//!
//! A change is a conditional `UPDATE` whose rows affected tell whether the
//! file is there, then the row is read back in the same transaction, which
//! still holds its lock (MySQL has no `UPDATE … RETURNING`).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::commit::insert_file_in;
use super::engine::{query, Arg, Engine, Query, Row, Tx};
use super::outbox::{check_threshold_in, record_event_in};
use super::rows::{file_from_row, FILE_COLS};
use super::search::{name_match, NameMatch};
use super::SqlStore;
use crate::domain::filetype::FileType;
use crate::meta::{
    Cursor, FileRecord, FileStore, ListQuery, MediaUpdate, MetaError, MetaResult, NewEvent,
    NewFile, Rename, SortKey, SortOrder, TypeUsage,
};

#[async_trait]
impl FileStore for SqlStore {
    async fn commit_file(&self, reservation: Uuid, file: NewFile) -> MetaResult<FileRecord> {
        let s = self;
        let mut tx = s.db().begin_write().await?;
        let rec = insert_file_in(&mut tx, s.now(), reservation, file).await?;
        tx.commit().await?;
        Ok(rec)
    }

    async fn get_file(&self, user_id: &str, id: Uuid) -> MetaResult<Option<FileRecord>> {
        let s = self;
        let row = select_file(id, Some(user_id))
            .fetch_optional(s.db())
            .await?;
        Ok(row.as_ref().map(file_from_row).transpose()?)
    }

    async fn get_file_any(&self, id: Uuid) -> MetaResult<Option<FileRecord>> {
        let s = self;
        let row = select_file(id, None).fetch_optional(s.db()).await?;
        Ok(row.as_ref().map(file_from_row).transpose()?)
    }

    async fn list_files(&self, user_id: &str, q: &ListQuery) -> MetaResult<Vec<FileRecord>> {
        let s = self;
        let (sql, args, _) = listing_for(s, user_id, q).await?;
        let rows = query(sql)
            .bind_all(args)
            .planned_each_time()
            .fetch_all(s.db())
            .await?;
        records(&rows)
    }

    async fn listing_plan(&self, user_id: &str, q: &ListQuery) -> MetaResult<String> {
        let s = self;
        let (analyze, explain, col) = match s.engine() {
            Engine::Sqlite => ("ANALYZE", "EXPLAIN QUERY PLAN ", "detail"),
            Engine::Postgres => ("ANALYZE user_files", "EXPLAIN ", "QUERY PLAN"),
            Engine::MySql => (
                "ANALYZE TABLE user_files",
                "EXPLAIN FORMAT=JSON ",
                "EXPLAIN",
            ),
        };
        query(analyze).planned_each_time().fetch_all(s.db()).await?;
        let (sql, args, route) = listing_for(s, user_id, q).await?;
        let rows = query(format!("{explain}{sql}"))
            .bind_all(args)
            .planned_each_time()
            .fetch_all(s.db())
            .await?;
        // MySQL's plan quotes the statement's values, a cursor's binary id
        // among them, as they are: not always UTF-8, so read as bytes.
        let lines = rows
            .iter()
            .map(|r| match s.engine() {
                Engine::MySql => r
                    .get::<Vec<u8>>(col)
                    .map(|b| String::from_utf8_lossy(&b).into_owned()),
                _ => r.get::<String>(col),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let head = route.map(|r| format!("q=: {r}\n")).unwrap_or_default();
        Ok(format!("{head}{}", lines.join("\n")))
    }

    async fn all_files(&self, user_id: Option<&str>) -> MetaResult<Vec<FileRecord>> {
        let s = self;
        let all = match user_id {
            Some(u) => query(format!(
                "SELECT {FILE_COLS} FROM user_files WHERE user_id = ? ORDER BY id"
            ))
            .bind(u),
            None => query(format!(
                "SELECT {FILE_COLS} FROM user_files ORDER BY user_id, id"
            )),
        };
        records(&all.fetch_all(s.db()).await?)
    }

    async fn delete_file(&self, user_id: &str, id: Uuid) -> MetaResult<Option<FileRecord>> {
        let s = self;
        let lock = s.engine().for_update();
        let mut tx = s.db().begin_write().await?;
        // The user row before the file row, the order every change of usage
        // takes them in (the delete trigger writes the user row).
        query(format!(
            "SELECT 1 AS one FROM user_storage WHERE user_id = ?{lock}"
        ))
        .bind(user_id)
        .fetch_optional(&mut tx)
        .await?;
        let row = query(format!(
            "SELECT {FILE_COLS} FROM user_files WHERE id = ? AND user_id = ?{lock}"
        ))
        .bind(id)
        .bind(user_id)
        .fetch_optional(&mut tx)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let rec = file_from_row(&row)?;
        query("DELETE FROM user_files WHERE id = ?")
            .bind(id)
            .execute(&mut tx)
            .await?;
        record_event_in(&mut tx, &NewEvent::file_deleted(&rec, "deleted")).await?;
        // Usage back below a threshold re-arms it.
        check_threshold_in(&mut tx, user_id).await?;
        tx.commit().await?;
        Ok(Some(rec))
    }

    async fn set_favorite(
        &self,
        user_id: &str,
        id: Uuid,
        fav: Option<bool>,
    ) -> MetaResult<Option<FileRecord>> {
        let s = self;
        let change = match fav {
            Some(v) => {
                query("UPDATE user_files SET is_favorite = ? WHERE id = ? AND user_id = ?").bind(v)
            }
            None => query(
                "UPDATE user_files SET is_favorite = NOT is_favorite WHERE id = ? AND user_id = ?",
            ),
        }
        .bind(id)
        .bind(user_id);
        let mut tx = s.db().begin_write().await?;
        let Some(rec) = update_in(&mut tx, change, id, Some(user_id)).await? else {
            return Ok(None);
        };
        record_event_in(&mut tx, &NewEvent::file_updated(&rec, &["is_favorite"])).await?;
        tx.commit().await?;
        Ok(Some(rec))
    }

    async fn set_tags(
        &self,
        user_id: &str,
        id: Uuid,
        tags: &[String],
    ) -> MetaResult<Option<FileRecord>> {
        let s = self;
        let change = query("UPDATE user_files SET tags = ? WHERE id = ? AND user_id = ?")
            .bind_tags(tags)
            .bind(id)
            .bind(user_id);
        let mut tx = s.db().begin_write().await?;
        let Some(rec) = update_in(&mut tx, change, id, Some(user_id)).await? else {
            return Ok(None);
        };
        record_event_in(&mut tx, &NewEvent::file_updated(&rec, &["tags"])).await?;
        tx.commit().await?;
        Ok(Some(rec))
    }

    async fn set_media(&self, id: Uuid, m: &MediaUpdate) -> MetaResult<bool> {
        let s = self;
        let change = query(
            "UPDATE user_files SET resolution = COALESCE(?, resolution), \
             duration = COALESCE(?, duration), thumbnail_path = COALESCE(?, thumbnail_path) \
             WHERE id = ?",
        )
        .bind(&m.resolution)
        .bind(&m.duration)
        .bind(&m.thumbnail_path)
        .bind(id);
        let mut tx = s.db().begin_write().await?;
        let Some(rec) = update_in(&mut tx, change, id, None).await? else {
            return Ok(false);
        };
        record_event_in(&mut tx, &NewEvent::media_ready(&rec)).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn rename_file(
        &self,
        user_id: &str,
        id: Uuid,
        c: &Rename,
    ) -> MetaResult<Option<FileRecord>> {
        let s = self;
        let change = query(
            "UPDATE user_files SET file_name = COALESCE(?, file_name), \
             package_name = CASE WHEN ? THEN ? ELSE package_name END \
             WHERE id = ? AND user_id = ?",
        )
        .bind(&c.file_name)
        .bind(c.package_name.is_some())
        .bind(c.package_name.clone().flatten())
        .bind(id)
        .bind(user_id);
        let mut tx = s.db().begin_write().await?;
        let Some(rec) = update_in(&mut tx, change, id, Some(user_id)).await? else {
            return Ok(None);
        };
        let mut changed = Vec::new();
        if c.file_name.is_some() {
            changed.push("file_name");
        }
        if c.package_name.is_some() {
            changed.push("package_name");
        }
        if !changed.is_empty() {
            record_event_in(&mut tx, &NewEvent::file_updated(&rec, &changed)).await?;
        }
        tx.commit().await?;
        Ok(Some(rec))
    }

    async fn package_files(&self, user_id: &str, package: &str) -> MetaResult<Vec<FileRecord>> {
        let s = self;
        let rows = query(format!(
            "SELECT {FILE_COLS} FROM user_files WHERE user_id = ? AND package_name = ? \
             ORDER BY upload_date, id"
        ))
        .bind(user_id)
        .bind(package)
        .fetch_all(s.db())
        .await?;
        records(&rows)
    }

    async fn usage_by_type(&self, user_id: &str) -> MetaResult<Vec<(FileType, TypeUsage)>> {
        let s = self;
        let rows = query(
            "SELECT file_type, CAST(COALESCE(SUM(file_size), 0) AS BIGINT) AS bytes, \
             CAST(COUNT(*) AS BIGINT) AS n FROM user_files WHERE user_id = ? GROUP BY file_type",
        )
        .bind(user_id)
        .fetch_all(s.db())
        .await?;
        let mut out = Vec::new();
        for r in rows {
            if let Some(ft) = FileType::parse(&r.get::<String>("file_type")?) {
                let usage = TypeUsage {
                    bytes: r.get("bytes")?,
                    count: r.get("n")?,
                };
                out.push((ft, usage));
            }
        }
        Ok(out)
    }
}

/// File `id`, of `user_id` when given.
fn select_file(id: Uuid, user_id: Option<&str>) -> Query {
    match user_id {
        Some(u) => query(format!(
            "SELECT {FILE_COLS} FROM user_files WHERE id = ? AND user_id = ?"
        ))
        .bind(id)
        .bind(u),
        None => query(format!("SELECT {FILE_COLS} FROM user_files WHERE id = ?")).bind(id),
    }
}

/// Runs `change`, an `UPDATE` of file `id` (of `user_id` when given), in
/// `tx`; the row as `tx` now sees it, or `None` when the change matched no
/// row.
async fn update_in(
    tx: &mut Tx,
    change: Query,
    id: Uuid,
    user_id: Option<&str>,
) -> MetaResult<Option<FileRecord>> {
    if change.execute(&mut *tx).await? == 0 {
        return Ok(None);
    }
    let row = select_file(id, user_id).fetch_optional(&mut *tx).await?;
    Ok(row.as_ref().map(file_from_row).transpose()?)
}

fn records(rows: &[Row]) -> MetaResult<Vec<FileRecord>> {
    Ok(rows.iter().map(file_from_row).collect::<Result<_, _>>()?)
}

/// The listing statement of `q` for `user_id` and its values, with the way
/// this engine matches `q=` (which may ask the store first, see
/// [`name_match`]): what [`FileStore::list_files`] runs and
/// [`FileStore::listing_plan`] explains.
/// The statement of one page (see [`listing`]), and how `q=` matched the
/// names, if it was given ([`NameMatch::route`]).
async fn listing_for(
    s: &SqlStore,
    user_id: &str,
    q: &ListQuery,
) -> MetaResult<(String, Vec<Arg>, Option<&'static str>)> {
    let name = match q.q.as_deref().filter(|t| !t.is_empty()) {
        Some(t) => Some(name_match(s, user_id, t, q.limit).await?),
        None => None,
    };
    let route = name.as_ref().map(NameMatch::route);
    let (sql, args) = listing(s.engine(), user_id, q, name)?;
    Ok((sql, args, route))
}

/// The statement of one page of `user_id`'s files and its values, bound in
/// the order their `?` appear: filters, then the names matched by `name`,
/// then the keyset condition and order of the sort key's index
/// (`(user_id, key, id)`, or `(user_id, file_type, key, id)` for `type=`,
/// or the favorites' for `favorite=true`; migrations 0001, 0011 and 0012),
/// so that every sort and order walks it from the cursor without sorting.
fn listing(
    engine: Engine,
    user_id: &str,
    q: &ListQuery,
    name: Option<NameMatch>,
) -> MetaResult<(String, Vec<Arg>)> {
    let mut sql = format!("SELECT {FILE_COLS} FROM ");
    let mut args: Vec<Arg> = Vec::new();
    let mut test = None;
    let mut ids = None;
    let mut joined = false;
    match name {
        // The trigram index names the candidates, all of them this user's;
        // they are few, so they drive the join and are sorted afterwards.
        Some(NameMatch::Hits { sql: hits, args: a }) => {
            sql.push_str(&format!(
                "({hits}) AS hits CROSS JOIN user_files ON user_files.id = hits.hit"
            ));
            args.extend(a);
            joined = true;
        }
        Some(NameMatch::Test { sql: t, args: a }) => {
            sql.push_str("user_files");
            test = Some((t, a));
        }
        Some(NameMatch::Ids {
            ids: found,
            sql: t,
            args: a,
            ..
        }) => {
            sql.push_str("user_files");
            ids = Some(found);
            test = Some((t, a));
        }
        None => sql.push_str("user_files"),
    }
    let favorites = q.favorite == Some(true);
    if engine == Engine::MySql && ids.is_none() {
        // MySQL/MariaDB would rather read the user's rows by another index
        // and filesort them. Not for a few ids: their primary key finds them.
        sql.push_str(&format!(" FORCE INDEX ({})", mysql_index(q)));
    }
    if engine == Engine::Sqlite && favorites && ids.is_none() && !joined {
        // The favorites' own index (migration 0012), which SQLite, without
        // statistics, might pass over for the type's or the sort order's,
        // reading every file of the user to find a few favorites.
        sql.push_str(&format!(" INDEXED BY {}", favorites_index(q.sort)));
    }
    // With the ids known, SQLite must look them up by primary key; left to
    // itself (no statistics) it would walk the user's rows by the sort
    // order's index. `+user_id` keeps that index out of its choice.
    let user_col = if ids.is_some() && engine == Engine::Sqlite {
        "+user_id"
    } else {
        "user_id"
    };
    sql.push_str(&format!(" WHERE {user_col} = ?"));
    args.push(user_id.into());
    if let Some(found) = ids {
        if found.is_empty() {
            sql.push_str(" AND 1 = 0");
        } else {
            let marks = vec!["?"; found.len()].join(", ");
            sql.push_str(&format!(" AND id IN ({marks})"));
            args.extend(found.into_iter().map(Arg::from));
        }
    }
    if let Some(t) = q.file_type {
        sql.push_str(" AND file_type = ?");
        args.push(t.as_str().into());
    }
    match q.favorite {
        // Written out, not bound: the partial indexes of the favorites
        // (SQLite, PostgreSQL) serve only a query that names their
        // condition.
        Some(true) => sql.push_str(match engine {
            Engine::Postgres => " AND is_favorite",
            _ => " AND is_favorite = 1",
        }),
        Some(false) => {
            sql.push_str(" AND is_favorite = ?");
            args.push(false.into());
        }
        None => {}
    }
    if let Some(tag) = &q.tag {
        sql.push_str(" AND ");
        sql.push_str(has_tag(engine));
        args.push(tag.into());
    }
    if let Some((t, a)) = test {
        sql.push_str(" AND ");
        sql.push_str(&t);
        args.extend(a);
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
        let key = cursor_key(q.sort, c)?;
        if engine == Engine::MySql {
            // The row comparison is not a range of the index here: the key
            // bounds it, the id breaks ties.
            sql.push_str(&format!(
                " AND {col} {cmp}= ? AND ({col} {cmp} ? OR id {cmp} ?)"
            ));
            args.push(key.clone());
            args.push(key);
        } else {
            sql.push_str(&format!(" AND ({col}, id) {cmp} (?, ?)"));
            args.push(key);
        }
        args.push(c.id.into());
    }
    sql.push_str(&format!(" ORDER BY {col} {dir}, id {dir} LIMIT ?"));
    args.push(q.limit.into());
    Ok((sql, args))
}

/// The index of the user's favorites in sort order `sort` (migration 0012:
/// partial on SQLite and PostgreSQL, `(user_id, is_favorite, key, id)` on
/// MySQL/MariaDB). A user's favorites are few beside their files, so a
/// `favorite=true` listing walks it whatever else it filters on.
fn favorites_index(sort: SortKey) -> &'static str {
    match sort {
        SortKey::UploadDate => "idx_user_files_user_fav_date",
        SortKey::FileName => "idx_user_files_user_fav_name",
        SortKey::FileSize => "idx_user_files_user_fav_size",
    }
}

/// The index a MySQL/MariaDB listing walks: the favorites' for
/// `favorite=true`, else the sort key's, within the type for `type=` (no
/// `(user_id, file_type, file_name, id)`, see migration 0011).
fn mysql_index(q: &ListQuery) -> &'static str {
    if q.favorite == Some(true) {
        return favorites_index(q.sort);
    }
    match (q.sort, q.file_type.is_some()) {
        (SortKey::UploadDate, true) => "idx_user_files_user_type_date",
        (SortKey::FileSize, true) => "idx_user_files_user_type_size",
        (SortKey::UploadDate, false) => "idx_user_files_user_date",
        (SortKey::FileName, _) => "idx_user_files_user_name",
        (SortKey::FileSize, false) => "idx_user_files_user_size",
    }
}

/// The cursor's sort key value, typed as its column.
fn cursor_key(sort: SortKey, c: &Cursor) -> MetaResult<Arg> {
    let bad = || MetaError::Conflict("bad cursor".into());
    Ok(match sort {
        SortKey::UploadDate => DateTime::parse_from_rfc3339(&c.k)
            .map_err(|_| bad())?
            .with_timezone(&Utc)
            .into(),
        SortKey::FileName => c.k.as_str().into(),
        SortKey::FileSize => c.k.parse::<i64>().map_err(|_| bad())?.into(),
    })
}

/// "The file has tag `?`". Tags are a `text[]` on PostgreSQL and a JSON
/// array elsewhere ([`super::engine::Arg::Tags`]); each engine tests
/// membership in its own syntax.
fn has_tag(engine: Engine) -> &'static str {
    match engine {
        Engine::Postgres => "? = ANY(tags)",
        Engine::Sqlite => {
            "EXISTS (SELECT 1 FROM json_each(user_files.tags) WHERE json_each.value = ?)"
        }
        Engine::MySql => "JSON_CONTAINS(tags, JSON_QUOTE(?))",
    }
}
