//! Restore does not trust its archive: a backup of two users, rewritten so
//! that one row points into the other user's directory, or with a blob no
//! row owns, a thumbnail no row owns, or changed bytes, is refused whole —
//! the target keeps no row and no file — while the same archive untouched
//! restores.

use std::path::{Path, PathBuf};

use serde_json::Value;
use stowage::ops::{
    backup::{self, CreateOptions},
    progress::Progress,
};

use crate::helpers::*;
use crate::local;
use crate::media::wait_for;

/// The entries of an uncompressed archive, in order.
fn read_entries(path: &Path) -> Vec<(String, Vec<u8>)> {
    use std::io::Read;
    let mut ar = tar::Archive::new(std::fs::File::open(path).unwrap());
    ar.entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let name = String::from_utf8(e.path_bytes().to_vec()).unwrap();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            (name, data)
        })
        .collect()
}

fn write_entries(path: &Path, entries: &[(String, Vec<u8>)]) {
    let mut b = tar::Builder::new(std::fs::File::create(path).unwrap());
    for (name, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o600);
        h.set_mtime(now());
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, name, &data[..]).unwrap();
    }
    b.finish().unwrap();
}

fn lines(data: &[u8]) -> Vec<Value> {
    std::str::from_utf8(data)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn unlines(v: &[Value]) -> Vec<u8> {
    let mut out = Vec::new();
    for l in v {
        out.extend(serde_json::to_vec(l).unwrap());
        out.push(b'\n');
    }
    out
}

/// An archive being rewritten: its entries, with the rows and the manifest
/// parsed, so a change can keep the manifest consistent when it wants to.
struct Archive {
    entries: Vec<(String, Vec<u8>)>,
}

impl Archive {
    fn open(path: &Path) -> Archive {
        Archive {
            entries: read_entries(path),
        }
    }

    fn get(&mut self, name: &str) -> &mut Vec<u8> {
        &mut self
            .entries
            .iter_mut()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no entry {name}"))
            .1
    }

    fn rows(&mut self) -> Vec<Value> {
        lines(self.get("db/user_files.jsonl"))
    }

    fn set_rows(&mut self, rows: &[Value]) {
        *self.get("db/user_files.jsonl") = unlines(rows);
        self.resum("db/user_files.jsonl");
    }

    /// Rewrites the manifest line of `path` to its current size and sum.
    fn resum(&mut self, path: &str) {
        let data = self.get(path).clone();
        let mut m = lines(self.get("manifest.jsonl"));
        let line = m
            .iter_mut()
            .find(|l| l["path"] == path)
            .unwrap_or_else(|| panic!("{path} not in the manifest"));
        line["size"] = data.len().into();
        line["sha256"] = sha256_hex(&data).into();
        *self.get("manifest.jsonl") = unlines(&m);
    }

    /// Renames an entry, in the manifest too.
    fn rename(&mut self, from: &str, to: &str) {
        self.entries.iter_mut().find(|(n, _)| n == from).unwrap().0 = to.to_string();
        let mut m = lines(self.get("manifest.jsonl"));
        for l in m.iter_mut().filter(|l| l["path"] == from) {
            l["path"] = to.into();
        }
        *self.get("manifest.jsonl") = unlines(&m);
    }

    /// Adds a blob just before the manifest, listed in it like the others.
    fn add_blob(&mut self, key: &str, data: Vec<u8>, kind: &str) {
        let path = format!("blobs/{key}");
        let mut m = lines(self.get("manifest.jsonl"));
        let at = m.iter().position(|l| l["type"] == "summary").unwrap();
        m.insert(
            at,
            serde_json::json!({"type": "entry", "path": path, "kind": kind,
                "size": data.len(), "sha256": sha256_hex(&data)}),
        );
        *self.get("manifest.jsonl") = unlines(&m);
        let at = self.entries.len() - 1;
        self.entries.insert(at, (path, data));
    }

    fn save(&self, path: &Path) -> PathBuf {
        write_entries(path, &self.entries);
        path.to_path_buf()
    }
}

/// The target after a refused restore: no user, no row, no blob, nothing
/// left staged.
async fn assert_empty(app: &TestApp, what: &str) {
    assert!(
        app.state.meta.list_users().await.unwrap().is_empty(),
        "{what}: users restored"
    );
    assert!(
        app.state.meta.row_totals().await.unwrap().is_empty(),
        "{what}: rows restored"
    );
    assert_eq!(app.blobs_on_disk().await, Vec::<String>::new(), "{what}");
    assert_eq!(app.temp_files().await, Vec::<String>::new(), "{what}");
}

local!(restore_refuses_a_tampered_archive_whole, |b| async move {
    let app = spawn_app(b).await;
    // Two users, each with images that get thumbnails.
    let mut ids = Vec::new();
    for (user, n) in [("ta", 3), ("tb", 2)] {
        for i in 0..n {
            let f = app
                .upload_ok(user, &format!("{i}.png"), real_png(40 + i, 30))
                .await;
            ids.push((user, f["id"].as_str().unwrap().to_string()));
        }
    }
    for (user, id) in &ids {
        let f = wait_for(&app, user, id, "thumbnail_url", 30).await;
        assert!(f["thumbnail_url"].is_string(), "{f}");
    }
    let dest = app.dir.path().join("backups");
    let made = backup::create(
        &app.state,
        CreateOptions {
            dest: stowage::ops::backup::dest::Dest::Dir(dest.clone()),
            keep: None,
            keep_days: None,
            gzip: false,
            progress: Progress::off(),
        },
    )
    .await
    .unwrap();
    let work = app.dir.path().join("tampered");
    std::fs::create_dir_all(&work).unwrap();

    let mut cases: Vec<(&str, PathBuf)> = Vec::new();
    // (a) A row of ta whose file lies in tb's directory (blob moved along,
    // sums kept right): only its place betrays it.
    {
        let mut a = Archive::open(&made.path);
        let mut rows = a.rows();
        let row = rows.iter_mut().find(|r| r["user_id"] == "ta").unwrap();
        let old = row["file_path"].as_str().unwrap().to_string();
        let new = old.replacen("ta/", "tb/", 1);
        row["file_path"] = new.clone().into();
        a.set_rows(&rows);
        a.rename(&format!("blobs/{old}"), &format!("blobs/{new}"));
        cases.push((
            "row in another user's directory",
            a.save(&work.join("a.tar")),
        ));
    }
    // (b) A blob no row references, in a user's image folder.
    {
        let mut a = Archive::open(&made.path);
        let key = format!("ta/images/{}.png", uuid::Uuid::new_v4());
        a.add_blob(&key, png_bytes(500), "file");
        cases.push(("blob without a row", a.save(&work.join("b.tar"))));
    }
    // (c) A thumbnail no row references.
    {
        let mut a = Archive::open(&made.path);
        let key = format!("tb/.thumbs/{}.jpg", uuid::Uuid::new_v4());
        a.add_blob(&key, b"\xff\xd8\xff\xe0 not really".to_vec(), "thumbnail");
        cases.push(("thumbnail without a row", a.save(&work.join("c.tar"))));
    }
    // (d) Changed bytes: the last file blob, with the manifest made to agree
    // (its row's sum still differs) ...
    {
        let mut a = Archive::open(&made.path);
        let rows = a.rows();
        let last = a
            .entries
            .iter()
            .rev()
            .find(|(n, _)| {
                rows.iter()
                    .any(|r| format!("blobs/{}", r["file_path"].as_str().unwrap()) == *n)
            })
            .unwrap()
            .0
            .clone();
        let data = a.get(&last);
        let i = data.len() - 10;
        data[i] ^= 0xff;
        a.resum(&last);
        cases.push(("file bytes changed", a.save(&work.join("d1.tar"))));
    }
    // ... and the last thumbnail, whose only sum is in the manifest (checked
    // when the manifest, the last entry, arrives).
    {
        let mut a = Archive::open(&made.path);
        let last = a
            .entries
            .iter()
            .rev()
            .find(|(n, _)| n.contains("/.thumbs/"))
            .unwrap()
            .0
            .clone();
        let data = a.get(&last);
        let i = data.len() / 2;
        data[i] ^= 0xff;
        cases.push(("thumbnail bytes changed", a.save(&work.join("d2.tar"))));
    }

    for (what, path) in &cases {
        let target = spawn_app(b).await;
        let err = backup::restore(&target.state, path, Progress::off())
            .await
            .expect_err(what);
        eprintln!("{what}: refused: {err:#}");
        assert_empty(&target, what).await;
    }

    // The untouched archive, rewritten the same way, restores whole.
    let same = Archive::open(&made.path).save(&work.join("same.tar"));
    let target = spawn_app(b).await;
    let rep = backup::restore(&target.state, &same, Progress::off())
        .await
        .unwrap();
    assert_eq!(rep.files, 5);
    assert_eq!(rep.thumbnails, 5);
    assert_eq!(target.blobs_on_disk().await.len(), 10);
    for (user, id) in &ids {
        let r = target
            .get(user, &format!("/api/files/{id}/thumbnail"))
            .await;
        assert_eq!(r.status(), 200);
    }
    for user in ["ta", "tb"] {
        target.assert_consistent(user).await;
    }
});
