#!/usr/bin/env node
// One request of "Resumable Uploads for HTTP" (draft-ietf-httpbis-resumable-upload),
// sent with Node's own `http` module, which reports interim (1xx) responses
// through the request's 'information' event. Prints one JSON line:
//
//   {"status":N|null,"headers":{..},"body":"..","informational":[{"status":104,"headers":{..},"after_bytes":N}],
//    "bytes_sent":N,"info_before_body_end":bool,"cut":bool,"error":null|".."}
//
//   node request.mjs '<plan as JSON>'
//
// plan: {"method","url","headers":{..},
//        "file": path, "start": N, "end": N   (the body: bytes [start, end) of the file; none: no body)
//        "chunked": bool                      (no Content-Length: chunked transfer coding)
//        "hold_until_104": N                  (send N bytes, then wait for a 104 before the rest)
//        "cut_after": N                       (send N bytes, wait for a 104 or `wait_104_ms` (300), then
//                                              `settle_ms` (100) more, then cut the connection)
//        "timeout_ms": N}
import fs from 'node:fs';
import http from 'node:http';

const plan = JSON.parse(process.argv[2]);
const out = {
  status: null, headers: {}, body: '', informational: [], bytes_sent: 0,
  info_before_body_end: false, cut: false, error: null,
};
let printed = false;
const finish = () => {
  if (printed) return;
  printed = true;
  console.log(JSON.stringify(out));
  process.exit(0);
};
setTimeout(() => { out.error = 'timeout'; finish(); }, plan.timeout_ms || 60000);

let body = null;
if (plan.file) {
  const all = fs.readFileSync(plan.file);
  body = all.subarray(plan.start || 0, plan.end ?? all.length);
}
const headers = { ...(plan.headers || {}) };
if (body && !plan.chunked) headers['Content-Length'] = String(body.length);

let bodyEnded = false;
let waiter = null;
const req = http.request(plan.url, { method: plan.method, headers, agent: false });
req.on('information', (info) => {
  out.informational.push({ status: info.statusCode, headers: info.headers, after_bytes: out.bytes_sent });
  if (info.statusCode === 104 && !bodyEnded && out.bytes_sent > 0) out.info_before_body_end = true;
  if (waiter) { const w = waiter; waiter = null; w(); }
});
req.on('response', (res) => {
  out.status = res.statusCode;
  out.headers = res.headers;
  const parts = [];
  res.on('data', (c) => parts.push(c));
  res.on('end', () => { out.body = Buffer.concat(parts).toString('utf8'); finish(); });
  res.on('error', (e) => { out.error = String(e); finish(); });
});
req.on('error', (e) => {
  if (!out.cut) out.error = String(e);
  finish();
});

const write = (buf) => new Promise((resolve) => {
  out.bytes_sent += buf.length;
  if (req.write(buf)) resolve(); else req.once('drain', resolve);
});
const wait104 = (ms) => new Promise((resolve) => {
  if (out.informational.some((i) => i.status === 104)) return resolve();
  waiter = resolve;
  setTimeout(() => { if (waiter === resolve) { waiter = null; resolve(); } }, ms);
});

(async () => {
  if (!body) { bodyEnded = true; req.end(); return; }
  const step = 64 * 1024;
  const send = async (from, to) => {
    for (let i = from; i < to; i += step) await write(body.subarray(i, Math.min(i + step, to)));
  };
  if (plan.cut_after != null) {
    await send(0, Math.min(plan.cut_after, body.length));
    await wait104(plan.wait_104_ms ?? 300);
    await new Promise((r) => setTimeout(r, plan.settle_ms ?? 100));
    out.cut = true;
    req.destroy();
    setTimeout(finish, 50);
    return;
  }
  let at = 0;
  if (plan.hold_until_104 != null) {
    at = Math.min(plan.hold_until_104, body.length);
    await send(0, at);
    await wait104(5000);
  }
  await send(at, body.length);
  bodyEnded = true;
  req.end();
})();
