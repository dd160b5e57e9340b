// Helpers shared by the end-to-end scripts (run.mjs, package.mjs).
import net from 'node:net';
import zlib from 'node:zlib';

const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();
function crc32(buf) {
  let c = 0xffffffff;
  for (const b of buf) c = CRC_TABLE[(c ^ b) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}
function chunk(type, data) {
  const len = Buffer.alloc(4);
  len.writeUInt32BE(data.length);
  const td = Buffer.concat([Buffer.from(type, 'latin1'), data]);
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(crc32(td));
  return Buffer.concat([len, td, crc]);
}

/**
 * A valid RGB PNG. `noise` makes it incompressible; `size` pads it with a
 * tEXt chunk to exactly that many bytes (when larger than the image itself).
 */
export function makePng(width, height, { noise = false, seed = 1, size = 0 } = {}) {
  const raw = Buffer.alloc((width * 3 + 1) * height);
  let s = seed >>> 0 || 1;
  for (let y = 0; y < height; y++) {
    const row = y * (width * 3 + 1);
    raw[row] = 0;
    for (let x = 0; x < width; x++) {
      const o = row + 1 + x * 3;
      if (noise) {
        s ^= s << 13;
        s ^= s >>> 17;
        s ^= s << 5;
        raw[o] = s & 0xff;
        raw[o + 1] = (s >>> 8) & 0xff;
        raw[o + 2] = (s >>> 16) & 0xff;
      } else {
        raw[o] = (x * 255) / width;
        raw[o + 1] = (y * 255) / height;
        raw[o + 2] = 160;
      }
    }
  }
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr[8] = 8;
  ihdr[9] = 2;
  const sig = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
  const head = Buffer.concat([sig, chunk('IHDR', ihdr), chunk('IDAT', zlib.deflateSync(raw))]);
  const tail = chunk('IEND', Buffer.alloc(0));
  const base = head.length + tail.length;
  if (size > base + 12 + 8) {
    const text = Buffer.alloc(size - base - 12, 0x20);
    Buffer.from('Comment\0', 'latin1').copy(text);
    return Buffer.concat([head, chunk('tEXt', text), tail]);
  }
  return Buffer.concat([head, tail]);
}

export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

export async function waitHealthy(base, proc, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  let last = '';
  while (Date.now() < deadline) {
    if (proc.exitCode !== null) throw new Error(`server exited with status ${proc.exitCode}`);
    try {
      const r = await fetch(`${base}/healthz`);
      if (r.status === 200) return;
      last = `status ${r.status}`;
    } catch (e) {
      last = e.cause?.code ?? String(e);
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`GET /healthz did not answer 200 within ${timeoutMs / 1000} s (${last})`);
}
