//! The one door between the store's SQL and the three engines.
//!
//! Every statement of the store is written once, in the SQL the three
//! engines share, with `?` placeholders in bind order, and run through
//! [`query`]. What differs between PostgreSQL, SQLite and MySQL/MariaDB is
//! answered here and nowhere else:
//!
//! - **placeholders**: PostgreSQL numbers them, so `?` becomes `$1`, `$2`, …
//!   (outside quoted literals); SQLite and MySQL take `?` as written. Each
//!   distinct text is rewritten once and kept ([`Rewritten`]);
//! - **integer casts**: MySQL's `CAST` has no `BIGINT`, so `AS BIGINT)`
//!   becomes `AS SIGNED)` there;
//! - **value encodings** ([`Arg`], [`Col`]): tags are a `text[]` on
//!   PostgreSQL and a JSON array in a text column elsewhere; MySQL's
//!   `utf8mb4_bin` text columns arrive marked binary and are read as UTF-8
//!   bytes; a narrower integer column widens to `i64` (chosen by the
//!   column's type, not by a failed decode);
//! - **transactions**: SQLite's writers begin with `BEGIN IMMEDIATE`
//!   ([`Db::begin_write`]); `SELECT … FOR UPDATE` and `SKIP LOCKED` are
//!   fragments ([`Engine::for_update`], [`Engine::skip_locked`]) that SQLite,
//!   whose writer holds the whole database, leaves out; a consistent read
//!   of many statements begins the engine's own way ([`Db::begin_snapshot`]).
//!
//! Statements that really differ (upserts, search indexes, snapshots) branch
//! on [`Engine`] where they are written, so each concern's SQL stays in one
//! file.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use sqlx::migrate::Migrator;
use sqlx::{
    mysql::MySqlRow, postgres::PgRow, sqlite::SqliteRow, MySqlPool, PgPool, Row as _, SqlitePool,
};
use uuid::Uuid;

/// The cast MySQL spells `AS SIGNED)`.
const MYSQL_BIGINT: &str = "AS BIGINT)";

/// Which engine a [`Db`] talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Engine {
    Postgres,
    Sqlite,
    MySql,
}

impl Engine {
    /// The name `MetaStore::backend` reports.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Engine::Postgres => "postgres",
            Engine::Sqlite => "sqlite",
            Engine::MySql => "mysql",
        }
    }

    /// ` FOR UPDATE`, to lock the rows a transaction read; empty on SQLite,
    /// where a writing transaction already holds the database.
    pub(crate) fn for_update(self) -> &'static str {
        match self {
            Engine::Sqlite => "",
            _ => " FOR UPDATE",
        }
    }

    /// ` FOR UPDATE SKIP LOCKED`, for claims that must not wait on each
    /// other (jobs); empty on SQLite.
    pub(crate) fn skip_locked(self) -> &'static str {
        match self {
            Engine::Sqlite => "",
            _ => " FOR UPDATE SKIP LOCKED",
        }
    }

    /// `sql` as this engine reads it, rewritten once per distinct text (see
    /// [`Rewritten`]).
    fn text(self, sql: Cow<'static, str>) -> Cow<'static, str> {
        static POSTGRES: Rewritten = Rewritten::new();
        static MYSQL: Rewritten = Rewritten::new();
        match self {
            Engine::Postgres if sql.contains('?') => POSTGRES.get(self, sql),
            Engine::MySql if sql.contains(MYSQL_BIGINT) => MYSQL.get(self, sql),
            _ => sql,
        }
    }

    /// `sql` as this engine reads it (see the module doc).
    fn dialect<'a>(self, sql: &'a str) -> Cow<'a, str> {
        match self {
            Engine::Sqlite => Cow::Borrowed(sql),
            Engine::MySql if sql.contains(MYSQL_BIGINT) => {
                Cow::Owned(sql.replace(MYSQL_BIGINT, "AS SIGNED)"))
            }
            Engine::MySql => Cow::Borrowed(sql),
            Engine::Postgres => numbered(sql),
        }
    }
}

/// The texts of one engine's rewritten statements, each rewritten once: the
/// statements are the store's own, a finite set, so after the first use a
/// query costs a lookup instead of a rewrite and its allocation. A rewritten
/// text is leaked, to be shared as `&'static str`; the cache stops growing
/// at [`Rewritten::MAX`] texts (a statement built with varying text cannot
/// grow it without bound), and texts past that are rewritten each time.
struct Rewritten(LazyLock<Mutex<HashMap<Cow<'static, str>, &'static str>>>);

impl Rewritten {
    /// Far more than the store's distinct statements (a few hundred, the
    /// listing's variants included); at most a few hundred KiB of text.
    const MAX: usize = 2048;

    const fn new() -> Self {
        Rewritten(LazyLock::new(Default::default))
    }

    /// `sql` as `engine` reads it (`sql` needs rewriting).
    fn get(&self, engine: Engine, sql: Cow<'static, str>) -> Cow<'static, str> {
        let mut texts = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = texts.get(&*sql) {
            return Cow::Borrowed(t);
        }
        let new = engine.dialect(&sql).into_owned();
        if texts.len() >= Self::MAX {
            return Cow::Owned(new);
        }
        let new: &'static str = Box::leak(new.into_boxed_str());
        texts.insert(sql, new);
        Cow::Borrowed(new)
    }
}

/// `?` placeholders numbered `$1`, `$2`, … in order, skipping quoted
/// literals and identifiers.
fn numbered(sql: &str) -> Cow<'_, str> {
    if !sql.contains('?') {
        return Cow::Borrowed(sql);
    }
    let mut out = String::with_capacity(sql.len() + 16);
    let mut quote: Option<char> = None;
    let mut n = 0;
    for c in sql.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '?') => {
                n += 1;
                out.push('$');
                out.push_str(&n.to_string());
                continue;
            }
            _ => {}
        }
        out.push(c);
    }
    Cow::Owned(out)
}

/// A connection pool on one of the engines.
#[derive(Clone, Debug)]
pub(crate) enum Db {
    Pg(PgPool),
    Sqlite(SqlitePool),
    MySql(MySqlPool),
}

/// A transaction on one of the engines; rolled back when dropped uncommitted.
pub(crate) enum Tx {
    Pg(sqlx::Transaction<'static, sqlx::Postgres>),
    Sqlite(sqlx::Transaction<'static, sqlx::Sqlite>),
    MySql(sqlx::Transaction<'static, sqlx::MySql>),
}

impl Db {
    pub(crate) fn engine(&self) -> Engine {
        match self {
            Db::Pg(_) => Engine::Postgres,
            Db::Sqlite(_) => Engine::Sqlite,
            Db::MySql(_) => Engine::MySql,
        }
    }

    /// A transaction that writes. On SQLite it is `BEGIN IMMEDIATE`: it takes
    /// the write lock up front, waiting out the busy timeout, where a
    /// deferred `BEGIN` that has read and then writes would get "database is
    /// locked" at once when another connection wrote meanwhile.
    pub(crate) async fn begin_write(&self) -> Result<Tx, sqlx::Error> {
        Ok(match self {
            Db::Pg(p) => Tx::Pg(p.begin().await?),
            Db::Sqlite(p) => Tx::Sqlite(p.begin_with("BEGIN IMMEDIATE").await?),
            Db::MySql(p) => Tx::MySql(p.begin().await?),
        })
    }

    /// A transaction that reads one consistent snapshot from its first
    /// statement to its end, and writes nothing (backups). PostgreSQL:
    /// `REPEATABLE READ, READ ONLY`. MySQL: `REPEATABLE READ` (the pool's
    /// sessions run at `READ COMMITTED`, so it is set for this transaction)
    /// started `WITH CONSISTENT SNAPSHOT`. SQLite: a deferred `BEGIN`; in WAL
    /// mode its first read fixes its view while writers go on.
    pub(crate) async fn begin_snapshot(&self) -> Result<Tx, sqlx::Error> {
        Ok(match self {
            Db::Pg(p) => Tx::Pg(
                p.begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                    .await?,
            ),
            Db::Sqlite(p) => Tx::Sqlite(p.begin().await?),
            Db::MySql(p) => Tx::MySql(
                p.begin_with(
                    "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ; \
                     START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY",
                )
                .await?,
            ),
        })
    }

    /// The engine's migrations (`migrations/<engine>/`, built in).
    pub(crate) fn migrator(&self) -> &'static Migrator {
        static PG: Migrator = sqlx::migrate!("./migrations/postgres");
        static SQLITE: Migrator = sqlx::migrate!("./migrations/sqlite");
        static MYSQL: Migrator = sqlx::migrate!("./migrations/mysql");
        match self {
            Db::Pg(_) => &PG,
            Db::Sqlite(_) => &SQLITE,
            Db::MySql(_) => &MYSQL,
        }
    }

    /// Applies the engine's pending migrations.
    pub(crate) async fn migrate(&self) -> Result<(), sqlx::migrate::MigrateError> {
        match self {
            Db::Pg(p) => self.migrator().run(p).await,
            Db::Sqlite(p) => self.migrator().run(p).await,
            Db::MySql(p) => self.migrator().run(p).await,
        }
    }

    /// Closes every connection of the pool.
    pub(crate) async fn close(&self) {
        match self {
            Db::Pg(p) => p.close().await,
            Db::Sqlite(p) => p.close().await,
            Db::MySql(p) => p.close().await,
        }
    }
}

impl Tx {
    pub(crate) fn engine(&self) -> Engine {
        match self {
            Tx::Pg(_) => Engine::Postgres,
            Tx::Sqlite(_) => Engine::Sqlite,
            Tx::MySql(_) => Engine::MySql,
        }
    }

    pub(crate) async fn commit(self) -> Result<(), sqlx::Error> {
        match self {
            Tx::Pg(t) => t.commit().await,
            Tx::Sqlite(t) => t.commit().await,
            Tx::MySql(t) => t.commit().await,
        }
    }

    pub(crate) async fn rollback(self) -> Result<(), sqlx::Error> {
        match self {
            Tx::Pg(t) => t.rollback().await,
            Tx::Sqlite(t) => t.rollback().await,
            Tx::MySql(t) => t.rollback().await,
        }
    }
}

/// Where a [`Query`] runs: on a pooled connection (its own implicit
/// transaction) or inside a [`Tx`].
pub(crate) enum On<'a> {
    Db(&'a Db),
    Tx(&'a mut Tx),
}

impl<'a> From<&'a Db> for On<'a> {
    fn from(db: &'a Db) -> Self {
        On::Db(db)
    }
}

impl<'a> From<&'a mut Tx> for On<'a> {
    fn from(tx: &'a mut Tx) -> Self {
        On::Tx(tx)
    }
}

/// A value to bind. Nulls keep their type: PostgreSQL types every parameter.
#[derive(Clone, Debug)]
pub(crate) enum Arg {
    I64(Option<i64>),
    I32(Option<i32>),
    F64(Option<f64>),
    Bool(Option<bool>),
    Text(Option<String>),
    Bytes(Option<Vec<u8>>),
    Uuid(Option<Uuid>),
    Time(Option<DateTime<Utc>>),
    /// A file's tags: `text[]` on PostgreSQL, a JSON array elsewhere.
    Tags(Vec<String>),
}

macro_rules! arg_from {
    ($($t:ty => $v:ident),* $(,)?) => {$(
        impl From<$t> for Arg {
            fn from(x: $t) -> Arg { Arg::$v(Some(x.into())) }
        }
        impl From<Option<$t>> for Arg {
            fn from(x: Option<$t>) -> Arg { Arg::$v(x.map(Into::into)) }
        }
    )*};
}

arg_from!(
    i64 => I64, u32 => I64, i32 => I32, f64 => F64, bool => Bool,
    String => Text, &str => Text, &String => Text,
    Vec<u8> => Bytes, &[u8] => Bytes,
    Uuid => Uuid, DateTime<Utc> => Time,
);

impl From<&Option<String>> for Arg {
    fn from(x: &Option<String>) -> Arg {
        Arg::Text(x.clone())
    }
}

impl From<&Option<Vec<u8>>> for Arg {
    fn from(x: &Option<Vec<u8>>) -> Arg {
        Arg::Bytes(x.clone())
    }
}

/// One statement and its bound values; see [`query`].
#[must_use = "a query does nothing until it is run"]
pub(crate) struct Query {
    sql: Cow<'static, str>,
    args: Vec<Arg>,
    /// Kept as a prepared statement (see [`Query::planned_each_time`]).
    persistent: bool,
}

/// A statement in the shared SQL, `?` placeholders in bind order.
pub(crate) fn query(sql: impl Into<Cow<'static, str>>) -> Query {
    Query {
        sql: sql.into(),
        args: Vec::new(),
        persistent: true,
    }
}

/// Binds every [`Arg`] to an sqlx query of one engine; `$tags` turns a tag
/// list into that engine's encoding.
macro_rules! bind_args {
    ($q:expr, $args:expr, $tags:expr) => {{
        let mut q = $q;
        for a in $args {
            q = match a {
                Arg::I64(v) => q.bind(v),
                Arg::I32(v) => q.bind(v),
                Arg::F64(v) => q.bind(v),
                Arg::Bool(v) => q.bind(v),
                Arg::Text(v) => q.bind(v),
                Arg::Bytes(v) => q.bind(v),
                Arg::Uuid(v) => q.bind(v),
                Arg::Time(v) => q.bind(v),
                Arg::Tags(t) => q.bind($tags(t)),
            };
        }
        q
    }};
}

fn tags_json(tags: Vec<String>) -> String {
    serde_json::to_string(&tags).unwrap_or_else(|_| "[]".into())
}

fn tags_array(tags: Vec<String>) -> Vec<String> {
    tags
}

/// Runs `$method` of the bound query on whichever engine `$on` is, wrapping
/// what comes back with `$wrap` (given the [`Row`] variant).
macro_rules! run {
    ($self:ident, $on:ident, $method:ident, $wrap:ident) => {{
        let Query {
            sql,
            args,
            persistent,
        } = $self;
        match $on.into() {
            On::Db(Db::Pg(p)) => {
                let sql = Engine::Postgres.text(sql);
                $wrap!(
                    Pg,
                    bind_args!(sqlx::query(&sql).persistent(persistent), args, tags_array)
                        .$method(p)
                        .await
                )
            }
            On::Tx(Tx::Pg(t)) => {
                let sql = Engine::Postgres.text(sql);
                $wrap!(
                    Pg,
                    bind_args!(sqlx::query(&sql).persistent(persistent), args, tags_array)
                        .$method(&mut **t)
                        .await
                )
            }
            On::Db(Db::Sqlite(p)) => $wrap!(
                Sqlite,
                bind_args!(sqlx::query(&sql), args, tags_json)
                    .$method(p)
                    .await
            ),
            On::Tx(Tx::Sqlite(t)) => $wrap!(
                Sqlite,
                bind_args!(sqlx::query(&sql), args, tags_json)
                    .$method(&mut **t)
                    .await
            ),
            On::Db(Db::MySql(p)) => {
                let sql = Engine::MySql.text(sql);
                $wrap!(
                    MySql,
                    bind_args!(sqlx::query(&sql), args, tags_json)
                        .$method(p)
                        .await
                )
            }
            On::Tx(Tx::MySql(t)) => {
                let sql = Engine::MySql.text(sql);
                $wrap!(
                    MySql,
                    bind_args!(sqlx::query(&sql), args, tags_json)
                        .$method(&mut **t)
                        .await
                )
            }
        }
    }};
}

macro_rules! rows {
    ($v:ident, $r:expr) => {
        $r.map(|rows| rows.into_iter().map(Row::$v).collect())
    };
}
macro_rules! opt_row {
    ($v:ident, $r:expr) => {
        $r.map(|row| row.map(Row::$v))
    };
}
macro_rules! affected {
    ($v:ident, $r:expr) => {
        $r.map(|done| done.rows_affected())
    };
}

impl Query {
    /// Binds the next `?`.
    pub(crate) fn bind(mut self, v: impl Into<Arg>) -> Query {
        self.args.push(v.into());
        self
    }

    /// Binds a file's tags (see [`Arg::Tags`]).
    pub(crate) fn bind_tags(mut self, tags: &[String]) -> Query {
        self.args.push(Arg::Tags(tags.to_vec()));
        self
    }

    /// Plans the statement with its values every time it runs. PostgreSQL
    /// may plan a kept prepared statement once for any values (a generic
    /// plan), which for a statement whose best plan depends on them (a
    /// search pattern: trigram index or sort order's index) is the wrong
    /// one; there the statement is sent unprepared. It stays prepared on
    /// MySQL, which optimizes every execution with its values, and on
    /// SQLite, whose listing plans are chosen by the statement's text.
    pub(crate) fn planned_each_time(mut self) -> Query {
        self.persistent = false;
        self
    }

    /// Binds every value of `args`, in order (dynamically built statements).
    pub(crate) fn bind_all(mut self, args: impl IntoIterator<Item = Arg>) -> Query {
        self.args.extend(args);
        self
    }

    pub(crate) async fn fetch_all<'a>(
        self,
        on: impl Into<On<'a>>,
    ) -> Result<Vec<Row>, sqlx::Error> {
        run!(self, on, fetch_all, rows)
    }

    pub(crate) async fn fetch_optional<'a>(
        self,
        on: impl Into<On<'a>>,
    ) -> Result<Option<Row>, sqlx::Error> {
        run!(self, on, fetch_optional, opt_row)
    }

    /// The one row (`sqlx::Error::RowNotFound` when there is none).
    pub(crate) async fn fetch_one<'a>(self, on: impl Into<On<'a>>) -> Result<Row, sqlx::Error> {
        self.fetch_optional(on)
            .await?
            .ok_or(sqlx::Error::RowNotFound)
    }

    /// Runs the statement; returns how many rows it changed (MySQL counts
    /// the rows matched, as the others do: the driver asks for found rows).
    pub(crate) async fn execute<'a>(self, on: impl Into<On<'a>>) -> Result<u64, sqlx::Error> {
        run!(self, on, execute, affected)
    }

    /// Runs a conditional statement in `tx` that decides a race: `tx` comes
    /// back when it changed exactly one row; otherwise `tx` is rolled back
    /// and the answer is `None` (the condition was false: someone else won).
    pub(crate) async fn execute_one(self, mut tx: Tx) -> Result<Option<Tx>, sqlx::Error> {
        if self.execute(&mut tx).await? == 1 {
            Ok(Some(tx))
        } else {
            tx.rollback().await?;
            Ok(None)
        }
    }

    /// Runs the statement in `tx` and hands each row to `each` as it comes
    /// off the connection, so a result of any size is never held whole.
    pub(crate) async fn for_each<E>(self, tx: &mut Tx, each: &mut dyn EachRow<E>) -> Result<(), E>
    where
        E: From<sqlx::Error> + Send,
    {
        // A snapshot's statements are few; whether they stay prepared does
        // not matter.
        let Query { sql, args, .. } = self;
        let sql = tx.engine().text(sql);
        macro_rules! each_row {
            ($v:ident, $t:expr, $tags:expr) => {{
                let mut rows = bind_args!(sqlx::query(&sql), args, $tags).fetch(&mut **$t);
                while let Some(r) = rows.try_next().await? {
                    each.row(Row::$v(r)).await?;
                }
            }};
        }
        match tx {
            Tx::Pg(t) => each_row!(Pg, t, tags_array),
            Tx::Sqlite(t) => each_row!(Sqlite, t, tags_json),
            Tx::MySql(t) => each_row!(MySql, t, tags_json),
        }
        Ok(())
    }
}

/// What [`Query::for_each`] hands the rows to, one at a time.
#[async_trait::async_trait]
pub(crate) trait EachRow<E>: Send {
    async fn row(&mut self, row: Row) -> Result<(), E>;
}

/// A result row of one of the engines.
pub(crate) enum Row {
    Pg(PgRow),
    Sqlite(SqliteRow),
    MySql(MySqlRow),
}

impl Row {
    /// Column `name` as `T`.
    pub(crate) fn get<T: Col>(&self, name: &str) -> Result<T, sqlx::Error> {
        T::col(self, name)
    }

    /// A tags column (see [`Arg::Tags`]).
    pub(crate) fn tags(&self, name: &str) -> Result<Vec<String>, sqlx::Error> {
        match self {
            Row::Pg(r) => r.try_get::<Vec<String>, _>(name),
            _ => {
                let s: String = self.get(name)?;
                serde_json::from_str(&s).map_err(|e| sqlx::Error::Decode(Box::new(e)))
            }
        }
    }
}

/// A Rust type a column can be read as, on every engine.
pub(crate) trait Col: Sized {
    fn col(row: &Row, name: &str) -> Result<Self, sqlx::Error>;
}

/// Types every engine's driver decodes as they are.
macro_rules! col_direct {
    ($($t:ty),* $(,)?) => {$(
        impl Col for $t {
            fn col(row: &Row, name: &str) -> Result<Self, sqlx::Error> {
                match row {
                    Row::Pg(r) => r.try_get(name),
                    Row::Sqlite(r) => r.try_get(name),
                    Row::MySql(r) => r.try_get(name),
                }
            }
        }
        impl Col for Option<$t> {
            fn col(row: &Row, name: &str) -> Result<Self, sqlx::Error> {
                match row {
                    Row::Pg(r) => r.try_get(name),
                    Row::Sqlite(r) => r.try_get(name),
                    Row::MySql(r) => r.try_get(name),
                }
            }
        }
    )*};
}

col_direct!(i32, f64, bool, Vec<u8>, Uuid, DateTime<Utc>);

/// An integer column of any width (an `INT` or `SMALLINT` column, a MySQL
/// `COUNT`), widened to `i64`. The width is read from the column's type, so
/// a narrower column decodes at once instead of after a failed `i64` decode
/// (whose error allocates, on every row).
fn wide_int<R: sqlx::Row>(r: &R, name: &str) -> Result<Option<i64>, sqlx::Error>
where
    for<'r> Option<i64>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<i32>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<i16>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
{
    use sqlx::{Column as _, Type};
    let ty = r.try_column(name)?.type_info();
    if !<Option<i64> as Type<R::Database>>::compatible(ty) {
        if <Option<i32> as Type<R::Database>>::compatible(ty) {
            return Ok(r.try_get::<Option<i32>, _>(name)?.map(i64::from));
        }
        if <Option<i16> as Type<R::Database>>::compatible(ty) {
            return Ok(r.try_get::<Option<i16>, _>(name)?.map(i64::from));
        }
    }
    // An `i64` column, or none of these (then the error names its type).
    r.try_get(name)
}

impl Col for Option<i64> {
    fn col(row: &Row, name: &str) -> Result<Self, sqlx::Error> {
        match row {
            Row::Pg(r) => wide_int(r, name),
            Row::Sqlite(r) => r.try_get(name),
            Row::MySql(r) => {
                use sqlx::{Column as _, Type};
                let ty = r.try_column(name)?.type_info();
                if <u64 as Type<sqlx::MySql>>::compatible(ty) {
                    // An unsigned column, its values past `i64` clamped.
                    Ok(r.try_get::<Option<u64>, _>(name)?
                        .map(|v| i64::try_from(v).unwrap_or(i64::MAX)))
                } else {
                    wide_int(r, name)
                }
            }
        }
    }
}

impl Col for i64 {
    fn col(row: &Row, name: &str) -> Result<Self, sqlx::Error> {
        Option::<i64>::col(row, name)?.ok_or_else(|| null(name))
    }
}

impl Col for Option<String> {
    fn col(row: &Row, name: &str) -> Result<Self, sqlx::Error> {
        match row {
            Row::Pg(r) => r.try_get(name),
            Row::Sqlite(r) => r.try_get(name),
            // `utf8mb4_bin` columns come marked binary: read the bytes.
            Row::MySql(r) => r
                .try_get::<Option<Vec<u8>>, _>(name)?
                .map(|b| String::from_utf8(b).map_err(|e| sqlx::Error::Decode(Box::new(e))))
                .transpose(),
        }
    }
}

impl Col for String {
    fn col(row: &Row, name: &str) -> Result<Self, sqlx::Error> {
        Option::<String>::col(row, name)?.ok_or_else(|| null(name))
    }
}

fn null(name: &str) -> sqlx::Error {
    sqlx::Error::ColumnDecode {
        index: name.to_string(),
        source: "unexpected NULL".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_placeholders_are_numbered_outside_literals() {
        assert_eq!(
            Engine::Postgres.dialect("SELECT a FROM t WHERE b = ? AND c = '?' AND d = ?"),
            "SELECT a FROM t WHERE b = $1 AND c = '?' AND d = $2"
        );
        assert_eq!(
            Engine::Postgres.dialect("SELECT \"x?\" FROM t WHERE b = ?"),
            "SELECT \"x?\" FROM t WHERE b = $1"
        );
        assert_eq!(Engine::Sqlite.dialect("a = ?"), "a = ?");
    }

    #[test]
    fn a_text_is_rewritten_once() {
        let sql = "SELECT a FROM t WHERE b = ? AND c = ?";
        let first = Engine::Postgres.text(sql.into());
        let again = Engine::Postgres.text(String::from(sql).into());
        assert_eq!(first, "SELECT a FROM t WHERE b = $1 AND c = $2");
        match (first, again) {
            (Cow::Borrowed(a), Cow::Borrowed(b)) => assert!(std::ptr::eq(a, b)),
            other => panic!("not the kept text: {other:?}"),
        }
        // What an engine reads as written passes through, and is not kept.
        let plain = "SELECT a FROM t WHERE b = ?";
        assert!(
            matches!(Engine::MySql.text(plain.into()), Cow::Borrowed(t) if std::ptr::eq(t, plain))
        );
        assert!(
            matches!(Engine::Sqlite.text(plain.into()), Cow::Borrowed(t) if std::ptr::eq(t, plain))
        );
    }

    #[test]
    fn the_kept_texts_are_bounded() {
        let texts = Rewritten::new();
        for i in 0..Rewritten::MAX + 10 {
            let t = texts.get(Engine::Postgres, format!("SELECT {i} WHERE a = ?").into());
            assert_eq!(t, format!("SELECT {i} WHERE a = $1"));
            assert_eq!(matches!(t, Cow::Borrowed(_)), i < Rewritten::MAX, "{i}");
        }
        assert_eq!(texts.0.lock().unwrap().len(), Rewritten::MAX);
    }

    #[test]
    fn mysql_casts_to_signed() {
        assert_eq!(
            Engine::MySql.dialect("SELECT CAST(COUNT(*) AS BIGINT) AS n, ? AS x"),
            "SELECT CAST(COUNT(*) AS SIGNED) AS n, ? AS x"
        );
    }
}
