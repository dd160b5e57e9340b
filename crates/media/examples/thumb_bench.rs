//! Throughput benchmark for `image_thumbnail`, driven by `bench/thumbs/run.sh`.
//!
//! ```text
//! thumb_bench gen <dir> <count>                     # 4000x3000 JPEG test photos
//! thumb_bench run <src_dir> <out_dir> <threads> <rounds> [jpeg|webp]
//! ```
//! `run` prints one TSV line: `tool threads images seconds images_per_sec`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use image::codecs::jpeg::JpegEncoder;
use image::{Rgb, RgbImage};
use stowage_media::{image_thumbnail, ThumbFormat, ThumbnailSpec};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("gen") if args.len() == 3 => gen(Path::new(&args[1]), args[2].parse().unwrap()),
        Some("run") if args.len() >= 5 => run(
            Path::new(&args[1]),
            Path::new(&args[2]),
            args[3].parse().unwrap(),
            args[4].parse().unwrap(),
            match args.get(5).map(String::as_str) {
                Some("webp") => ThumbFormat::WebP,
                _ => ThumbFormat::Jpeg,
            },
        ),
        _ => {
            eprintln!("usage: thumb_bench gen <dir> <count> | run <src> <out> <threads> <rounds> [jpeg|webp]");
            std::process::exit(2);
        }
    }
}

/// A photo-like 4000x3000 image: smooth colour fields, some texture at several
/// frequencies, hard edges, and sensor-like noise, so entropy coding has real work.
fn photo(seed: u64) -> RgbImage {
    let (w, h) = (4000u32, 3000u32);
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut rand = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let phase = (seed % 17) as f32 * 0.37;
    RgbImage::from_fn(w, h, |x, y| {
        let (fx, fy) = (x as f32 / w as f32, y as f32 / h as f32);
        let r = rand();
        // Roughly Gaussian noise from three small uniforms, sigma about 4 levels.
        let noise = ((r & 0xF) + ((r >> 4) & 0xF) + ((r >> 8) & 0xF)) as f32 / 3.0 - 7.5;
        let texture = 18.0 * ((fx * 40.0 + phase).sin() * (fy * 31.0).cos())
            + 9.0 * ((fx * 170.0 + fy * 90.0).sin())
            + 5.0 * ((fx * 600.0).sin() * (fy * 450.0 + phase).sin());
        let edge = if ((x / 500) + (y / 400)) % 3 == 0 {
            25.0
        } else {
            0.0
        };
        let base_r = 200.0 * fx + 30.0;
        let base_g = 120.0 + 80.0 * (fy * 3.0 + phase).sin();
        let base_b = 220.0 * (1.0 - fy) + 20.0;
        let px = |v: f32| (v + texture + edge + noise).clamp(0.0, 255.0) as u8;
        Rgb([px(base_r), px(base_g), px(base_b)])
    })
}

fn gen(dir: &Path, count: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let next = AtomicUsize::new(0);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    break;
                }
                let img = photo(i as u64 + 1);
                let mut bytes = Vec::new();
                JpegEncoder::new_with_quality(&mut bytes, 90)
                    .encode_image(&img)
                    .unwrap();
                std::fs::write(dir.join(format!("photo{i:03}.jpg")), bytes).unwrap();
            });
        }
    });
}

fn run(src: &Path, out: &Path, threads: usize, rounds: usize, format: ThumbFormat) {
    let mut files: Vec<PathBuf> = std::fs::read_dir(src)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jpg" || e == "avif"))
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "no .jpg or .avif files in {}",
        src.display()
    );
    std::fs::create_dir_all(out).unwrap();
    let spec = ThumbnailSpec {
        format,
        ..ThumbnailSpec::default()
    };
    let jobs = files.len() * rounds;
    let next = AtomicUsize::new(0);
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= jobs {
                    break;
                }
                let file = &files[i % files.len()];
                let dst = out.join(format!(
                    "{}.{}",
                    file.file_stem().unwrap().to_string_lossy(),
                    format.extension()
                ));
                let info = image_thumbnail(file, &dst, &spec).unwrap();
                assert_eq!(info.thumb_width.max(info.thumb_height), 320);
            });
        }
    });
    let secs = started.elapsed().as_secs_f64();
    println!(
        "stowage-media\t{}\t{}\t{:.3}\t{:.2}",
        threads,
        jobs,
        secs,
        jobs as f64 / secs
    );
}
