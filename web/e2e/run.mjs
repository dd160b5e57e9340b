#!/usr/bin/env node
// End-to-end test of the web UI against a real `stowage serve`.
//
//   STOWAGE_BIN=/path/to/stowage node e2e/run.mjs     (default: ../target/debug/stowage)
//
// Starts the server on a free loopback port with a throw-away data dir and a
// 3 MiB quota, drives Chromium (/usr/bin/chromium or $CHROMIUM) through the
// demo app, saves screenshots to e2e/screenshots/ (copied to ../docs/screenshots/)
// and ends with `N passed, M failed`; the exit status is non-zero on any failure.
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium, request as pwRequest } from 'playwright-core';
import { freePort, makePng, waitHealthy } from './common.mjs';

const webDir = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const repoDir = path.resolve(webDir, '..');
const distDir = path.join(webDir, 'dist');
const shotsDir = path.join(webDir, 'e2e', 'screenshots');
const docsShotsDir = path.join(repoDir, 'docs', 'screenshots');
const bin = path.resolve(webDir, process.env.STOWAGE_BIN ?? '../target/debug/stowage');
const chromiumPath = process.env.CHROMIUM ?? '/usr/bin/chromium';
const QUOTA = 3 * 1024 * 1024;
const headed = process.env.E2E_HEADED === '1';
const adminToken = `e2e-admin-${process.pid}-${Date.now()}`;

// ---------------------------------------------------------------- reporting

const results = [];
const notes = [];
let stepNo = 0;
let page = null;

function log(msg) {
  console.log(msg);
}
function note(msg) {
  notes.push(msg);
  log(`  note: ${msg}`);
}

async function step(name, fn, { required = false } = {}) {
  stepNo++;
  const started = Date.now();
  try {
    const detail = await fn();
    results.push({ name, ok: true });
    log(`ok   ${stepNo} ${name}${detail ? ` — ${detail}` : ''} (${Date.now() - started} ms)`);
    return true;
  } catch (e) {
    results.push({ name, ok: false, error: e });
    log(`FAIL ${stepNo} ${name}: ${e instanceof Error ? e.message : e}`);
    if (page) {
      try {
        await page.screenshot({ path: path.join(shotsDir, `fail-${String(stepNo).padStart(2, '0')}.png`), fullPage: true });
      } catch {
        // ignore
      }
    }
    if (required) throw new Abort(name);
    return false;
  }
}

class Abort extends Error {}

function assert(cond, msg) {
  if (!cond) throw new Error(msg);
}

// ---------------------------------------------------------------- test data

function makeVideo(dir) {
  const probe = spawnSync('ffmpeg', ['-version'], { stdio: 'ignore' });
  if (probe.error || probe.status !== 0) return null;
  const out = path.join(dir, 'e2e-clip.mp4');
  const r = spawnSync(
    'ffmpeg',
    ['-hide_banner', '-loglevel', 'error', '-y', '-f', 'lavfi', '-i', 'testsrc=duration=1:size=320x240:rate=10', '-pix_fmt', 'yuv420p', out],
    { stdio: 'inherit' },
  );
  if (r.status !== 0 || !fs.existsSync(out)) return null;
  return fs.readFileSync(out);
}

// ---------------------------------------------------------------- server

/**
 * Serves web/dist and forwards the API to the server (used only when the server's UI is missing or stale).
 * The browser's Host is kept, so the server sees the page's own origin in Origin and Host alike.
 */
function startUiProxy(apiBase, port) {
  const target = new URL(apiBase);
  const types = { '.html': 'text/html; charset=utf-8', '.js': 'text/javascript', '.css': 'text/css', '.svg': 'image/svg+xml' };
  const srv = http.createServer((req, res) => {
    const p = new URL(req.url, 'http://x').pathname;
    if (p.startsWith('/api/') || p.startsWith('/s/') || p === '/healthz') {
      const up = http.request(
        { host: target.hostname, port: target.port, method: req.method, path: req.url, headers: { ...req.headers } },
        (r) => {
          res.writeHead(r.statusCode ?? 502, r.headers);
          r.pipe(res);
        },
      );
      up.on('error', () => {
        res.writeHead(502);
        res.end();
      });
      req.pipe(up);
      return;
    }
    const file = path.resolve(distDir, p === '/' ? 'index.html' : p.slice(1));
    if (!file.startsWith(distDir) || !fs.existsSync(file) || fs.statSync(file).isDirectory()) {
      res.writeHead(404);
      res.end();
      return;
    }
    res.writeHead(200, { 'Content-Type': types[path.extname(file)] ?? 'application/octet-stream' });
    fs.createReadStream(file).pipe(res);
  });
  return new Promise((resolve) => srv.listen(port, '127.0.0.1', () => resolve(srv)));
}

// ---------------------------------------------------------------- main

async function main() {
  fs.rmSync(shotsDir, { recursive: true, force: true });
  fs.mkdirSync(shotsDir, { recursive: true });
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'stowage-e2e-'));
  let server = null;
  let proxy = null;
  let browser = null;
  const serverLog = path.join(tmp, 'server.log');

  const cleanup = async () => {
    try {
      await browser?.close();
    } catch {
      // ignore
    }
    proxy?.close();
    if (server && server.exitCode === null) {
      server.kill('SIGTERM');
      await new Promise((r) => {
        const t = setTimeout(() => {
          server.kill('SIGKILL');
          r();
        }, 5000);
        server.once('exit', () => {
          clearTimeout(t);
          r();
        });
      });
    }
  };

  try {
    // ---- server
    let base = '';
    await step(
      'start stowage serve and wait for /healthz',
      async () => {
        if (!fs.existsSync(bin)) throw new Error(`no server binary at ${bin} (run \`cargo build\` in ${repoDir} or set STOWAGE_BIN)`);
        const port = await freePort();
        base = `http://127.0.0.1:${port}`;
        const env = {
          ...process.env,
          STOWAGE_BIND: `127.0.0.1:${port}`,
          STOWAGE_DATA_DIR: tmp,
          STOWAGE_DATABASE_URL: `sqlite://${tmp}/stowage.db`,
          STOWAGE_STORAGE_ROOT: `${tmp}/users`,
          STOWAGE_DEFAULT_QUOTA: String(QUOTA),
          STOWAGE_ADMIN_TOKEN: adminToken,
          RUST_LOG: process.env.RUST_LOG ?? 'info',
        };
        for (const k of ['STOWAGE_JWT_PUBLIC_KEY', 'CLERK_JWT_KEY', 'STOWAGE_JWKS_URL', 'PORT', 'DATABASE_URL']) delete env[k];
        const out = fs.openSync(serverLog, 'a');
        const [cmd, args] = bin.endsWith('.mjs') ? [process.execPath, [bin, 'serve']] : [bin, ['serve']];
        server = spawn(cmd, args, { env, cwd: tmp, stdio: ['ignore', out, out] });
        await waitHealthy(base, server, 60_000);
        return base;
      },
      { required: true },
    );

    // ---- UI
    let uiBase = base;
    await step('web UI served by stowage at /', async () => {
      const r = await fetch(`${base}/`);
      const html = await r.text();
      let current = null;
      try {
        current = fs.readFileSync(path.join(distDir, 'index.html'), 'utf8');
      } catch {
        // no dist
      }
      if (r.status !== 200 || !html.includes('id="root"')) {
        proxy = await startUiProxy(base, await freePort());
        uiBase = `http://127.0.0.1:${proxy.address().port}`;
        throw new Error(`GET / answered ${r.status} without the app; continuing with web/dist served by a local proxy`);
      }
      if (current && current !== html) {
        proxy = await startUiProxy(base, await freePort());
        uiBase = `http://127.0.0.1:${proxy.address().port}`;
        note('the UI embedded in the binary differs from web/dist (rebuild the binary after `npm run build`); testing web/dist through a local proxy');
      }
      return `content-type ${r.headers.get('content-type')}`;
    });

    // ---- browser
    browser = await chromium.launch({
      executablePath: chromiumPath,
      headless: !headed,
      args: [
        ...(headed ? [] : ['--headless']),
        '--no-sandbox',
        '--disable-gpu',
        '--disable-quic',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
      ],
    });
    const context = await browser.newContext({ viewport: { width: 1280, height: 900 }, acceptDownloads: true });
    await context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: uiBase });
    page = await context.newPage();
    page.setDefaultTimeout(15_000);
    const consoleErrors = [];
    const ignoredConsole = [];
    page.on('console', (m) => {
      if (m.type() !== 'error') return;
      const text = m.text();
      // The browser itself logs every non-2xx response; the sign-in check (401) and
      // a thumbnail not generated yet (404) are expected ones.
      if (/^Failed to load resource: the server responded with a status of (401|404)/.test(text)) ignoredConsole.push(text);
      else consoleErrors.push(text);
    });
    page.on('pageerror', (e) => consoleErrors.push(`page error: ${e.message}`));
    const uploadRequests = [];
    page.on('request', (r) => {
      const u = new URL(r.url());
      if (u.pathname.startsWith('/api/uploads') || u.pathname === '/api/files/upload') {
        const draft = r.headers()['upload-draft-interop-version'];
        uploadRequests.push(`${r.method()} ${u.pathname}${draft ? ` draft-${draft}` : ''}`);
      }
    });
    // Requests made outside the page carry the page's Origin on unsafe methods, as the
    // browser does: the server refuses cookie-authenticated cross-site writes.
    const api = (p, opts = {}) => {
      const unsafe = !['GET', 'HEAD', 'OPTIONS'].includes((opts.method ?? 'GET').toUpperCase());
      const headers = unsafe ? { Origin: uiBase, ...(opts.headers ?? {}) } : opts.headers;
      return page.request.fetch(`${uiBase}${p}`, { ...opts, headers });
    };
    const shot = (name, opts = {}) => page.screenshot({ path: path.join(shotsDir, `${name}.png`), fullPage: true, ...opts });

    await step(
      'sign in through the development sign-in screen',
      async () => {
        await page.goto(`${uiBase}/`);
        const heading = page.getByRole('heading', { name: 'Sign in' });
        await heading.waitFor();
        await shot('01-sign-in');
        await page.getByLabel('User id').fill('e2e-user');
        await page.getByRole('button', { name: /Sign in as e2e-user/ }).click();
        await page.getByTestId('user-id').filter({ hasText: 'e2e-user' }).waitFor();
        await page.getByText('No files yet').waitFor();
        await shot('02-empty');
        return 'signed in as e2e-user';
      },
      { required: true },
    );

    // ---- transport
    let transport = 'tus';
    await step('tus creation and termination at /api/uploads', async () => {
      const r = await api('/api/uploads', {
        method: 'POST',
        headers: { 'Tus-Resumable': '1.0.0', 'Upload-Length': '1', 'Upload-Metadata': `filename ${Buffer.from('probe.png').toString('base64')}` },
      });
      const loc = r.headers()['location'];
      if (r.status() !== 201 || !loc) {
        transport = 'multipart';
        await page.goto(`${uiBase}/?transport=multipart`);
        await page.getByText('No files yet').waitFor();
        throw new Error(`POST /api/uploads → ${r.status()} (Location ${loc ?? 'none'}); the rest uses transport="multipart"`);
      }
      const d = await api(new URL(loc, uiBase).pathname, { method: 'DELETE', headers: { 'Tus-Resumable': '1.0.0' } });
      assert(d.status() === 204, `DELETE ${loc} → ${d.status()}`);
      return `201 Location ${loc.replace(/[^/]+$/, '…')}, DELETE 204`;
    });
    await step('OPTIONS /api/uploads advertises Tus-Version 1.0.0', async () => {
      const r = await api('/api/uploads', { method: 'OPTIONS' });
      const h = r.headers();
      assert(r.status() < 300 && (h['tus-version'] ?? '').includes('1.0.0'), `OPTIONS → ${r.status()} with Tus-Version "${h['tus-version'] ?? ''}"`);
      return `Tus-Extension: ${h['tus-extension'] ?? '(none)'}`;
    });

    const storageText = () => page.getByTestId('storage-text').innerText();
    const waitStorageChange = async (before) => {
      await page.waitForFunction(
        (b) => document.querySelector('[data-testid="storage-text"]')?.textContent !== b,
        before,
        { timeout: 15_000 },
      );
      return storageText();
    };
    const uploadRow = (name) => page.locator('.stw-upload', { has: page.locator('.stw-upload-name', { hasText: name }) }).last();
    const waitUploaded = async (name) => {
      const row = uploadRow(name);
      await row.waitFor();
      await page.waitForFunction(
        (n) => {
          const rows = [...document.querySelectorAll('.stw-upload')].filter((r) => r.querySelector('.stw-upload-name')?.textContent === n);
          const s = rows.at(-1)?.getAttribute('data-status');
          return s === 'done' || s === 'error' || s === 'rejected';
        },
        name,
        { timeout: 30_000 },
      );
      const status = await row.getAttribute('data-status');
      if (status !== 'done') throw new Error(`upload of ${name} ended as "${status}": ${await row.innerText()}`);
      const pct = await row.getByRole('progressbar').getAttribute('aria-valuenow');
      assert(pct === '100', `progress bar at ${pct}%`);
    };
    const fileItem = (name) => page.locator(`li.stw-file[data-file-name="${name}"]`);
    const findFile = async (name) => {
      const r = await api(`/api/files?q=${encodeURIComponent(name)}&limit=200`);
      assert(r.ok(), `GET /api/files → ${r.status()}`);
      return (await r.json()).files.find((f) => f.file_name === name);
    };
    const dropFiles = async (files) => {
      await page.evaluate(async (list) => {
        const dt = new DataTransfer();
        for (const f of list) {
          const bytes = Uint8Array.from(atob(f.b64), (c) => c.charCodeAt(0));
          dt.items.add(new File([bytes], f.name, { type: f.type }));
        }
        const zone = document.querySelector('[data-testid="dropzone"]');
        for (const type of ['dragenter', 'dragover', 'drop']) {
          zone.dispatchEvent(new DragEvent(type, { dataTransfer: dt, bubbles: true, cancelable: true }));
        }
      }, files.map((f) => ({ name: f.name, type: f.type, b64: f.buffer.toString('base64') })));
    };
    const pickFiles = (files) =>
      page.getByTestId('file-input').setInputFiles(files.map((f) => ({ name: f.name, mimeType: f.type, buffer: f.buffer })));

    // ---- image upload (drag and drop)
    const png = makePng(96, 64, { noise: true, seed: 7 });
    const pngName = 'e2e-picture.png';
    let pngId = null;
    await step(`drop an image (${png.length} bytes), progress completes, storage bar changes`, async () => {
      const before = await storageText();
      await dropFiles([{ name: pngName, type: 'image/png', buffer: png }]);
      await waitUploaded(pngName);
      const after = await waitStorageChange(before);
      await fileItem(pngName).waitFor();
      const f = await findFile(pngName);
      assert(f, 'file not listed by the API');
      assert(f.file_size === png.length, `stored size ${f.file_size} != ${png.length}`);
      assert(f.file_type === 'image', `file_type ${f.file_type}`);
      pngId = f.id;
      const idFromUpload = await uploadRow(pngName).getAttribute('data-file-id');
      assert(idFromUpload === f.id, `the upload reported file id ${idFromUpload}, the list has ${f.id}`);
      if (transport === 'tus') assert(uploadRequests.some((r) => r.includes('/api/uploads')), 'no request went to /api/uploads');
      await shot('03-image-uploaded');
      return `storage "${before}" → "${after}", file id ${f.id} (from ${transport === 'tus' ? 'Stowage-File-Id' : 'the 201 body'})`;
    });

    // ---- the IETF draft, chosen in the page
    if (transport === 'tus') {
      const ietfPng = makePng(80, 48, { noise: true, seed: 11 });
      const ietfName = 'e2e-ietf.png';
      await step(`switch the uploader to the IETF draft and upload an image (${ietfPng.length} bytes)`, async () => {
        await page.getByLabel('Resumable protocol').selectOption('ietf');
        assert(new URL(page.url()).searchParams.get('protocol') === 'ietf', `the address is ${page.url()}`);
        const before = uploadRequests.length;
        const storage = await storageText();
        await pickFiles([{ name: ietfName, type: 'image/png', buffer: ietfPng }]);
        await waitUploaded(ietfName);
        await waitStorageChange(storage);
        const f = await findFile(ietfName);
        assert(f && f.file_size === ietfPng.length, `stored as ${JSON.stringify(f)}`);
        const idFromUpload = await uploadRow(ietfName).getAttribute('data-file-id');
        assert(idFromUpload === f.id, `the upload reported file id ${idFromUpload}, the list has ${f.id}`);
        const sent = uploadRequests.slice(before).filter((r) => r.includes('/api/uploads'));
        assert(sent.length > 0 && sent.every((r) => r.endsWith(' draft-6')), `requests: ${sent.join(', ')}`);
        await page.getByLabel('Resumable protocol').selectOption('tus');
        // Leave the list as the later steps expect it.
        await fileItem(ietfName).getByRole('button', { name: `Delete ${ietfName}` }).click();
        await page.getByRole('alertdialog').getByRole('button', { name: 'Delete', exact: true }).click();
        await fileItem(ietfName).waitFor({ state: 'detached' });
        return sent.join(', ');
      });
    }

    // ---- video upload (file picker)
    const video = makeVideo(tmp);
    const videoName = 'e2e-clip.mp4';
    if (!video) {
      note('ffmpeg not found (or failed): video upload step skipped');
    } else {
      await step(`choose a video (${video.length} bytes) with the file picker`, async () => {
        const before = await storageText();
        await pickFiles([{ name: videoName, type: 'video/mp4', buffer: video }]);
        await waitUploaded(videoName);
        await waitStorageChange(before);
        await fileItem(videoName).waitFor();
        const f = await findFile(videoName);
        assert(f && f.file_type === 'video', `video listed as ${f?.file_type}`);
        return `file_type ${f.file_type}`;
      });
    }

    // ---- pause and resume (tus only)
    if (transport === 'tus') {
      await step('pause and resume a tus upload (throttled network)', async () => {
        const name = 'e2e-resume.png';
        const data = makePng(360, 360, { noise: true, seed: 42 });
        const cdp = await page.context().newCDPSession(page);
        await cdp.send('Network.enable');
        await cdp.send('Network.emulateNetworkConditions', { offline: false, latency: 20, downloadThroughput: -1, uploadThroughput: 96 * 1024 });
        try {
          await pickFiles([{ name, type: 'image/png', buffer: data }]);
          const row = uploadRow(name);
          await row.getByRole('button', { name: `Pause ${name}` }).waitFor();
          await page.waitForFunction(
            (n) => {
              const r = [...document.querySelectorAll('.stw-upload')].find((e) => e.querySelector('.stw-upload-name')?.textContent === n);
              return Number(r?.querySelector('[role="progressbar"]')?.getAttribute('aria-valuenow') ?? 0) >= 5;
            },
            name,
            { timeout: 20_000 },
          );
          await row.getByText(/\/s · .* left/).waitFor({ timeout: 5000 }).catch(() => undefined);
          await shot('03b-uploading');
          await row.getByRole('button', { name: `Pause ${name}` }).click();
          await row.getByText(/^Paused/).waitFor();
          const pausedAt = await row.getByRole('progressbar').getAttribute('aria-valuenow');
          await page.waitForTimeout(500);
          await cdp.send('Network.emulateNetworkConditions', { offline: false, latency: 0, downloadThroughput: -1, uploadThroughput: -1 });
          const before = uploadRequests.length;
          await row.getByRole('button', { name: `Resume ${name}` }).click();
          await waitUploaded(name);
          const resumed = uploadRequests.slice(before);
          assert(resumed.some((r) => r.startsWith('HEAD /api/uploads/')), `resume sent ${resumed.join(', ')} (expected a HEAD)`);
          const f = await findFile(name);
          assert(f, 'resumed file not listed');
          const r = await api(`/api/files/${f.id}/download`);
          const body = await r.body();
          assert(Buffer.compare(body, data) === 0, `resumed file differs (${body.length} vs ${data.length} bytes)`);
          await fileItem(name).waitFor();
          return `paused at ${pausedAt}%, resumed with ${resumed.join(', ')}; ${data.length} bytes intact`;
        } finally {
          await cdp.send('Network.emulateNetworkConditions', { offline: false, latency: 0, downloadThroughput: -1, uploadThroughput: -1 }).catch(() => undefined);
          await cdp.detach().catch(() => undefined);
        }
      });
    }

    // ---- favourite
    await step('mark the image as favourite', async () => {
      const btn = fileItem(pngName).getByRole('button', { name: `Favourite ${pngName}` });
      await btn.click();
      await page.waitForFunction((n) => document.querySelector(`li.stw-file[data-file-name="${n}"] .stw-fav`)?.getAttribute('aria-pressed') === 'true', pngName);
      const r = await api('/api/files?favorite=true');
      const ids = (await r.json()).files.map((f) => f.id);
      assert(ids.includes(pngId), 'API does not list the file as favourite');
      await page.getByRole('button', { name: 'Favourites only' }).click();
      await page.waitForFunction(() => document.querySelectorAll('li.stw-file').length === 1);
      await page.getByRole('button', { name: 'Favourites only' }).click();
    });

    // ---- tags
    await step('edit tags', async () => {
      await fileItem(pngName).getByRole('button', { name: `Edit tags of ${pngName}` }).click();
      const input = page.getByLabel(`Tags for ${pngName} (comma separated)`);
      await input.fill(' holiday, e2e ,holiday, ');
      await input.press('Enter');
      await fileItem(pngName).getByRole('button', { name: 'Show files tagged holiday' }).waitFor();
      const f = await findFile(pngName);
      assert(JSON.stringify(f.tags) === JSON.stringify(['holiday', 'e2e']), `tags ${JSON.stringify(f.tags)}`);
      await shot('04-tagged-favourite');
      return `tags ${JSON.stringify(f.tags)}`;
    });

    // ---- search, tabs, list view
    await step('search by name, type tabs, list view', async () => {
      const total = (await (await api('/api/files')).json()).files.length;
      const search = page.getByLabel('Search');
      await search.fill('PICTURE');
      await page.waitForFunction(() => {
        const names = [...document.querySelectorAll('li.stw-file')].map((e) => e.getAttribute('data-file-name'));
        return names.length === 1 && names[0] === 'e2e-picture.png';
      });
      await search.fill('no-such-file-xyz');
      await page.getByText('No files match these filters.').waitFor();
      await search.fill('');
      await page.waitForFunction((n) => document.querySelectorAll('li.stw-file').length === n, total);
      await page.getByRole('tab', { name: 'Images' }).click();
      await page.waitForFunction(() => {
        const names = [...document.querySelectorAll('li.stw-file')].map((e) => e.getAttribute('data-file-name'));
        return names.includes('e2e-picture.png') && !names.some((n) => n.endsWith('.mp4'));
      });
      // keyboard: arrows move between tabs
      await page.getByRole('tab', { name: 'Images' }).press('ArrowLeft');
      assert((await page.getByRole('tab', { name: 'Videos' }).getAttribute('aria-selected')) === 'true', 'ArrowLeft did not select Videos');
      if (video) await fileItem(videoName).waitFor();
      await page.getByRole('tab', { name: 'Videos' }).press('Home');
      assert((await page.getByRole('tab', { name: 'All' }).getAttribute('aria-selected')) === 'true', 'Home did not select All');
      await page.getByRole('button', { name: 'List', exact: true }).click();
      await page.locator('ul[data-view="list"]').waitFor();
      await shot('05-list-view');
      await page.getByRole('button', { name: 'Grid', exact: true }).click();
      await page.locator('ul[data-view="grid"]').waitFor();
    });

    // ---- preview
    await step('preview the image in place', async () => {
      await fileItem(pngName).getByRole('button', { name: `Preview ${pngName}` }).click();
      const dialog = page.getByRole('dialog', { name: pngName });
      await dialog.waitFor();
      const img = dialog.locator('img');
      await page.waitForFunction(() => {
        const i = document.querySelector('.stw-dialog img');
        return i && i.complete && i.naturalWidth > 0;
      });
      const w = await img.evaluate((i) => i.naturalWidth);
      assert(w === 96, `preview width ${w}`);
      await shot('06-preview');
      await page.keyboard.press('Escape');
      await dialog.waitFor({ state: 'detached' });
      return `${w}px wide`;
    });
    if (video) {
      await step('preview the video in place', async () => {
        await fileItem(videoName).getByRole('button', { name: `Preview ${videoName}` }).click();
        const dialog = page.getByRole('dialog', { name: videoName });
        await dialog.waitFor();
        const state = await page.waitForFunction(
          () => {
            const v = document.querySelector('.stw-dialog video');
            if (!v) return null;
            if (v.error) return { error: v.error.code };
            return v.readyState >= 1 ? { ready: v.readyState, w: v.videoWidth } : null;
          },
          null,
          { timeout: 10_000 },
        );
        const s = await state.jsonValue();
        await page.keyboard.press('Escape');
        await dialog.waitFor({ state: 'detached' });
        if (s.error === 4) {
          note('this Chromium build cannot play H.264 (MEDIA_ERR_SRC_NOT_SUPPORTED); the video element and URL were checked only');
          return 'codec unsupported by the browser';
        }
        assert(!s.error, `video error ${s.error}`);
        return `readyState ${s.ready}, ${s.w}px wide`;
      });
    }

    // ---- thumbnails (made by the server after the upload)
    await step('thumbnails appear in the grid once the server has made them', async () => {
      const ok = await page
        .waitForFunction(
          (n) => {
            const img = document.querySelector(`li.stw-file[data-file-name="${n}"] .stw-thumb img`);
            return !!img && img.complete && img.naturalWidth > 0;
          },
          pngName,
          { timeout: 35_000 },
        )
        .then(() => true)
        .catch(() => false);
      const f = await findFile(pngName);
      assert(ok, `no thumbnail shown after 35 s (thumbnail_url: ${JSON.stringify(f?.thumbnail_url)})`);
      const r = await api(f.thumbnail_url);
      assert(r.ok() && /^image\//.test(r.headers()['content-type'] ?? ''), `GET ${f.thumbnail_url} → ${r.status()} ${r.headers()['content-type']}`);
      return `${f.thumbnail_url} (${r.headers()['content-type']})`;
    });

    // ---- download
    await step('download: link bytes and a real browser download match the upload', async () => {
      const link = fileItem(pngName).getByRole('link', { name: `Download ${pngName}` });
      const href = await link.getAttribute('href');
      const r = await page.request.get(new URL(href, uiBase).toString());
      assert(r.status() === 200, `GET ${href} → ${r.status()}`);
      const body = await r.body();
      assert(Buffer.compare(body, png) === 0, `downloaded ${body.length} bytes differ from the ${png.length} uploaded`);
      const disp = r.headers()['content-disposition'] ?? '';
      assert(disp.startsWith('attachment'), `Content-Disposition "${disp}"`);
      const [download] = await Promise.all([page.waitForEvent('download'), link.click()]);
      const saved = path.join(tmp, 'downloaded.png');
      await download.saveAs(saved);
      assert(Buffer.compare(fs.readFileSync(saved), png) === 0, 'browser download differs from the upload');
      return `${body.length} bytes, suggested name ${download.suggestedFilename()}`;
    });

    // ---- share
    await step('share: signed link copied to the clipboard works without a session', async () => {
      await fileItem(pngName).getByRole('button', { name: `Copy share link for ${pngName}` }).click();
      let url;
      const status = page.getByTestId('files-status');
      try {
        await page.waitForFunction(() => /copied/.test(document.querySelector('[data-testid="files-status"]')?.textContent ?? ''), null, { timeout: 5000 });
        url = await page.evaluate(() => navigator.clipboard.readText());
      } catch {
        const field = page.getByLabel('Share link');
        await field.waitFor({ timeout: 2000 });
        url = await field.inputValue();
        note('clipboard was not available; the share dialog showed the link instead');
        await page.keyboard.press('Escape');
      }
      assert(/\/s\//.test(url), `clipboard holds "${url}" (${await status.innerText()})`);
      const anon = await pwRequest.newContext();
      const r = await anon.get(url);
      const body = await r.body();
      await anon.dispose();
      assert(r.status() === 200, `GET signed URL without a session → ${r.status()}`);
      assert(Buffer.compare(body, png) === 0, 'signed URL bytes differ');
      return url.replace(/\/s\/.{8}.*/, '/s/…');
    });

    // ---- delete
    await step('delete with confirmation; usage drops', async () => {
      const before = await storageText();
      await fileItem(pngName).getByRole('button', { name: `Delete ${pngName}` }).click();
      const dialog = page.getByRole('alertdialog');
      await dialog.waitFor();
      await shot('07-confirm-delete');
      // Cancel first: nothing happens.
      await dialog.getByRole('button', { name: 'Cancel' }).click();
      await dialog.waitFor({ state: 'detached' });
      assert(await fileItem(pngName).count(), 'file vanished after Cancel');
      await fileItem(pngName).getByRole('button', { name: `Delete ${pngName}` }).click();
      await page.getByRole('alertdialog').getByRole('button', { name: 'Delete', exact: true }).click();
      await fileItem(pngName).waitFor({ state: 'detached' });
      const after = await waitStorageChange(before);
      const r = await api(`/api/files/${pngId}`);
      assert(r.status() === 404, `GET deleted file → ${r.status()}`);
      return `storage "${before}" → "${after}"`;
    });

    // ---- thresholds and quota full
    const usage = async () => (await api('/api/storage/usage')).json();
    let fillNo = 0;
    const fillTo = async (fraction) => {
      const u = await usage();
      const target = Math.ceil(u.max_bytes * fraction) - u.total_bytes;
      assert(target > 200, `cannot fill to ${fraction * 100}%: only ${target} bytes to add`);
      const name = `fill-${++fillNo}.png`;
      const data = makePng(32, 32, { noise: true, seed: 100 + fillNo, size: target });
      assert(data.length === target, `padded PNG is ${data.length} bytes, wanted ${target}`);
      const before = await storageText();
      await pickFiles([{ name, type: 'image/png', buffer: data }]);
      await waitUploaded(name);
      await waitStorageChange(before);
      return (await usage()).percent_used;
    };
    const warningLevel = () => page.locator('.stw-warning').getAttribute('data-level', { timeout: 5000 });

    await step('≥ 80 %: warning shown', async () => {
      const pct = await fillTo(0.85);
      await page.locator('.stw-warning[data-level="warn"]').waitFor();
      await shot('08-warn');
      return `${pct}% used`;
    });
    await step('≥ 95 %: critical warning shown', async () => {
      const pct = await fillTo(0.96);
      await page.locator('.stw-warning[data-level="critical"]').waitFor();
      await shot('09-critical');
      return `${pct}% used`;
    });
    await step('a file bigger than the space left is refused before sending, in plain words', async () => {
      const u = await usage();
      const left = u.max_bytes - u.total_bytes;
      const name = 'too-big.png';
      const data = makePng(16, 16, { size: left + 50_000 });
      const sent = uploadRequests.length;
      await pickFiles([{ name, type: 'image/png', buffer: data }]);
      const row = uploadRow(name);
      await page.waitForFunction(() => [...document.querySelectorAll('.stw-upload')].some((r) => r.getAttribute('data-status') === 'rejected'));
      const text = await row.innerText();
      assert(/only .* is left/.test(text), `message: ${text}`);
      assert(uploadRequests.length === sent, 'a request was sent anyway');
      return text.split('\n').find((l) => l.includes('left'));
    });
    await step('server refuses an over-quota upload with 507 quota_exceeded', async () => {
      const u = await usage();
      const len = u.max_bytes - u.total_bytes + 1;
      const r =
        transport === 'tus'
          ? await api('/api/uploads', {
              method: 'POST',
              headers: { 'Tus-Resumable': '1.0.0', 'Upload-Length': String(len), 'Upload-Metadata': `filename ${Buffer.from('x.png').toString('base64')}` },
            })
          : await api('/api/files/upload', {
              method: 'POST',
              multipart: { file: { name: 'x.png', mimeType: 'image/png', buffer: makePng(16, 16, { size: len }) } },
            });
      assert(r.status() === 507, `status ${r.status()}`);
      const body = await r.json();
      assert(body?.error?.code === 'quota_exceeded', `body ${JSON.stringify(body)}`);
      return `${r.status()} ${body.error.code}: ${body.error.message}`;
    });
    await step('100 %: storage full, uploads blocked with a clear message', async () => {
      let pct;
      if (transport === 'tus') {
        pct = await fillTo(1);
      } else {
        // A multipart upload reserves its Content-Length (file + form overhead), so
        // the last bytes of a quota cannot be filled this way: lower the quota to
        // the usage with the admin API instead.
        const u = await usage();
        const r = await fetch(`${base}/api/admin/users/${encodeURIComponent(u.user_id)}/quota`, {
          method: 'PUT',
          headers: { Authorization: `Bearer ${adminToken}`, 'Content-Type': 'application/json' },
          body: JSON.stringify({ max_bytes: u.total_bytes }),
        });
        assert(r.ok, `PUT /api/admin/users/…/quota → ${r.status}`);
        note('multipart fallback: quota lowered to the usage with the admin API to reach "full"');
        await page.reload();
        pct = (await usage()).percent_used;
      }
      await page.locator('.stw-warning[data-level="full"]').waitFor();
      const msg = await page.locator('.stw-warning').innerText();
      assert(/storage is full/i.test(msg) && /delete files/i.test(msg), `message: ${msg}`);
      await page.getByText('Uploads are turned off: your storage is full.').waitFor();
      assert(await page.getByTestId('file-input').isDisabled(), 'file input still enabled');
      assert((await page.getByRole('button', { name: 'Choose files', exact: true }).count()) === 0, '"Choose files" still offered');
      const meter = await page.getByRole('meter', { name: 'Storage used' }).getAttribute('aria-valuenow');
      assert(meter === '100', `meter at ${meter}`);
      await shot('10-full');
      return `${pct}% used; level ${await warningLevel()}`;
    });
    await step('deleting a file re-enables uploads', async () => {
      await fileItem('fill-1.png').getByRole('button', { name: 'Delete fill-1.png' }).click();
      await page.getByRole('alertdialog').getByRole('button', { name: 'Delete', exact: true }).click();
      await fileItem('fill-1.png').waitFor({ state: 'detached' });
      await page.getByRole('button', { name: 'Choose files', exact: true }).waitFor();
      assert(!(await page.getByTestId('file-input').isDisabled()), 'file input still disabled');
    });

    // ---- keyboard and focus
    await step('keyboard: Tab reaches controls and focus is visible', async () => {
      await page.mouse.click(5, 5);
      const seen = [];
      let styled = null;
      for (let i = 0; i < 40; i++) {
        await page.keyboard.press('Tab');
        const info = await page.evaluate(() => {
          const el = document.activeElement;
          if (!el || el === document.body) return null;
          const cs = getComputedStyle(el);
          const label = el.getAttribute('aria-label') || el.labels?.[0]?.textContent?.trim() || el.textContent?.trim().slice(0, 40) || el.tagName;
          return { label, outline: cs.outlineStyle, width: cs.outlineWidth };
        });
        if (!info) continue;
        seen.push(info.label);
        if (info.label === 'Choose files') styled = info;
        if (styled && seen.includes('Search')) break;
      }
      assert(styled, `"Choose files" not reached by Tab (saw ${seen.join(', ')})`);
      assert(styled.outline !== 'none' && styled.width !== '0px', `no visible focus outline (${styled.outline} ${styled.width})`);
      await shot('11-keyboard-focus', { fullPage: false });
      return `${seen.length} stops`;
    });

    // ---- narrow screen
    await step('usable at 375 px width (no horizontal scrolling)', async () => {
      await page.setViewportSize({ width: 375, height: 812 });
      await page.waitForTimeout(300);
      const sw = await page.evaluate(() => document.documentElement.scrollWidth);
      await shot('12-mobile-375');
      assert(sw <= 375, `page is ${sw}px wide`);
      await page.setViewportSize({ width: 1280, height: 900 });
      return `scrollWidth ${sw}`;
    });
    await shot('00-overview');

    await step('no console errors', async () => {
      assert(consoleErrors.length === 0, consoleErrors.join(' | '));
      return ignoredConsole.length ? `${ignoredConsole.length} expected 401/404 resource notes ignored` : undefined;
    });

    await step('sign out returns to the sign-in screen', async () => {
      await page.getByRole('button', { name: 'Sign out' }).click();
      await page.getByRole('heading', { name: 'Sign in' }).waitFor();
      const r = await api('/api/storage/usage');
      assert(r.status() === 401, `usage after sign-out → ${r.status()}`);
    });
  } catch (e) {
    if (!(e instanceof Abort)) {
      results.push({ name: 'unexpected error', ok: false, error: e });
      log(`FAIL unexpected: ${e?.stack ?? e}`);
    }
  } finally {
    await cleanup();
  }

  // ---- screenshots into docs
  try {
    const shots = fs.readdirSync(shotsDir).filter((f) => f.endsWith('.png') && !f.startsWith('fail-'));
    if (bin.endsWith('.mjs')) {
      log(`screenshots: ${shots.length} in e2e/screenshots/ (not copied to docs/: stand-in server)`);
    } else if (shots.length) {
      fs.mkdirSync(docsShotsDir, { recursive: true });
      for (const f of fs.readdirSync(docsShotsDir)) if (f.endsWith('.png')) fs.rmSync(path.join(docsShotsDir, f));
      for (const f of shots) fs.copyFileSync(path.join(shotsDir, f), path.join(docsShotsDir, f));
      log(`screenshots: ${shots.length} in e2e/screenshots/, copied to docs/screenshots/`);
    }
  } catch (e) {
    log(`could not copy screenshots: ${e.message}`);
  }

  const failed = results.filter((r) => !r.ok);
  if (failed.length) {
    log('\nfailed steps:');
    for (const f of failed) log(`  - ${f.name}: ${f.error instanceof Error ? f.error.message : f.error}`);
    try {
      const lines = fs.readFileSync(serverLog, 'utf8').trimEnd().split('\n');
      log(`\nlast server log lines (${serverLog}):`);
      for (const l of lines.slice(-30)) log(`  | ${l}`);
    } catch {
      // no log
    }
  } else {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
  if (notes.length) {
    log('\nnotes:');
    for (const n of notes) log(`  - ${n}`);
  }
  const passed = results.length - failed.length;
  log(`${passed} passed, ${failed.length} failed`);
  process.exitCode = failed.length ? 1 : 0;
}

const crashGuard = setTimeout(() => {
  console.log('e2e timed out after 10 minutes');
  console.log(`${results.filter((r) => r.ok).length} passed, ${results.filter((r) => !r.ok).length + 1} failed`);
  process.exit(1);
}, 600_000);
crashGuard.unref();

main().catch((e) => {
  console.error(e);
  console.log(`0 passed, 1 failed`);
  process.exit(1);
});
