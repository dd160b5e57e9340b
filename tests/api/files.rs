//! Upload, list, details, favourite, tags, delete: the seed's checklist.

use serde_json::{json, Value};

use crate::both;
use crate::helpers::*;

both!(upload_list_get_delete, |b| async move {
    let app = spawn_app(b).await;
    let data = png_bytes(100_000);
    let f = app.upload_ok("alice", "holiday.png", data.clone()).await;
    assert_eq!(f["file_name"], "holiday.png");
    assert_eq!(f["file_type"], "image");
    assert_eq!(f["mime_type"], "image/png");
    assert_eq!(f["file_size"], 100_000);
    assert_eq!(f["sha256"], sha256_hex(&data));
    assert_eq!(f["is_favorite"], false);
    assert_eq!(f["tags"], json!([]));
    assert!(f["upload_date"].as_str().unwrap().ends_with('Z'));
    let id = f["id"].as_str().unwrap().to_string();

    let (s, got) = app.get_json("alice", &format!("/api/files/{id}")).await;
    assert_eq!(s, 200);
    assert_eq!(got, f);

    let u = app.usage("alice").await;
    assert_eq!(u["total_bytes"], 100_000);
    assert_eq!(u["file_count"], 1);
    assert_eq!(u["by_type"]["image"], json!({"bytes": 100_000, "count": 1}));
    for t in ["video", "audio", "scene", "project"] {
        assert_eq!(u["by_type"][t], json!({"bytes": 0, "count": 0}));
    }

    // On disk under the SPEC layout, named by id, not by the client's name.
    let blobs = app.blobs_on_disk().await;
    assert_eq!(blobs, vec![format!("alice/images/{id}.png")]);

    let r = app
        .client
        .delete(app.url(&format!("/api/files/{id}")))
        .bearer_auth(token("alice"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let u = app.usage("alice").await;
    assert_eq!(u["total_bytes"], 0);
    assert_eq!(u["file_count"], 0);
    assert!(app.blobs_on_disk().await.is_empty());
    let (s, e) = app.get_json("alice", &format!("/api/files/{id}")).await;
    assert_eq!(s, 404);
    assert_eq!(e["error"]["code"], "not_found");
});

// Sizes around the volume writer's 4 KiB alignment and 256 KiB buffers
// (direct I/O; the tail of a file is written through the page cache) come
// back byte for byte, with the right sha256, on every backend.
both!(unaligned_sizes_round_trip, |b| async move {
    let app = spawn_app(b).await;
    for n in [
        4095,
        4096,
        4097,
        256 * 1024 - 1,
        256 * 1024 + 1,
        (1 << 20) + 1,
    ] {
        let data = png_bytes(n);
        let f = app.upload_ok("alice", "x.png", data.clone()).await;
        assert_eq!(f["file_size"], n, "{n}");
        assert_eq!(f["sha256"], sha256_hex(&data), "{n}");
        let id = f["id"].as_str().unwrap();
        let r = app.get("alice", &format!("/api/files/{id}/download")).await;
        assert_eq!(r.status(), 200);
        assert!(r.bytes().await.unwrap() == data, "{n}");
    }
    assert!(app.temp_files().await.is_empty());
    app.assert_consistent("alice").await;
});

both!(declared_fields_are_stored, |b| async move {
    let app = spawn_app(b).await;
    let r = app
        .upload_with(
            "bob",
            "s.json",
            br#"{"scene":{"objects":[]}}"#.to_vec(),
            &[
                ("file_type", "scene"),
                ("package_name", "starter"),
                ("tags", " intro, ,demo,intro "),
            ],
        )
        .await;
    assert_eq!(r.status(), 201);
    let f: Value = r.json().await.unwrap();
    assert_eq!(f["file_type"], "scene");
    assert_eq!(f["package_name"], "starter");
    assert_eq!(f["tags"], json!(["intro", "demo"]));
    // JSON without a declared type is a project.
    let f2 = app.upload_ok("bob", "p.json", b"[1,2,3]".to_vec()).await;
    assert_eq!(f2["file_type"], "project");
    let zip = b"PK\x03\x04\x14\x00\x00\x00\x08\x00rest-of-a-zip".to_vec();
    let f3 = app.upload_ok("bob", "p.zip", zip).await;
    assert_eq!(f3["file_type"], "project");
    assert_eq!(f3["mime_type"], "application/zip");
});

both!(favourites_and_tags, |b| async move {
    let app = spawn_app(b).await;
    let f = app.upload_ok("carol", "a.png", png_bytes(1000)).await;
    let id = f["id"].as_str().unwrap();
    let fav = |body: Option<Value>| {
        let mut rb = app
            .client
            .post(app.url(&format!("/api/files/{id}/favorite")))
            .bearer_auth(token("carol"));
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        rb.send()
    };
    let v: Value = fav(None).await.unwrap().json().await.unwrap();
    assert_eq!(v["is_favorite"], true);
    let v: Value = fav(None).await.unwrap().json().await.unwrap();
    assert_eq!(v["is_favorite"], false);
    let v: Value = fav(Some(json!({"is_favorite": true})))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["is_favorite"], true);
    let v: Value = fav(Some(json!({"is_favorite": true})))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["is_favorite"], true);
    let r = fav(Some(json!({"is_favorite": "yes"}))).await.unwrap();
    assert_eq!(r.status(), 400);

    let put = |tags: Value| {
        app.client
            .put(app.url(&format!("/api/files/{id}/tags")))
            .bearer_auth(token("carol"))
            .json(&json!({"tags": tags}))
            .send()
    };
    let v: Value = put(json!([" b ", "a", "", "b"]))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["tags"], json!(["b", "a"]));
    let too_many: Vec<String> = (0..33).map(|i| format!("t{i}")).collect();
    let r = put(json!(too_many)).await.unwrap();
    assert_eq!(r.status(), 400);
    let r = put(json!(["x".repeat(65)])).await.unwrap();
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "invalid_request");
    let r = put(json!(["y".repeat(64)])).await.unwrap();
    assert_eq!(r.status(), 200);

    // Filters.
    app.upload_ok("carol", "b.png", png_bytes(2000)).await;
    let favs = app.list_all("carol", "&favorite=true").await;
    assert_eq!(favs.len(), 1);
    let tagged = app
        .list_all("carol", &format!("&tag={}", "y".repeat(64)))
        .await;
    assert_eq!(tagged.len(), 1);
    assert_eq!(tagged[0]["id"], json!(id));
});

both!(listing_filters_sorts_and_pages, |b| async move {
    let app = spawn_app(b).await;
    let names = [
        "Beach.PNG",
        "alpha.png",
        "Zebra_100%.png",
        "movie.json",
        "beach-2.png",
    ];
    for (i, n) in names.iter().enumerate() {
        let data = if n.ends_with(".json") {
            b"{}".to_vec()
        } else {
            png_bytes(1000 + i * 10)
        };
        app.upload_ok("dave", n, data).await;
    }
    // Search is a case-insensitive substring; % is literal.
    let hits = app.list_all("dave", "&q=BEACH").await;
    assert_eq!(hits.len(), 2);
    let hits = app.list_all("dave", "&q=100%25").await;
    assert_eq!(hits.len(), 1);
    let hits = app.list_all("dave", "&q=_").await;
    assert_eq!(hits.len(), 1, "underscore is literal");
    let imgs = app.list_all("dave", "&type=image").await;
    assert_eq!(imgs.len(), 4);
    let projects = app.list_all("dave", "&type=project").await;
    assert_eq!(projects.len(), 1);

    let by_size = app.list_all("dave", "&sort=file_size&order=asc").await;
    let sizes: Vec<i64> = by_size
        .iter()
        .map(|f| f["file_size"].as_i64().unwrap())
        .collect();
    let mut sorted = sizes.clone();
    sorted.sort();
    assert_eq!(sizes, sorted);
    let by_name = app.list_all("dave", "&sort=file_name&order=desc").await;
    let ns: Vec<String> = by_name
        .iter()
        .map(|f| f["file_name"].as_str().unwrap().to_string())
        .collect();
    let mut sorted = ns.clone();
    sorted.sort();
    sorted.reverse();
    assert_eq!(ns, sorted);

    // Paging with limit 2 visits each file exactly once, newest first.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut p = "/api/files?limit=2".to_string();
        if let Some(c) = &cursor {
            p.push_str(&format!("&cursor={c}"));
        }
        let (s, v) = app.get_json("dave", &p).await;
        assert_eq!(s, 200);
        let page = v["files"].as_array().unwrap();
        assert!(page.len() <= 2);
        seen.extend(page.iter().map(|f| f["id"].as_str().unwrap().to_string()));
        // A file added while paging does not disturb the walk.
        if seen.len() == 2 {
            app.upload_ok("dave", "late.png", png_bytes(500)).await;
        }
        match v["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    let mut uniq = seen.clone();
    uniq.sort();
    uniq.dedup();
    assert_eq!(uniq.len(), seen.len(), "no file twice");
    assert_eq!(
        seen.len(),
        5,
        "every original file once; the late one sorts before the cursor"
    );

    // Bad parameters are 400 with the error shape.
    for q in [
        "sort=size",
        "order=up",
        "limit=abc",
        "type=pdf",
        "favorite=maybe",
        "cursor=%%%",
    ] {
        let (s, v) = app.get_json("dave", &format!("/api/files?{q}")).await;
        assert_eq!(s, 400, "{q}");
        assert_eq!(v["error"]["code"], "invalid_request");
    }
    // limit above 200 counts as 200.
    let (s, _) = app.get_json("dave", "/api/files?limit=5000").await;
    assert_eq!(s, 200);
});
