#!/usr/bin/env node
// Uploads one file to a tus server with tus-js-client and prints one JSON line:
//   {"ok":bool,"url":..,"file_id":..,"bytes":..,"head_offsets":[..],"aborted":bool,"error":..}
//
//   node upload.mjs --endpoint URL [--upload-url URL] [--header 'K: V']...
//        [--chunk-size BYTES] [--metadata key=value]... [--abort-after BYTES]
//        [--retry-delays 0,200,500|default] [--protocol tus-v1|ietf-draft-03|ietf-draft-05] FILE
//
// --upload-url resumes an upload created earlier (HEAD, then PATCH from the
// server's offset). --abort-after aborts the transfer (the connection is
// cut) once that many bytes were sent, prints the upload URL and exits 0, so
// a second run can resume it. --retry-delays default leaves tus-js-client's
// own default retry delays in place. file_id is the Stowage-File-Id header of the
// request that completed the upload.
import fs from 'node:fs';
import * as tus from 'tus-js-client';

const args = process.argv.slice(2);
const o = { protocol: 'tus-v1', endpoint: null, uploadUrl: null, chunkSize: 0, abortAfter: 0, headers: {}, metadata: {}, retryDelays: [0, 200, 500, 1000, 1000, 2000, 2000, 3000] };
let file = null;
for (let i = 0; i < args.length; i++) {
  const a = args[i];
  if (a === '--endpoint') o.endpoint = args[++i];
  else if (a === '--upload-url') o.uploadUrl = args[++i];
  else if (a === '--protocol') o.protocol = args[++i];
  else if (a === '--chunk-size') o.chunkSize = Number(args[++i]);
  else if (a === '--abort-after') o.abortAfter = Number(args[++i]);
  else if (a === '--retry-delays') {
    const v = args[++i];
    o.retryDelays = v === 'default' ? undefined : v ? v.split(',').map(Number) : null;
  }
  else if (a === '--header') {
    const h = args[++i]; const c = h.indexOf(':');
    o.headers[h.slice(0, c).trim()] = h.slice(c + 1).trim();
  } else if (a === '--metadata') {
    const m = args[++i]; const e = m.indexOf('=');
    o.metadata[m.slice(0, e)] = m.slice(e + 1);
  } else file = a;
}
if (!o.endpoint || !file) {
  console.error('usage: upload.mjs --endpoint URL [--upload-url URL] [--header "K: V"] [--chunk-size N] [--metadata k=v] [--abort-after N] FILE');
  process.exit(2);
}

const bytes = fs.statSync(file).size;
const result = { ok: false, url: null, file_id: null, bytes, head_offsets: [], statuses: [], aborted: false, error: null };
const finish = (code) => {
  console.log(JSON.stringify(result));
  process.exit(code);
};

const options = {
  endpoint: o.endpoint,
  protocol: o.protocol,
  uploadUrl: o.uploadUrl,
  chunkSize: o.chunkSize > 0 ? o.chunkSize : Infinity,
  headers: o.headers,
  metadata: o.metadata,
  retryDelays: o.retryDelays,
  storeFingerprintForResuming: false,
  onAfterResponse: (req, res) => {
    result.statuses.push(`${req.getMethod()} ${res.getStatus()}`);
    if (req.getMethod() === 'HEAD') {
      const off = res.getHeader('Upload-Offset');
      if (off != null) result.head_offsets.push(Number(off));
    }
    const id = res.getHeader('Stowage-File-Id');
    if (id) result.file_id = id;
  },
  onProgress: (sent) => {
    if (o.abortAfter > 0 && !result.aborted && sent >= o.abortAfter) {
      result.aborted = true;
      result.url = up.url;
      up.abort(false).then(() => setTimeout(() => finish(0), 100));
    }
  },
  onSuccess: () => {
    result.ok = true;
    result.url = up.url;
    finish(0);
  },
  onError: (err) => {
    result.url = up.url;
    result.error = String(err && err.message ? err.message : err);
    finish(1);
  },
};
// Left out (not undefined) so that the client's own default applies.
if (o.retryDelays === undefined) delete options.retryDelays;
const up = new tus.Upload(fs.createReadStream(file), options);
setTimeout(() => { result.error = 'timeout'; finish(1); }, 120000).unref();
up.start();
