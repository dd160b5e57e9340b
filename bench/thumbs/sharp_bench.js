// Reference thumbnailer for run.sh: the same job as stowage-media's thumb_bench
// (longest side 320, JPEG quality 80, EXIF auto-rotation) done with sharp/libvips.
// usage: node sharp_bench.js <src_dir> <out_dir> <parallel_images> <rounds>
'use strict';
const fs = require('fs');
const os = require('os');
const path = require('path');
const sharp = require('sharp');

async function main() {
  const [src, out, parallelArg, roundsArg] = process.argv.slice(2);
  const parallel = Number(parallelArg);
  const rounds = Number(roundsArg);
  sharp.cache(false); // every round really decodes
  // One libvips worker thread for the single-image run; for parallel runs one per
  // core (sharp's default off glibc, and its fastest setting here).
  sharp.concurrency(parallel === 1 ? 1 : os.cpus().length);
  const files = fs
    .readdirSync(src)
    .filter((f) => f.endsWith('.jpg') || f.endsWith('.avif'))
    .sort();
  if (files.length === 0) throw new Error(`no .jpg or .avif files in ${src}`);
  fs.mkdirSync(out, { recursive: true });
  const jobs = files.length * rounds;
  let next = 0;
  const worker = async () => {
    for (;;) {
      const i = next++;
      if (i >= jobs) return;
      const f = files[i % files.length];
      const info = await sharp(path.join(src, f))
        .rotate()
        .resize(320, 320, { fit: 'inside', withoutEnlargement: true })
        .jpeg({ quality: 80 })
        .toFile(path.join(out, f));
      if (Math.max(info.width, info.height) !== 320) throw new Error(`bad size for ${f}`);
    }
  };
  const started = process.hrtime.bigint();
  await Promise.all(Array.from({ length: parallel }, worker));
  const secs = Number(process.hrtime.bigint() - started) / 1e9;
  console.log(`sharp\t${parallel}\t${jobs}\t${secs.toFixed(3)}\t${(jobs / secs).toFixed(2)}`);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
