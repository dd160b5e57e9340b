#!/usr/bin/env bash
# Thumbnail throughput: stowage-media (Rust, release build) against sharp (libvips)
# on the same generated 12-megapixel JPEGs, same job: longest side 320, JPEG q80.
#
# usage: bench/thumbs/run.sh [IMAGES=20] [ROUNDS=3] [REPEATS=3]
#        FORMAT=avif bench/thumbs/run.sh ...   # the same photos as AVIF (ffmpeg, libaom)
#   IMAGES   number of 4000x3000 JPEGs generated
#   ROUNDS   passes over all images inside one timed run
#   REPEATS  timed runs per configuration (interleaved); the best is reported
# Env: BENCH_DIR keeps the generated images there (default: a temp dir, removed).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
images=${1:-20}
rounds=${2:-3}
repeats=${3:-3}
cores=$(nproc)

if [[ -n "${BENCH_DIR:-}" ]]; then
  work=$BENCH_DIR
  mkdir -p "$work"
else
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
fi

echo "# building (release) and installing sharp" >&2
# With nasm on the machine, AV1 (AVIF) decoding uses its assembly kernels, as a
# production build with `--features avif-asm` does; NO_ASM=1 measures without.
features=()
if command -v nasm >/dev/null && [[ -z "${NO_ASM:-}" ]]; then features=(--features asm); fi
(cd "$root" && cargo build --quiet --release -p stowage-media --example thumb_bench "${features[@]}")
target_dir=$(cd "$root" && cargo metadata --format-version 1 --no-deps |
  node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(JSON.parse(s).target_directory))')
bin="$target_dir/release/examples/thumb_bench"
(cd "$here" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)

if ! ls "$work/src"/*.jpg >/dev/null 2>&1; then
  echo "# generating $images 4000x3000 JPEGs in $work/src" >&2
  "$bin" gen "$work/src" "$images"
fi

input="$work/src"
if [[ "${FORMAT:-jpeg}" == avif ]]; then
  input="$work/avif"
  mkdir -p "$input"
  for f in "$work/src"/*.jpg; do
    a="$input/$(basename "${f%.jpg}").avif"
    [[ -f "$a" ]] || ffmpeg -v error -i "$f" -c:v libaom-av1 -still-picture 1 -cpu-used 8 -y "$a"
  done
fi

run_rust() { "$bin" run "$input" "$work/out-rust" "$1" "$rounds"; }
run_sharp() { node "$here/sharp_bench.js" "$input" "$work/out-sharp" "$1" "$rounds"; }

echo "# warm-up" >&2
run_rust 1 >/dev/null
run_sharp 1 >/dev/null

raw="$work/raw.tsv"
: >"$raw"
for ((r = 1; r <= repeats; r++)); do
  for p in 1 "$cores"; do
    echo "# repeat $r, parallel $p" >&2
    run_rust "$p" | tee -a "$raw" >&2
    run_sharp "$p" | tee -a "$raw" >&2
  done
done

echo
echo "date: $(date -u +%Y-%m-%dT%H:%MZ)  cores: $cores  cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
echo "rustc: $(rustc --version)  node: $(node --version)"
echo "sharp: $(cd "$here" && node -e 'const v=require("sharp").versions;console.log(`${v.sharp} (libvips ${v.vips}, mozjpeg ${v.mozjpeg})`)')"
echo "stowage-media build: ${features[*]:-default features (AV1 without assembly)}"
echo "stowage-media deps: $(cd "$root" && for c in image jpeg-decoder fast_image_resize re_rav1d; do
  printf '%s %s  ' "$c" "$(grep -A1 "^name = \"$c\"$" Cargo.lock | sed -n 's/^version = "\(.*\)"/\1/p' | head -1)"; done)"
if [[ "${FORMAT:-jpeg}" == avif ]]; then
  echo "images: $images x 4000x3000 AVIF (libaom, 4:2:0, from the JPEGs), $rounds rounds per run, best of $repeats runs"
else
  echo "images: $images x 4000x3000 JPEG q90, $rounds rounds per run, best of $repeats runs"
fi
echo
echo "| tool | parallel images | thumbnails | seconds | thumbnails/s |"
echo "|---|---|---|---|---|"
# Best (highest thumbnails/s) run per tool and parallelism.
sort -t$'\t' -k1,1 -k2,2n -k5,5gr "$raw" | awk -F'\t' '!seen[$1 FS $2]++ {
  printf "| %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5 }'
echo
awk -F'\t' '{ if ($5 > best[$1 FS $2]) best[$1 FS $2] = $5 }
  END { for (k in best) { split(k, a, FS); if (a[1] == "stowage-media") {
    s = best["sharp" FS a[2]]; if (s > 0) printf "stowage-media / sharp at parallel %s: %.2fx\n", a[2], best[k] / s } } }' "$raw" | sort
