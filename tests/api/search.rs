//! `GET /api/files?q=`: a case-insensitive substring of the file name,
//! every character literal, with queries of any length, through the
//! trigram indexes (SQLite FTS5, PostgreSQL pg_trgm) and the scans that
//! answer what a trigram cannot.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::helpers::*;
use crate::local;

fn names(files: &[Value]) -> BTreeSet<String> {
    files
        .iter()
        .map(|f| f["file_name"].as_str().unwrap().to_string())
        .collect()
}

async fn search(app: &TestApp, q: &str) -> BTreeSet<String> {
    let q: String = url_escape(q);
    let hits = app.list_all("sam", &format!("&q={q}")).await;
    let set = names(&hits);
    assert_eq!(set.len(), hits.len(), "a file listed twice");
    set
}

fn url_escape(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn set(v: &[&str]) -> BTreeSet<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// Renames a file's row directly (as any writer of the table would): the
/// index must follow by itself.
async fn rename_row(app: &TestApp, id: &str, to: &str) {
    let key = if app.state.meta.backend() == "postgres" {
        format!("'{id}'")
    } else {
        format!("x'{}'", id.replace('-', ""))
    };
    app.exec_sql(&format!(
        "UPDATE user_files SET file_name = '{to}' WHERE id = {key}"
    ))
    .await;
}

local!(
    search_is_a_case_insensitive_literal_substring,
    |b| async move {
        let app = spawn_app(b).await;
        let all = [
            "Beach_Day.PNG",
            "ÉCOLE été.png",
            "Ωμέγα Σ.png",
            "Москва.png",
            "100%_done.png",
            "100 percent.png",
            "a_b.png",
            "axb.png",
            "x.png",
            "猫の写真.png",
        ];
        for (i, n) in all.iter().enumerate() {
            app.upload_ok("sam", n, png_bytes(900 + i)).await;
        }
        // Someone else's files never match.
        app.upload_ok("other", "beach_other.png", png_bytes(900))
            .await;

        let cases: &[(&str, &[&str])] = &[
            // three characters or more: the trigram index
            ("beach", &["Beach_Day.PNG"]),
            ("BEACH_d", &["Beach_Day.PNG"]),
            ("école", &["ÉCOLE été.png"]),
            ("ÉTÉ.P", &["ÉCOLE été.png"]),
            ("ΩΜΈΓΑ", &["Ωμέγα Σ.png"]),
            ("МОСКВА", &["Москва.png"]),
            ("猫の写", &["猫の写真.png"]),
            ("0%_", &["100%_done.png"]),
            ("a_b", &["a_b.png"]),
            ("0 p", &["100 percent.png"]),
            (".png", &all),
            ("nomatch", &[]),
            ("%%%", &[]),
            ("___", &[]),
            // one and two characters: read the user's rows
            ("%", &["100%_done.png"]),
            ("_", &["Beach_Day.PNG", "100%_done.png", "a_b.png"]),
            ("x", &["axb.png", "x.png"]),
            ("X.", &["x.png"]),
            ("é", &["ÉCOLE été.png"]),
            ("É", &["ÉCOLE été.png"]),
            ("ω", &["Ωμέγα Σ.png"]),
            ("σ", &["Ωμέγα Σ.png"]),
            ("мо", &["Москва.png"]),
            ("猫", &["猫の写真.png"]),
            ("%_", &["100%_done.png"]),
            ("zz", &[]),
        ];
        for (q, want) in cases {
            assert_eq!(search(&app, q).await, set(want), "q={q:?}");
        }
    }
);

local!(paging_a_search_visits_every_match_once, |b| async move {
    let app = spawn_app(b).await;
    // Many matches (over 10 × the page at limit=2, so SQLite walks
    // the sort order's index) and few ones (so it starts from the trigram
    // index), with equal sizes to exercise the id tie-break.
    let mut clips = BTreeSet::new();
    let mut rare = BTreeSet::new();
    for i in 0..130 {
        let name = if i % 20 == 7 {
            format!("Rare_Clip_{i:03}.png")
        } else {
            format!("clip_{i:03}.png")
        };
        if name.contains("Rare") {
            rare.insert(name.clone());
        }
        clips.insert(name.clone());
        app.upload_ok("sam", &name, png_bytes(1000 + (i % 7))).await;
    }
    for i in 0..12 {
        app.upload_ok("sam", &format!("other_{i}.png"), png_bytes(1000))
            .await;
    }
    for (q, want) in [("CLIP", &clips), ("rare_", &rare), ("p_", &clips)] {
        for sort in ["upload_date", "file_name", "file_size"] {
            for order in ["asc", "desc"] {
                let mut seen = Vec::new();
                let mut cursor: Option<String> = None;
                loop {
                    let mut path = format!("/api/files?limit=2&q={q}&sort={sort}&order={order}");
                    if let Some(c) = &cursor {
                        path.push_str(&format!("&cursor={c}"));
                    }
                    let (s, v) = app.get_json("sam", &path).await;
                    assert_eq!(s, 200, "{v}");
                    let page = v["files"].as_array().unwrap();
                    assert!(page.len() <= 2);
                    seen.extend(page.iter().cloned());
                    match v["next_cursor"].as_str() {
                        Some(c) => cursor = Some(c.to_string()),
                        None => break,
                    }
                }
                let got = names(&seen);
                assert_eq!(got.len(), seen.len(), "q={q} {sort} {order}: a file twice");
                assert_eq!(&got, want, "q={q} {sort} {order}");
                // In order across pages (names and sizes; ties in size are
                // broken by id, which this does not look at).
                if sort != "upload_date" {
                    let keys: Vec<String> = seen
                        .iter()
                        .map(|f| match sort {
                            "file_size" => format!("{:020}", f["file_size"].as_i64().unwrap()),
                            _ => f["file_name"].as_str().unwrap().to_string(),
                        })
                        .collect();
                    let mut sorted = keys.clone();
                    sorted.sort();
                    if order == "desc" {
                        sorted.reverse();
                    }
                    assert_eq!(keys, sorted, "q={q} {sort} {order}: out of order");
                }
            }
        }
    }
});

local!(deleted_and_renamed_files_leave_the_index, |b| async move {
    let app = spawn_app(b).await;
    let one = app
        .upload_ok("sam", "holiday_one.png", png_bytes(1000))
        .await;
    let two = app
        .upload_ok("sam", "holiday_two.png", png_bytes(1001))
        .await;
    app.upload_ok("sam", "holiday_three.png", png_bytes(1002))
        .await;
    assert_eq!(search(&app, "holiday").await.len(), 3);

    let r = app
        .client
        .delete(app.url(&format!("/api/files/{}", one["id"].as_str().unwrap())))
        .bearer_auth(token("sam"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(
        search(&app, "holiday").await,
        set(&["holiday_two.png", "holiday_three.png"])
    );

    rename_row(&app, two["id"].as_str().unwrap(), "Winter Trip.png").await;
    assert_eq!(search(&app, "holiday").await, set(&["holiday_three.png"]));
    assert_eq!(search(&app, "winter t").await, set(&["Winter Trip.png"]));
    assert_eq!(search(&app, "ho").await, set(&["holiday_three.png"]));

    if app.state.meta.backend() == "sqlite" {
        // The index itself holds only what is left.
        let n = app.sql_scalar("SELECT count(*) FROM user_file_names_fts WHERE user_file_names_fts MATCH '\"holiday\"'").await;
        assert_eq!(n, 1);
    }

    // Deleting the user takes every entry with it.
    let r = app
        .client
        .delete(app.url("/api/admin/users/sam"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert!(search(&app, "holiday").await.is_empty());
    assert!(search(&app, "winter").await.is_empty());
    if app.state.meta.backend() == "sqlite" {
        let n = app.sql_scalar("SELECT count(*) FROM user_file_names_fts WHERE user_file_names_fts MATCH '\"png\"'",
        )
        .await;
        assert_eq!(n, 0);
        assert_eq!(
            app.sql_scalar("SELECT count(*) FROM user_file_names").await,
            0
        );
    }
});
