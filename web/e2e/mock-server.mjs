#!/usr/bin/env node
// A small in-memory stand-in for `stowage serve`, for working on the web UI
// without building the Rust server: `node e2e/mock-server.mjs serve`, or
// `STOWAGE_BIN=e2e/mock-server.mjs npm run e2e`. It follows the same contract
// (dev sign-in, files, usage, tus uploads, multipart uploads, signed URLs) but
// keeps everything in memory and is not a reference for the server's behaviour.
import http from 'node:http';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const dist = path.resolve(here, '..', 'dist');
const bind = process.env.STOWAGE_BIND ?? '127.0.0.1:3001';
const [host, port] = [bind.slice(0, bind.lastIndexOf(':')), Number(bind.slice(bind.lastIndexOf(':') + 1))];
const defaultQuota = Number(process.env.STOWAGE_DEFAULT_QUOTA ?? 10737418240);
const maxFile = Number(process.env.STOWAGE_MAX_FILE_SIZE ?? 2147483648);
const TYPES = ['video', 'image', 'audio', 'scene', 'project'];

const users = new Map(); // id -> { max, files: Map }
const uploads = new Map(); // id -> { user, length, offset, chunks, meta }
const signed = new Map(); // token -> { user, id, exp }

function user(id) {
  if (!users.has(id)) users.set(id, { max: defaultQuota, files: new Map(), reserved: 0 });
  return users.get(id);
}
const used = (u) => [...u.files.values()].reduce((n, f) => n + f.data.length, 0);

function sniff(buf) {
  const b = buf.subarray(0, 16);
  const s = b.toString('latin1');
  if (s.startsWith('\x89PNG')) return ['image', 'image/png', 'png'];
  if (b[0] === 0xff && b[1] === 0xd8) return ['image', 'image/jpeg', 'jpg'];
  if (s.startsWith('GIF8')) return ['image', 'image/gif', 'gif'];
  if (s.slice(4, 8) === 'ftyp') return ['video', 'video/mp4', 'mp4'];
  if (b[0] === 0x1a && b[1] === 0x45) return ['video', 'video/webm', 'webm'];
  if (s.startsWith('ID3') || (b[0] === 0xff && (b[1] & 0xe0) === 0xe0)) return ['audio', 'audio/mpeg', 'mp3'];
  if (s.startsWith('RIFF') && s.slice(8, 12) === 'WAVE') return ['audio', 'audio/wav', 'wav'];
  if (s.startsWith('PK')) return ['project', 'application/zip', 'zip'];
  const t = buf.toString('utf8').trim();
  if (t.startsWith('{') || t.startsWith('[')) return ['project', 'application/json', 'json'];
  return null;
}

function send(res, status, body, headers = {}) {
  const data = body == null ? '' : typeof body === 'string' || Buffer.isBuffer(body) ? body : JSON.stringify(body);
  res.writeHead(status, {
    ...(typeof body === 'object' && !Buffer.isBuffer(body) && body != null ? { 'Content-Type': 'application/json' } : {}),
    ...headers,
  });
  res.end(data);
}
const err = (res, status, code, message, headers) => send(res, status, { error: { code, message } }, headers);

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
  });
}

function cookieUser(req) {
  const m = /(?:^|;\s*)__session=([^;]+)/.exec(req.headers.cookie ?? '');
  if (m) return decodeURIComponent(m[1]);
  const a = /^Bearer (.+)$/.exec(req.headers.authorization ?? '');
  return a ? a[1] : null;
}

function fileJson(f) {
  return {
    id: f.id,
    file_name: f.name,
    file_type: f.type,
    mime_type: f.mime,
    file_size: f.data.length,
    sha256: crypto.createHash('sha256').update(f.data).digest('hex'),
    resolution: null,
    duration: null,
    package_name: null,
    tags: f.tags,
    is_favorite: f.fav,
    upload_date: f.date,
    thumbnail_url: f.type === 'image' ? `/api/files/${f.id}/thumbnail` : null,
  };
}

function store(u, name, data, declared) {
  const kind = sniff(data);
  if (!kind) return { status: 415, code: 'unsupported_media_type', message: 'file type not allowed' };
  if (declared && declared !== kind[0] && !(kind[0] === 'project' && declared === 'scene'))
    return { status: 415, code: 'unsupported_media_type', message: 'declared type does not match content' };
  const id = crypto.randomUUID();
  const f = { id, name, data, type: declared || kind[0], mime: kind[1], tags: [], fav: false, date: new Date().toISOString(), seq: Date.now() + Math.random() };
  u.files.set(id, f);
  return { file: f };
}

function usage(id, u) {
  const by = Object.fromEntries(TYPES.map((t) => [t, { bytes: 0, count: 0 }]));
  for (const f of u.files.values()) {
    by[f.type].bytes += f.data.length;
    by[f.type].count++;
  }
  const total = used(u);
  return {
    user_id: id,
    total_bytes: total,
    max_bytes: u.max,
    file_count: u.files.size,
    percent_used: u.max > 0 ? Math.round((total / u.max) * 10000) / 100 : 100,
    by_type: by,
  };
}

function serveBytes(req, res, f, inline) {
  const disp = inline ? 'inline' : `attachment; filename*=UTF-8''${encodeURIComponent(f.name)}`;
  const headers = {
    'Content-Type': f.mime,
    'Content-Disposition': disp,
    'Accept-Ranges': 'bytes',
    'X-Content-Type-Options': 'nosniff',
    ETag: `"${f.id}"`,
  };
  const range = /^bytes=(\d*)-(\d*)$/.exec(req.headers.range ?? '');
  if (range) {
    const size = f.data.length;
    let start = range[1] ? Number(range[1]) : size - Number(range[2]);
    let end = range[1] && range[2] ? Number(range[2]) : size - 1;
    if (start >= size || start > end) return send(res, 416, null, { 'Content-Range': `bytes */${size}` });
    end = Math.min(end, size - 1);
    return send(res, 206, req.method === 'HEAD' ? null : f.data.subarray(start, end + 1), {
      ...headers,
      'Content-Range': `bytes ${start}-${end}/${size}`,
      'Content-Length': String(end - start + 1),
    });
  }
  send(res, 200, req.method === 'HEAD' ? null : f.data, { ...headers, 'Content-Length': String(f.data.length) });
}

const TUS = { 'Tus-Resumable': '1.0.0' };

async function handle(req, res) {
  const url = new URL(req.url, `http://${req.headers.host}`);
  const p = url.pathname;
  if (p === '/healthz' || p === '/readyz') return send(res, 200, { status: 'ok' });
  if (p === '/api/dev/status') return send(res, 200, { dev_login: true });
  if (p === '/api/dev/login' && req.method === 'POST') {
    const body = JSON.parse((await readBody(req)).toString() || '{}');
    if (!body.user_id) return err(res, 400, 'invalid_request', 'user_id required');
    user(body.user_id);
    return send(res, 204, null, { 'Set-Cookie': `__session=${encodeURIComponent(body.user_id)}; Path=/; HttpOnly; SameSite=Lax` });
  }
  if (p === '/api/dev/logout' && req.method === 'POST')
    return send(res, 204, null, { 'Set-Cookie': '__session=; Path=/; Max-Age=0' });

  const sm = /^\/s\/([^/]+)$/.exec(p);
  if (sm) {
    const s = signed.get(sm[1]);
    if (!s || s.exp < Date.now()) return err(res, 403, 'forbidden', 'link expired or invalid');
    const f = users.get(s.user)?.files.get(s.id);
    if (!f) return err(res, 404, 'not_found', 'no such file');
    return serveBytes(req, res, f, false);
  }

  if (p.startsWith('/api/')) {
    const uid = cookieUser(req);
    if (!uid) return err(res, 401, 'unauthorized', 'sign in required');
    const u = user(uid);

    if (p === '/api/storage/usage') return send(res, 200, usage(uid, u));

    if (p === '/api/files' && req.method === 'GET') {
      let list = [...u.files.values()];
      const q = url.searchParams;
      if (q.get('type')) list = list.filter((f) => f.type === q.get('type'));
      if (q.get('favorite') === 'true') list = list.filter((f) => f.fav);
      if (q.get('tag')) list = list.filter((f) => f.tags.includes(q.get('tag')));
      if (q.get('q')) list = list.filter((f) => f.name.toLowerCase().includes(q.get('q').toLowerCase()));
      const sort = q.get('sort') ?? 'upload_date';
      const dir = q.get('order') === 'asc' ? 1 : -1;
      const key = (f) => (sort === 'file_name' ? f.name.toLowerCase() : sort === 'file_size' ? f.data.length : f.seq);
      list.sort((a, b) => (key(a) < key(b) ? -dir : key(a) > key(b) ? dir : a.id < b.id ? -1 : 1));
      const limit = Math.min(200, Number(q.get('limit') ?? 50) || 50);
      const start = Number(q.get('cursor') ?? 0);
      const page = list.slice(start, start + limit);
      return send(res, 200, { files: page.map(fileJson), next_cursor: start + limit < list.length ? String(start + limit) : null });
    }

    if (p === '/api/files/upload' && req.method === 'POST') {
      const raw = await readBody(req);
      const form = await new Request('http://x/', { method: 'POST', headers: { 'content-type': req.headers['content-type'] }, body: raw }).formData();
      const file = form.get('file');
      if (!file || typeof file === 'string') return err(res, 400, 'invalid_request', 'part `file` is required');
      const data = Buffer.from(await file.arrayBuffer());
      if (data.length > maxFile) return err(res, 413, 'file_too_large', 'file too large');
      if (used(u) + u.reserved + data.length > u.max) return err(res, 507, 'quota_exceeded', 'storage quota exceeded');
      const r = store(u, file.name, data, form.get('file_type') || null);
      if (r.status) return err(res, r.status, r.code, r.message);
      return send(res, 201, fileJson(r.file));
    }

    // tus
    if (p === '/api/uploads' && req.method === 'OPTIONS')
      return send(res, 204, null, { ...TUS, 'Tus-Version': '1.0.0', 'Tus-Extension': 'creation,creation-with-upload,termination', 'Tus-Max-Size': String(maxFile) });
    if (p === '/api/uploads' && req.method === 'POST') {
      const length = Number(req.headers['upload-length']);
      if (!Number.isFinite(length)) return err(res, 400, 'invalid_request', 'Upload-Length required', TUS);
      if (length > maxFile) return err(res, 413, 'file_too_large', 'file too large', TUS);
      if (used(u) + u.reserved + length > u.max) return err(res, 507, 'quota_exceeded', 'storage quota exceeded', TUS);
      const meta = {};
      for (const pair of (req.headers['upload-metadata'] ?? '').split(',')) {
        const [k, v] = pair.trim().split(' ');
        if (k) meta[k] = v ? Buffer.from(v, 'base64').toString() : '';
      }
      const id = crypto.randomUUID();
      u.reserved += length;
      const up = { user: uid, length, offset: 0, chunks: [], meta };
      uploads.set(id, up);
      const body = await readBody(req);
      const headers = { ...TUS, Location: `/api/uploads/${id}` };
      if (body.length) {
        up.chunks.push(body);
        up.offset += body.length;
      }
      const done = up.offset === up.length ? complete(u, id, up) : null;
      if (done && done.error) return err(res, done.error.status, done.error.code, done.error.message, TUS);
      return send(res, 201, null, { ...headers, 'Upload-Offset': String(up.offset), ...(done ? { 'Stowage-File-Id': done.file.id } : {}) });
    }
    const um = /^\/api\/uploads\/([^/]+)$/.exec(p);
    if (um) {
      const up = uploads.get(um[1]);
      if (!up || up.user !== uid) return err(res, 404, 'not_found', 'no such upload', TUS);
      if (req.method === 'HEAD')
        return send(res, 200, null, { ...TUS, 'Upload-Offset': String(up.offset), 'Upload-Length': String(up.length), 'Cache-Control': 'no-store' });
      if (req.method === 'DELETE') {
        uploads.delete(um[1]);
        u.reserved -= up.length;
        return send(res, 204, null, TUS);
      }
      if (req.method === 'PATCH') {
        if (Number(req.headers['upload-offset']) !== up.offset) return err(res, 409, 'conflict', 'offset mismatch', TUS);
        await new Promise((resolve) => {
          req.on('data', (c) => {
            up.chunks.push(c);
            up.offset += c.length;
          });
          req.on('end', resolve);
          req.on('close', resolve);
        });
        const done = up.offset >= up.length ? complete(u, um[1], up) : null;
        if (done && done.error) return err(res, done.error.status, done.error.code, done.error.message, TUS);
        return send(res, 204, null, { ...TUS, 'Upload-Offset': String(up.offset), ...(done ? { 'Stowage-File-Id': done.file.id } : {}) });
      }
    }

    const fm = /^\/api\/files\/([^/]+)(?:\/([a-z-]+))?$/.exec(p);
    if (fm) {
      const f = u.files.get(fm[1]);
      if (!f) return err(res, 404, 'not_found', 'no such file');
      const sub = fm[2];
      if (!sub && req.method === 'GET') return send(res, 200, fileJson(f));
      if (!sub && req.method === 'DELETE') {
        u.files.delete(f.id);
        return send(res, 204, null);
      }
      if (sub === 'download') return serveBytes(req, res, f, url.searchParams.get('inline') === '1');
      if (sub === 'thumbnail') return f.type === 'image' ? send(res, 200, f.data, { 'Content-Type': f.mime }) : err(res, 404, 'not_found', 'no thumbnail');
      if (sub === 'favorite' && req.method === 'POST') {
        const raw = (await readBody(req)).toString();
        const body = raw ? JSON.parse(raw) : {};
        f.fav = typeof body.is_favorite === 'boolean' ? body.is_favorite : !f.fav;
        return send(res, 200, fileJson(f));
      }
      if (sub === 'tags' && req.method === 'PUT') {
        const body = JSON.parse((await readBody(req)).toString());
        const tags = [...new Set((body.tags ?? []).map((t) => String(t).trim()).filter(Boolean))];
        if (tags.length > 32 || tags.some((t) => t.length > 64)) return err(res, 400, 'invalid_request', 'too many or too long tags');
        f.tags = tags;
        return send(res, 200, fileJson(f));
      }
      if (sub === 'signed-url' && req.method === 'POST') {
        const raw = (await readBody(req)).toString();
        const exp = (raw ? JSON.parse(raw).expires_in : 3600) ?? 3600;
        const token = crypto.randomBytes(16).toString('hex');
        signed.set(token, { user: uid, id: f.id, exp: Date.now() + exp * 1000 });
        return send(res, 200, { url: `/s/${token}`, expires_at: new Date(Date.now() + exp * 1000).toISOString() });
      }
    }
    return err(res, 404, 'not_found', 'no such route');
  }

  // static UI
  const rel = p === '/' ? 'index.html' : decodeURIComponent(p).replace(/^\/+/, '');
  const file = path.resolve(dist, rel);
  if (!file.startsWith(dist) || !fs.existsSync(file) || fs.statSync(file).isDirectory()) return err(res, 404, 'not_found', 'not found');
  const ext = path.extname(file);
  const types = { '.html': 'text/html; charset=utf-8', '.js': 'text/javascript', '.css': 'text/css', '.svg': 'image/svg+xml' };
  send(res, 200, fs.readFileSync(file), { 'Content-Type': types[ext] ?? 'application/octet-stream' });
}

function complete(u, id, up) {
  uploads.delete(id);
  u.reserved -= up.length;
  const r = store(u, up.meta.filename || 'upload', Buffer.concat(up.chunks), up.meta.file_type || null);
  if (r.status) return { error: r };
  return r;
}

if (process.argv[2] !== 'serve') {
  console.error('usage: mock-server.mjs serve');
  process.exit(2);
}
http
  .createServer((req, res) => {
    handle(req, res).catch((e) => {
      console.error(e);
      if (!res.headersSent) err(res, 500, 'internal', 'internal error');
    });
  })
  .listen(port, host, () => console.log(`mock stowage listening on http://${host}:${port}`));
