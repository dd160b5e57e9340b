//! Thumbnails and media metadata, produced by the job queue after upload,
//! with real images (encoded here) and real ffmpeg clips.

use std::{path::Path, process::Command, time::Duration};

use serde_json::Value;

use crate::both;
use crate::helpers::*;

/// Polls the file until `field` is set (or gives up after `secs`).
pub(crate) async fn wait_for(app: &TestApp, user: &str, id: &str, field: &str, secs: u64) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let (_, f) = app.get_json(user, &format!("/api/files/{id}")).await;
        if !f[field].is_null() || std::time::Instant::now() > deadline {
            return f;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn ffmpeg_available() -> bool {
    let ok = Command::new("ffmpeg")
        .arg("-version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok && std::env::var("STOWAGE_REQUIRE_FFMPEG").as_deref() == Ok("1") {
        panic!("ffmpeg is required (STOWAGE_REQUIRE_FFMPEG=1); scripts/test.sh installs it");
    }
    ok
}

fn ffmpeg(args: &[&str], out: &Path) -> Vec<u8> {
    let st = Command::new("ffmpeg")
        .args(["-v", "error", "-y"])
        .args(args)
        .arg(out)
        .status()
        .unwrap();
    assert!(st.success(), "ffmpeg {args:?}");
    std::fs::read(out).unwrap()
}

async fn thumbnail_dims(app: &TestApp, user: &str, f: &Value) -> (u32, u32) {
    let url = f["thumbnail_url"].as_str().expect("thumbnail ready");
    let r = app.get(user, url).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "image/jpeg");
    assert!(r.headers()["cache-control"]
        .to_str()
        .unwrap()
        .contains("max-age"));
    let bytes = r.bytes().await.unwrap();
    let img = image::load_from_memory(&bytes).expect("thumbnail decodes");
    (img.width(), img.height())
}

both!(image_thumbnail_and_resolution, |b| async move {
    let app = spawn_app(b).await;
    let f = app.upload_ok("img", "wide.png", real_png(1200, 600)).await;
    assert!(f["thumbnail_url"].is_null(), "not ready at upload time");
    let id = f["id"].as_str().unwrap();
    let f = wait_for(&app, "img", id, "thumbnail_url", 30).await;
    assert_eq!(f["resolution"], "1200x600");
    assert_eq!(f["thumbnail_url"], format!("/api/files/{id}/thumbnail"));
    assert_eq!(thumbnail_dims(&app, "img", &f).await, (320, 160));
    // Another user cannot see it; thumbnails are not counted against quota.
    assert_eq!(
        app.get("other", &format!("/api/files/{id}/thumbnail"))
            .await
            .status(),
        404
    );
    let u = app.usage("img").await;
    assert_eq!(u["total_bytes"], f["file_size"]);
    // Through a signed link too.
    let v: Value = app
        .client
        .post(app.url(&format!("/api/files/{id}/signed-url")))
        .bearer_auth(token("img"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let link = format!("{}/thumbnail", v["url"].as_str().unwrap());
    assert_eq!(app.get_public(&link).await.status(), 200);
    // Deleted with its file.
    assert!(app
        .blobs_on_disk()
        .await
        .iter()
        .any(|p| p.contains(".thumbs/")));
    app.client
        .delete(app.url(&format!("/api/files/{id}")))
        .bearer_auth(token("img"))
        .send()
        .await
        .unwrap();
    assert!(
        app.blobs_on_disk().await.is_empty(),
        "{:?}",
        app.blobs_on_disk().await
    );
});

both!(video_and_audio_metadata_with_ffmpeg, |b| async move {
    if !ffmpeg_available() {
        eprintln!("skipping: ffmpeg not installed");
        return;
    }
    let app = spawn_app(b).await;
    let dir = tempfile::tempdir().unwrap();
    let mp4 = ffmpeg(
        &[
            "-f",
            "lavfi",
            "-i",
            "testsrc=duration=3:size=640x360:rate=25",
            "-pix_fmt",
            "yuv420p",
        ],
        &dir.path().join("clip.mp4"),
    );
    let f = app.upload_ok("vid", "clip.mp4", mp4).await;
    assert_eq!(f["file_type"], "video");
    let id = f["id"].as_str().unwrap();
    let f = wait_for(&app, "vid", id, "thumbnail_url", 60).await;
    assert_eq!(f["resolution"], "640x360");
    assert_eq!(f["duration"], "00:00:03");
    assert_eq!(thumbnail_dims(&app, "vid", &f).await, (320, 180));

    let wav = ffmpeg(
        &["-f", "lavfi", "-i", "sine=frequency=440:duration=2"],
        &dir.path().join("tone.wav"),
    );
    let a = app.upload_ok("vid", "tone.wav", wav).await;
    assert_eq!(a["file_type"], "audio");
    let a = wait_for(&app, "vid", a["id"].as_str().unwrap(), "duration", 60).await;
    assert_eq!(a["duration"], "00:00:02");
    assert!(a["thumbnail_url"].is_null());
});

both!(avif_thumbnail_and_resolution, |b| async move {
    if !ffmpeg_available() {
        eprintln!("skipping: ffmpeg not installed");
        return;
    }
    let app = spawn_app(b).await;
    let dir = tempfile::tempdir().unwrap();
    let avif = ffmpeg(
        &[
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=960x540",
            "-frames:v",
            "1",
            "-c:v",
            "libaom-av1",
            "-still-picture",
            "1",
        ],
        &dir.path().join("still.avif"),
    );
    let f = app.upload_ok("avif", "still.avif", avif).await;
    assert_eq!(f["file_type"], "image");
    assert_eq!(f["mime_type"], "image/avif");
    let id = f["id"].as_str().unwrap();
    let f = wait_for(&app, "avif", id, "thumbnail_url", 60).await;
    assert_eq!(f["resolution"], "960x540");
    assert_eq!(thumbnail_dims(&app, "avif", &f).await, (320, 180));
});

both!(hostile_media_fails_the_job_not_the_file, |b| async move {
    let app = spawn_app(b).await;
    // A PNG whose header claims 100,000 x 100,000 pixels.
    let mut bomb = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend(100_000u32.to_be_bytes());
    ihdr.extend(100_000u32.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]);
    let crc = crc32(&ihdr);
    bomb.extend(13u32.to_be_bytes());
    bomb.extend(&ihdr);
    bomb.extend(crc.to_be_bytes());
    bomb.extend(b"\0\0\0\0IEND\xaeB`\x82");
    let f1 = app.upload_ok("evil", "bomb.png", bomb.clone()).await;
    // Truncated JPEG.
    let mut jpg = std::io::Cursor::new(Vec::new());
    image::RgbImage::from_fn(640, 480, |x, y| image::Rgb([x as u8, y as u8, 7]))
        .write_to(&mut jpg, image::ImageFormat::Jpeg)
        .unwrap();
    let jpg = jpg.into_inner();
    let f2 = app
        .upload_ok("evil", "cut.jpg", jpg[..jpg.len() / 3].to_vec())
        .await;
    // Garbage that starts like an MP4.
    let mut mp4 = b"\0\0\0\x18ftypmp42\0\0\0\0mp42isom".to_vec();
    mp4.extend(png_bytes(50_000));
    let f3 = app.upload_ok("evil", "junk.mp4", mp4.clone()).await;
    assert_eq!(f3["file_type"], "video");
    // An AVIF brand in front of garbage.
    let mut avif = b"\0\0\0\x18ftypavif\0\0\0\0avifmif1".to_vec();
    avif.extend(png_bytes(20_000));
    let f4 = app.upload_ok("evil", "junk.avif", avif.clone()).await;
    assert_eq!(f4["mime_type"], "image/avif");

    // Every job ends failed with a reason the admin can read.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let jobs = loop {
        let v: Value = app.admin_json("/api/admin/jobs/failed").await;
        let jobs = v["jobs"].as_array().unwrap().clone();
        if jobs.len() >= 4 || std::time::Instant::now() > deadline {
            break jobs;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(jobs.len(), 4, "{jobs:?}");
    assert!(jobs
        .iter()
        .all(|j| j["last_error"].as_str().is_some_and(|e| !e.is_empty())));
    assert!(
        jobs.iter()
            .any(|j| j["last_error"].as_str().unwrap().contains("too large")),
        "{jobs:?}"
    );
    // The files stay stored and downloadable, without thumbnails.
    assert!(
        jobs.iter()
            .any(|j| j["last_error"].as_str().unwrap().contains("AVIF")),
        "{jobs:?}"
    );
    for (f, bytes) in [(&f1, &bomb), (&f3, &mp4), (&f4, &avif)] {
        let id = f["id"].as_str().unwrap();
        let r = app.get("evil", &format!("/api/files/{id}/download")).await;
        assert_eq!(r.status(), 200);
        assert_eq!(&r.bytes().await.unwrap().to_vec(), bytes);
        let (_, now) = app.get_json("evil", &format!("/api/files/{id}")).await;
        assert!(now["thumbnail_url"].is_null());
    }
    assert_eq!(
        app.get(
            "evil",
            &format!("/api/files/{}/thumbnail", f2["id"].as_str().unwrap())
        )
        .await
        .status(),
        404
    );
});

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}
