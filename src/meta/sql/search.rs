//! How a listing's `q=` finds the file names that contain a text: a
//! case-insensitive substring, every character (`%`, `_`, `\` included)
//! standing for itself (SPEC, `GET /api/files`).
//!
//! This is where the listing branches on the engine, because each engine
//! indexes names its own way (docs/architecture.md, "Search"):
//!
//! - **PostgreSQL**: a `pg_trgm` GIN index on `lower(file_name)`, which
//!   `lower(file_name) LIKE '%…%'` uses for three characters or more; the
//!   planner (given the pattern, see [`super::engine::Query::planned_each_time`])
//!   picks between it and the sort order's index. Shorter texts are tested
//!   with `strpos` on the rows the sort order's index yields.
//! - **SQLite**: an FTS5 trigram table (`user_file_names_fts`, kept by
//!   triggers). The store counts the user's matches first: few, and they are
//!   joined to their rows and sorted ([`NameMatch::Hits`]); many (dense
//!   hits), and walking the sort order's index and testing each name reaches
//!   a page sooner. SQLite's `lower()` folds only ASCII, so other texts always
//!   go through the index (which folds every bicameral script), or, under
//!   three characters, are looked for in each of their case spellings.
//!   Texts under three characters go through the name index as on MySQL
//!   (below).
//! - **MySQL/MariaDB**: no trigram index. The user's name index
//!   `(user_id, file_name, id)` holds every name with its id, so the store
//!   reads it (never a row) for at most `10 × limit` matches: fewer, and
//!   they are all the matches ([`NameMatch::Ids`]), looked up by id and
//!   sorted; that many (dense hits), and `LOWER(file_name) LIKE` is tested
//!   on each row the sort order's index yields, which fills a page soon.
//!   Testing every row of a rare text through the sort order's index would
//!   look up each row by its primary key: a minute at a million files,
//!   against about a third of a second for the name index
//!   (docs/benchmarks.md).

use uuid::Uuid;

use super::engine::{query, Arg, Engine};
use super::SqlStore;
use crate::meta::MetaResult;

/// What a listing adds to keep only the names that contain the text.
pub(crate) enum NameMatch {
    /// A test of `file_name`, ANDed into the listing's `WHERE`: the rows are
    /// read through the sort order's index and tested one by one.
    Test { sql: String, args: Vec<Arg> },
    /// A derived table of the matching files' ids (column `hit`), all of
    /// them this user's and few, found by the trigram index: the listing
    /// joins it to `user_files` and sorts the result.
    Hits { sql: String, args: Vec<Arg> },
    /// Every matching file's id, few, already read from the name index
    /// (MySQL/MariaDB; SQLite under three characters), with the name test
    /// that found them: the listing looks them up by primary key, tests
    /// their names again (one may have been renamed since) and sorts them.
    Ids {
        ids: Vec<Uuid>,
        sql: String,
        args: Vec<Arg>,
    },
}

/// How `user_id`'s listing of `limit` rows matches `text` on this engine.
pub(crate) async fn name_match(
    s: &SqlStore,
    user_id: &str,
    text: &str,
    limit: u32,
) -> MetaResult<NameMatch> {
    let t = NameSearch::new(text);
    Ok(match s.engine() {
        Engine::Postgres if t.trigrams() => like(&t),
        // Too short for the trigram index: read the user's rows in sort
        // order (`strpos` keeps the planner off a full scan of the trigram
        // index, which a `LIKE` could tempt it into).
        Engine::Postgres => NameMatch::Test {
            sql: "strpos(lower(file_name), ?) > 0".into(),
            args: vec![t.lower.clone().into()],
        },
        Engine::Sqlite if t.trigrams() => {
            if t.ascii && dense_hits(s, user_id, &t, limit).await? {
                like(&t)
            } else {
                hits(user_id, &t)
            }
        }
        // Too short for trigrams, and MySQL/MariaDB, which has none: the
        // name index first.
        Engine::Sqlite if t.ascii => name_index_match(s, user_id, like_test(&t), limit).await?,
        Engine::Sqlite => name_index_match(s, user_id, case_spellings(&t), limit).await?,
        Engine::MySql => name_index_match(s, user_id, like_test(&t), limit).await?,
    })
}

/// `lower(file_name) LIKE '%…%'`, the text case-folded and its `%`, `_` and
/// `!` escaped with `!` (not `\`, which a MySQL server in
/// `NO_BACKSLASH_ESCAPES` mode reads differently).
fn like(t: &NameSearch) -> NameMatch {
    let (sql, args) = like_test(t);
    NameMatch::Test { sql, args }
}

/// The SQL and value of [`like`].
fn like_test(t: &NameSearch) -> (String, Vec<Arg>) {
    (
        "lower(file_name) LIKE ? ESCAPE '!'".into(),
        vec![like_pattern(&t.lower).into()],
    )
}

/// The ids of the user's files whose names hold the text, from SQLite's
/// trigram index.
fn hits(user_id: &str, t: &NameSearch) -> NameMatch {
    NameMatch::Hits {
        sql: "SELECT m.file_id AS hit FROM user_file_names_fts \
              JOIN user_file_names m ON m.seq = user_file_names_fts.rowid \
              WHERE user_file_names_fts MATCH ? AND m.user_id = ?"
            .into(),
        args: vec![t.phrase().into(), user_id.into()],
    }
}

/// A short non-ASCII text on SQLite, whose `lower()` folds only ASCII:
/// every case spelling of it is looked for as it is.
fn case_spellings(t: &NameSearch) -> (String, Vec<Arg>) {
    let spellings = t.variants();
    let tests = vec!["instr(file_name, ?) > 0"; spellings.len()];
    (
        format!("({})", tests.join(" OR ")),
        spellings.into_iter().map(Arg::from).collect(),
    )
}

/// The ids of `user`'s files whose names pass `test` (a test of
/// `file_name` alone), read from the name index `(user_id, file_name, id)`
/// without touching a row, when there are fewer than [`dense_cap`]; the
/// row-by-row test otherwise (dense matches fill a page soon).
async fn name_index_match(
    s: &SqlStore,
    user: &str,
    (sql, args): (String, Vec<Arg>),
    limit: u32,
) -> MetaResult<NameMatch> {
    let cap = dense_cap(limit);
    let hint = match s.engine() {
        Engine::MySql => "FORCE INDEX (idx_user_files_user_name)",
        _ => "INDEXED BY idx_user_files_user_name",
    };
    let rows = query(format!(
        "SELECT id FROM user_files {hint} WHERE user_id = ? AND {sql} LIMIT ?"
    ))
    .bind(user)
    .bind_all(args.clone())
    .bind(cap)
    .fetch_all(s.db())
    .await?;
    if i64::try_from(rows.len()).unwrap_or(i64::MAX) >= cap {
        return Ok(NameMatch::Test { sql, args });
    }
    let ids = rows
        .iter()
        .map(|r| r.get::<Uuid>("id"))
        .collect::<Result<_, _>>()?;
    Ok(NameMatch::Ids { ids, sql, args })
}

/// How many matches make them dense: `10 × limit`, at most 10,000.
fn dense_cap(limit: u32) -> i64 {
    i64::from(limit.max(1)).saturating_mul(10).min(10_000)
}

/// Whether at least `10 × limit` of `user`'s names contain the text
/// (SQLite's trigram index). Then matches are dense enough that walking the
/// sort order's index and testing each name finds a page sooner than
/// sorting every match would.
async fn dense_hits(s: &SqlStore, user: &str, t: &NameSearch, limit: u32) -> MetaResult<bool> {
    let cap = dense_cap(limit);
    let row = query(
        "SELECT CAST(COUNT(*) AS BIGINT) AS n FROM (SELECT 1 FROM user_file_names_fts \
         JOIN user_file_names m ON m.seq = user_file_names_fts.rowid \
         WHERE user_file_names_fts MATCH ? AND m.user_id = ? LIMIT ?)",
    )
    .bind(t.phrase())
    .bind(user)
    .bind(cap)
    .fetch_one(s.db())
    .await?;
    Ok(row.get::<i64>("n")? >= cap)
}

/// `%text%` for `LIKE … ESCAPE '!'`, with `%`, `_` and `!` escaped.
fn like_pattern(text: &str) -> String {
    let mut p = String::with_capacity(text.len() + 2);
    p.push('%');
    for c in text.chars() {
        if matches!(c, '%' | '_' | '!') {
            p.push('!');
        }
        p.push(c);
    }
    p.push('%');
    p
}

/// A `q=` text, prepared for each way a name can be matched: case-folded
/// for `LIKE`, quoted for an FTS5 phrase, or spelled out in every case variant.
struct NameSearch {
    text: String,
    lower: String,
    ascii: bool,
}

impl NameSearch {
    fn new(text: &str) -> Self {
        NameSearch {
            text: text.to_string(),
            lower: text.to_lowercase(),
            ascii: text.is_ascii(),
        }
    }

    /// Long enough for a trigram index (three characters, not bytes).
    fn trigrams(&self) -> bool {
        self.text.chars().nth(2).is_some()
    }

    /// An FTS5 phrase matching the text as a substring, every character
    /// literal (a double quote is doubled).
    fn phrase(&self) -> String {
        format!("\"{}\"", self.text.replace('"', "\"\""))
    }

    /// Every spelling of the text with each character in its lower, upper
    /// or own case: at most 3^n strings, used for texts under three characters.
    fn variants(&self) -> Vec<String> {
        let mut out = vec![String::new()];
        for c in self.text.chars() {
            let mut forms = vec![
                c.to_string(),
                c.to_lowercase().collect(),
                c.to_uppercase().collect(),
            ];
            forms.sort();
            forms.dedup();
            out = out
                .iter()
                .flat_map(|p| forms.iter().map(move |f| format!("{p}{f}")))
                .collect();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_patterns_escape_their_wildcards() {
        assert_eq!(like_pattern("50%_a!b\\"), "%50!%!_a!!b\\%");
    }

    #[test]
    fn short_texts_are_spelled_in_every_case() {
        let mut v = NameSearch::new("é1").variants();
        v.sort();
        assert_eq!(v, ["É1", "é1"]);
        assert!(!NameSearch::new("éa").trigrams());
        assert!(NameSearch::new("éab").trigrams());
        assert_eq!(NameSearch::new("a\"b").phrase(), "\"a\"\"b\"");
    }
}
