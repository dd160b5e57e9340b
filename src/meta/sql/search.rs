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
//! - **MySQL/MariaDB**: no trigram index, so a table of their own
//!   (`user_file_trigrams`, migration 0013, kept by triggers): a row per
//!   distinct three-character piece of each lower-cased name, keyed
//!   `(user_id, piece, file id)`. For three characters or more the store
//!   counts the user's names holding each of the text's pieces (up to
//!   [`TRIGRAM_COMMON`]): a piece no name holds means no match; else the
//!   files holding the rarest piece and the next two are the candidates
//!   ([`NameMatch::Ids`]), looked up by id, tested and sorted. When every
//!   piece is common, or under three characters, the user's name index
//!   `(user_id, file_name, id)` is read (never a row) for at most
//!   `10 × limit` matches: fewer, and they are all the matches, looked up by
//!   id and sorted; that many (dense hits), and `LOWER(file_name) LIKE` is
//!   tested on each row the sort order's index yields, which fills a page
//!   soon. Testing every row of a rare text through the sort order's index
//!   would look up each row by its primary key: a minute at a million
//!   files, against about a third of a second for the name index and
//!   milliseconds for the pieces (docs/benchmarks.md).

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
    /// The ids of every matching file and perhaps a few more, few in all,
    /// already read from the name index or the trigram table
    /// (MySQL/MariaDB; SQLite under three characters), with the name test
    /// that decides: the listing looks them up by primary key, tests their
    /// names (a candidate of the trigram table may not hold the text, and
    /// a file may have been renamed since) and sorts them.
    Ids {
        ids: Vec<Uuid>,
        sql: String,
        args: Vec<Arg>,
        /// Where the ids were read, for [`NameMatch::route`].
        from: &'static str,
    },
}

impl NameMatch {
    /// How the names are matched, in words (`listing_plan`'s first line).
    pub(crate) fn route(&self) -> &'static str {
        match self {
            NameMatch::Test { .. } => "each row the listing reads is tested",
            NameMatch::Hits { .. } => "the trigram index (FTS5) names the files",
            NameMatch::Ids { from, .. } => from,
        }
    }
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
        // Too short for trigrams: the name index first.
        Engine::Sqlite if t.ascii => name_index_match(s, user_id, like_test(&t), limit).await?,
        Engine::Sqlite => name_index_match(s, user_id, case_spellings(&t), limit).await?,
        Engine::MySql if t.trigrams() => trigram_table_match(s, user_id, &t, limit).await?,
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
    ids_or_dense(&rows, cap, (sql, args), "the name index names the files")
}

/// The ids found (column `id`) with the name test that decides, or the
/// row-by-row test when `cap` of them or more were found: dense matches
/// fill a page sooner along the sort order's index.
fn ids_or_dense(
    rows: &[super::engine::Row],
    cap: i64,
    (sql, args): (String, Vec<Arg>),
    from: &'static str,
) -> MetaResult<NameMatch> {
    if i64::try_from(rows.len()).unwrap_or(i64::MAX) >= cap {
        return Ok(NameMatch::Test { sql, args });
    }
    let ids = rows
        .iter()
        .map(|r| r.get::<Uuid>("id"))
        .collect::<Result<_, _>>()?;
    Ok(NameMatch::Ids {
        ids,
        sql,
        args,
        from,
    })
}

/// Most of a text's pieces looked up in the trigram table: any of them
/// narrow the search soundly, and a longer text is rare already.
const MAX_PIECES: usize = 16;
/// Most of a user's names counted for one piece: a piece held by this many
/// does not narrow the search enough to beat the name index. Every piece's
/// count reads up to this many entries, so it is the cost of a dense text
/// before the name index: at 2,048, three pieces cost a `q=beach` (10 % of
/// 100,000 names) about 5 ms more on MariaDB (docs/benchmarks.md).
const TRIGRAM_COMMON: i64 = 512;
/// Pieces beside the rarest that a candidate must hold too, each looked up
/// by primary key for each candidate.
const EXTRA_PIECES: usize = 2;

/// MySQL/MariaDB, a text of three characters or more: the candidates from
/// the trigram table (migration 0013), or the name index when each of the
/// text's pieces is common.
async fn trigram_table_match(
    s: &SqlStore,
    user: &str,
    t: &NameSearch,
    limit: u32,
) -> MetaResult<NameMatch> {
    let pieces = t.pieces(MAX_PIECES);
    let count = |i: usize| {
        format!(
            "SELECT CAST({i} AS SIGNED) AS k, CAST(COUNT(*) AS SIGNED) AS n FROM \
             (SELECT 1 FROM user_file_trigrams WHERE user_id = ? AND tri = ? LIMIT ?) AS c{i}"
        )
    };
    let sql = (0..pieces.len()).map(count).collect::<Vec<_>>();
    let mut q = query(sql.join(" UNION ALL "));
    for p in &pieces {
        q = q.bind(user).bind(p.clone()).bind(TRIGRAM_COMMON);
    }
    let mut counts = Vec::with_capacity(pieces.len());
    for r in q.fetch_all(s.db()).await? {
        let k = usize::try_from(r.get::<i64>("k")?).unwrap_or(usize::MAX);
        counts.push((r.get::<i64>("n")?, k));
    }
    counts.sort();
    let (sql, args) = like_test(t);
    let rarest = match counts.first() {
        Some(&(0, _)) => {
            return Ok(NameMatch::Ids {
                ids: Vec::new(),
                sql,
                args,
                from: "the trigram table: no name holds one of the text's pieces",
            })
        }
        Some(&(n, k)) if n < TRIGRAM_COMMON => k,
        _ => return name_index_match(s, user, (sql, args), limit).await,
    };
    let cap = dense_cap(limit);
    let mut find = String::from(
        "SELECT a.file_id AS id FROM user_file_trigrams a WHERE a.user_id = ? AND a.tri = ?",
    );
    let extra: Vec<usize> = counts[1..].iter().take(EXTRA_PIECES).map(|c| c.1).collect();
    for j in 0..extra.len() {
        find.push_str(&format!(
            " AND EXISTS (SELECT 1 FROM user_file_trigrams b{j} WHERE b{j}.user_id = a.user_id \
             AND b{j}.tri = ? AND b{j}.file_id = a.file_id)"
        ));
    }
    find.push_str(" LIMIT ?");
    let mut q = query(find).bind(user).bind(pieces[rarest].clone());
    for k in extra {
        q = q.bind(pieces[k].clone());
    }
    let rows = q.bind(cap).fetch_all(s.db()).await?;
    ids_or_dense(
        &rows,
        cap,
        (sql, args),
        "the trigram table names the candidates",
    )
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

    /// The distinct three-character pieces of the case-folded text, as
    /// bytes (as `user_file_trigrams.tri` holds them), at most `max`.
    fn pieces(&self, max: usize) -> Vec<Vec<u8>> {
        let chars: Vec<char> = self.lower.chars().collect();
        let mut out: Vec<Vec<u8>> = Vec::new();
        for w in chars.windows(3) {
            let p = w.iter().collect::<String>().into_bytes();
            if !out.contains(&p) {
                out.push(p);
                if out.len() == max {
                    break;
                }
            }
        }
        out
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

    #[test]
    fn pieces_are_the_distinct_trigrams_of_the_folded_text() {
        let p = |t: &str, max| {
            NameSearch::new(t)
                .pieces(max)
                .into_iter()
                .map(|b| String::from_utf8(b).unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(p("AbAbA", 16), ["aba", "bab"]);
        assert_eq!(p("ÉtÉ!", 16), ["été", "té!"]);
        assert_eq!(p("ab", 16), Vec::<String>::new());
        assert_eq!(p("abcdef", 2), ["abc", "bcd"]);
    }
}
