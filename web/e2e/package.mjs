#!/usr/bin/env node
// The npm package as a host app gets it: packs web/ (`npm pack`, which builds
// the library), installs the tarball into a throwaway Vite + React app made
// from the template in e2e/host-app/, type-checks and builds that app, serves
// it on one loopback port and a real `stowage serve` on another, and drives
// Chromium through it: the package's FileUploader stores a file that its
// FileManager then lists and its StorageIndicator counts, every request
// authenticated by the app's `getToken` (an RS256 session token minted by
// this script, the server verifying it with the matching public key).
//
//   STOWAGE_BIN=/path/to/stowage node e2e/package.mjs   (default: ../target/debug/stowage)
//
// The host app lives in node_modules/.cache/stowage-host-app/ and is
// reinstalled only when the template or the packed tarball changed. Ends
// with `N passed, M failed`; the exit status is non-zero on any failure.
import { execFileSync, spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { freePort, makePng, waitHealthy } from './common.mjs';

const webDir = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const templateDir = path.join(webDir, 'e2e', 'host-app');
const appDir = path.join(webDir, 'node_modules', '.cache', 'stowage-host-app');
const bin = path.resolve(webDir, process.env.STOWAGE_BIN ?? '../target/debug/stowage');
const chromiumPath = process.env.CHROMIUM ?? '/usr/bin/chromium';
const USER = 'host-app-user';
const QUOTA = 4 * 1024 * 1024;

const results = [];
let stepNo = 0;

async function step(name, fn, { required = false } = {}) {
  stepNo++;
  const started = Date.now();
  try {
    const detail = await fn();
    results.push({ name, ok: true });
    console.log(`ok   ${stepNo} ${name}${detail ? ` — ${detail}` : ''} (${Date.now() - started} ms)`);
  } catch (e) {
    results.push({ name, ok: false });
    console.log(`FAIL ${stepNo} ${name}: ${e instanceof Error ? e.message : e}`);
    if (required) throw new Abort();
  }
}
class Abort extends Error {}
function assert(cond, msg) {
  if (!cond) throw new Error(msg);
}

function run(cmd, args, cwd) {
  return execFileSync(cmd, args, { cwd, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

/** A compact RS256 JWT, as an identity provider would issue. */
function signJwt(privateKey, claims) {
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString('base64url');
  const input = `${b64({ alg: 'RS256', typ: 'JWT' })}.${b64(claims)}`;
  const sig = crypto.sign('RSA-SHA256', Buffer.from(input), privateKey).toString('base64url');
  return `${input}.${sig}`;
}

function hashFiles(dir, extra) {
  const h = crypto.createHash('sha256');
  const walk = (d) => {
    for (const e of fs.readdirSync(d, { withFileTypes: true }).sort((a, b) => a.name.localeCompare(b.name))) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) walk(p);
      else h.update(`${path.relative(dir, p)}\0`).update(fs.readFileSync(p));
    }
  };
  walk(dir);
  h.update(extra);
  return h.digest('hex');
}

/** Serves the built host app, and `/session-token`: a fresh token per call, like Clerk's session refresh. */
function startHostServer(port, distDir, mintToken) {
  const types = { '.html': 'text/html; charset=utf-8', '.js': 'text/javascript', '.css': 'text/css' };
  const srv = http.createServer((req, res) => {
    const p = new URL(req.url, 'http://x').pathname;
    if (p === '/session-token') {
      res.writeHead(200, { 'Content-Type': 'application/json', 'Cache-Control': 'no-store' });
      res.end(JSON.stringify({ token: mintToken() }));
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

async function main() {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'stowage-package-'));
  let server = null;
  let host = null;
  let browser = null;
  const serverLog = path.join(tmp, 'server.log');
  const cleanup = async () => {
    await browser?.close().catch(() => {});
    host?.close();
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
    // ---- the package
    let tarball = '';
    let integrity = '';
    await step(
      'npm pack builds the library and packs ESM, declarations and CSS',
      async () => {
        // Build first, then pack without scripts: the build's own output (which
        // varies with CI settings) must not mix with npm's JSON on stdout.
        run('npm', ['run', '--silent', 'build:lib'], webDir);
        const out = run('npm', ['pack', '--json', '--silent', '--ignore-scripts', '--pack-destination', tmp], webDir);
        const [info] = JSON.parse(out);
        tarball = path.join(tmp, info.filename);
        integrity = info.integrity;
        const files = info.files.map((f) => f.path);
        for (const want of ['package.json', 'dist-lib/index.js', 'dist-lib/index.d.ts', 'dist-lib/api.d.ts', 'dist-lib/openapi.d.ts', 'dist-lib/stowage.css', 'dist-lib/openapi.json']) {
          assert(files.includes(want), `${want} is in the tarball (${files.join(', ')})`);
        }
        const stray = files.filter((f) => f.startsWith('src/') || f.startsWith('dist/') || f.startsWith('e2e/') || f.startsWith('node_modules/'));
        assert(stray.length === 0, `only the build is shipped, not ${stray.join(', ')}`);
        const js = fs.readFileSync(path.join(webDir, 'dist-lib', 'index.js'), 'utf8');
        assert(/from ["']react["']/.test(js) && !js.includes('react.production'), 'React stays a peer import, not bundled');
        return `${info.name}@${info.version}, ${files.length} files, ${info.size} bytes`;
      },
      { required: true },
    );

    await step(
      'the package installs into a fresh Vite + React app',
      async () => {
        const stamp = path.join(appDir, '.stamp');
        const want = hashFiles(templateDir, integrity);
        const same = fs.existsSync(stamp) && fs.readFileSync(stamp, 'utf8') === want && fs.existsSync(path.join(appDir, 'node_modules'));
        if (same) return `unchanged, kept ${path.relative(webDir, appDir)}`;
        fs.rmSync(appDir, { recursive: true, force: true });
        fs.cpSync(templateDir, appDir, { recursive: true });
        fs.copyFileSync(tarball, path.join(appDir, 'stowage-react.tgz'));
        // The template's lockfile pins every package of the host app; the
        // entry of the tarball carries no checksum, as it changes with each
        // build of the library.
        run('npm', ['ci', '--prefer-offline', '--no-audit', '--no-fund', '--loglevel=error'], appDir);
        fs.writeFileSync(stamp, want);
        return `installed in ${path.relative(webDir, appDir)}`;
      },
      { required: true },
    );

    await step(
      'the host app type-checks against the shipped declarations and builds',
      async () => {
        run('npx', ['--no-install', 'tsc', '--noEmit'], appDir);
        run('npx', ['--no-install', 'vite', 'build', '--logLevel', 'error'], appDir);
        assert(fs.existsSync(path.join(appDir, 'dist', 'index.html')), 'dist/index.html built');
        return 'tsc --noEmit, vite build';
      },
      { required: true },
    );

    // ---- the server, on another origin than the app
    const { publicKey, privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
    const mintToken = () => {
      const now = Math.floor(Date.now() / 1000);
      return signJwt(privateKey, { sub: USER, iat: now, nbf: now - 5, exp: now + 60 });
    };
    const hostPort = await freePort();
    const hostBase = `http://127.0.0.1:${hostPort}`;
    let base = '';
    await step(
      'start stowage serve with JWT auth and the app as a CORS origin',
      async () => {
        assert(fs.existsSync(bin), `no server binary at ${bin} (run \`cargo build\` or set STOWAGE_BIN)`);
        const port = await freePort();
        base = `http://127.0.0.1:${port}`;
        const env = {
          ...process.env,
          STOWAGE_BIND: `127.0.0.1:${port}`,
          STOWAGE_DATA_DIR: tmp,
          STOWAGE_DATABASE_URL: `sqlite://${tmp}/stowage.db`,
          STOWAGE_STORAGE_ROOT: `${tmp}/users`,
          STOWAGE_DEFAULT_QUOTA: String(QUOTA),
          STOWAGE_JWT_PUBLIC_KEY: publicKey.export({ type: 'spki', format: 'pem' }),
          STOWAGE_CORS_ORIGINS: hostBase,
          RUST_LOG: process.env.RUST_LOG ?? 'info',
        };
        for (const k of ['CLERK_JWT_KEY', 'STOWAGE_JWKS_URL', 'STOWAGE_JWT_ISSUER', 'STOWAGE_AUTHORIZED_PARTIES', 'PORT', 'DATABASE_URL']) delete env[k];
        const out = fs.openSync(serverLog, 'a');
        server = spawn(bin, ['serve'], { env, cwd: tmp, stdio: ['ignore', out, out] });
        await waitHealthy(base, server, 60_000);
        return base;
      },
      { required: true },
    );
    host = await startHostServer(hostPort, path.join(appDir, 'dist'), mintToken);

    // ---- the browser
    browser = await chromium.launch({
      executablePath: chromiumPath,
      headless: true,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    });
    const page = await (await browser.newContext({ viewport: { width: 1280, height: 900 } })).newPage();
    page.setDefaultTimeout(15_000);
    const consoleErrors = [];
    page.on('console', (m) => {
      if (m.type() === 'error' && !/status of 404/.test(m.text())) consoleErrors.push(m.text());
    });
    page.on('pageerror', (e) => consoleErrors.push(`page error: ${e.message}`));
    const toServer = [];
    page.on('request', (r) => {
      if (r.url().startsWith(base) && r.method() !== 'OPTIONS') toServer.push({ what: `${r.method()} ${new URL(r.url()).pathname}`, headers: r.headers() });
    });
    const storageText = () => page.getByTestId('storage-text').innerText();

    await step(
      'the app loads from its own origin and the StorageIndicator shows the empty quota',
      async () => {
        await page.goto(`${hostBase}/?server=${encodeURIComponent(base)}`);
        await page.getByRole('heading', { name: 'My files' }).waitFor();
        await page.getByTestId('storage-text').waitFor();
        const text = await storageText();
        assert(text === '0 bytes of 4 MiB used', `indicator reads "${text}"`);
        return text;
      },
      { required: true },
    );

    const png = makePng(64, 48, { noise: true, seed: 11 });
    const name = 'host-app-picture.png';
    await step(`FileUploader stores a ${png.length}-byte image`, async () => {
      await page.getByTestId('file-input').setInputFiles([{ name, mimeType: 'image/png', buffer: png }]);
      await page.waitForFunction((n) => window.uploaded.some((u) => u.startsWith(`${n} `)), name, { timeout: 30_000 });
      const row = page.locator('.stw-upload', { has: page.locator('.stw-upload-name', { hasText: name }) }).last();
      assert((await row.getAttribute('data-status')) === 'done', `upload row is ${await row.getAttribute('data-status')}`);
      return (await page.evaluate(() => window.uploaded)).join(', ');
    });

    await step('FileManager lists the file', async () => {
      await page.locator(`li.stw-file[data-file-name="${name}"]`).waitFor();
      const r = await fetch(`${base}/api/files`, { headers: { Authorization: `Bearer ${mintToken()}` } });
      const files = (await r.json()).files;
      assert(files.length === 1 && files[0].file_name === name && files[0].file_size === png.length, `server lists ${JSON.stringify(files)}`);
      return `${name}, stored for ${USER}`;
    });

    await step('StorageIndicator counts the upload', async () => {
      await page.waitForFunction(() => document.querySelector('[data-testid="storage-text"]')?.textContent !== '0 bytes of 4 MiB used');
      const text = await storageText();
      const usage = await (await fetch(`${base}/api/storage/usage`, { headers: { Authorization: `Bearer ${mintToken()}` } })).json();
      assert(usage.total_bytes === png.length, `server usage ${usage.total_bytes}`);
      const count = await page.locator('.stw-storage').innerText();
      assert(count.includes('1 file'), `indicator says "${count}"`);
      return text;
    });

    await step('every request to the server carried the getToken bearer token, no cookie', async () => {
      assert(toServer.length > 0, 'requests were made');
      const bad = toServer.filter((r) => !/^Bearer [\w-]+\.[\w-]+\.[\w-]+$/.test(r.headers.authorization ?? '') || r.headers.cookie);
      assert(bad.length === 0, `without the token: ${bad.map((r) => r.what).join(', ')}`);
      const asked = await page.evaluate(() => window.tokenRequests);
      assert(asked > 0, 'getToken was called');
      const uploads = toServer.filter((r) => r.what.startsWith('POST /api/uploads') || r.what.startsWith('PATCH /api/uploads'));
      assert(uploads.length > 0, `the upload went through tus (${toServer.map((r) => r.what).join(', ')})`);
      return `${toServer.length} requests, getToken called ${asked} times`;
    });

    await step('no errors in the browser console', async () => {
      assert(consoleErrors.length === 0, consoleErrors.join(' | '));
    });
  } catch (e) {
    if (!(e instanceof Abort)) {
      console.log(`FAIL ${e instanceof Error ? e.stack : e}`);
      results.push({ ok: false });
    }
  } finally {
    await cleanup();
  }
  const failed = results.filter((r) => !r.ok).length;
  console.log(`\n${results.length - failed} passed, ${failed} failed`);
  if (failed) {
    try {
      console.log(`server log (${serverLog}):\n${fs.readFileSync(serverLog, 'utf8').split('\n').slice(-30).join('\n')}`);
    } catch {
      // no log
    }
    process.exitCode = 1;
  } else {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}

await main();
