//! Real clients (tus-js-client, tuspy) whose connection is cut: they resume
//! from the server's offset.

use super::*;

// tus-js-client, one PATCH: aborted after ~20 MiB (connection cut), then a
// second run resumes from the stored URL.
both!(tus_js_abort_then_resume, |b| async move {
    require_clients();
    let app = spawn_app(b).await;
    let (file, data) = big_file(app.dir.path());
    let endpoint = app.url("/api/uploads");
    let first = run_client(&mut js_cmd(
        &endpoint,
        "gina",
        &file,
        &["--abort-after", &(20 * MIB).to_string()],
    ))
    .await;
    assert_eq!(first["aborted"], true, "{first}");
    let url = first["url"].as_str().unwrap().to_string();
    let second = run_client(&mut js_cmd(
        &endpoint,
        "gina",
        &file,
        &["--upload-url", &url],
    ))
    .await;
    let offsets: Vec<u64> = second["head_offsets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    // The abort cuts the connection after ~20 MiB have been handed to the
    // socket; on a fast loopback the server may already hold all of them
    // (and more) by then, so the resumed run may find the upload whole.
    // Either way it must resume from the server's offset, not from 0.
    assert!(
        offsets.iter().any(|o| *o > 0 && *o <= data.len() as u64),
        "resumed from the server's offset: {second}"
    );
    check_result(&app, "gina", &second, &data).await;
});

// tuspy with the checksum extension (sha1 per PATCH), 8 MiB chunks: the
// connection is cut mid-chunk; tuspy's run resumes from the server's offset.
both!(tuspy_checksum_connection_cut, |b| async move {
    require_clients();
    let app = spawn_app(b).await;
    let (file, data) = big_file(app.dir.path());
    let proxy = CutProxy::start(app.addr).await;
    proxy.cut_after(20 * MIB);
    let endpoint = format!("{}/api/uploads", proxy.base());
    let mut cmd = py_cmd(
        &endpoint,
        "ivan",
        &file,
        &["--checksum", "--chunk-size", &(8 * MIB).to_string()],
    );
    let client = tokio::spawn(async move { run_client(&mut cmd).await });
    while !proxy.is_down() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.up(app.addr);
    let res = client.await.unwrap();
    let offsets: Vec<u64> = res["resumed_offsets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    // With a checksum a cut PATCH keeps nothing: resumption is on a chunk boundary.
    assert!(
        offsets.iter().any(|o| *o > 0 && *o % (8 * MIB) == 0),
        "{res}"
    );
    check_result(&app, "ivan", &res, &data).await;
});
