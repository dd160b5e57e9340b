import { describe, expect, it } from 'vitest';
import { ApiError, StowageClient, describeError, formatBytes, parseError } from '../src/lib';
import { apiError, clientWith, fileOf, usageOf } from './helpers';

describe('formatBytes', () => {
  it('uses binary units and plain words', () => {
    expect(formatBytes(0)).toBe('0 bytes');
    expect(formatBytes(1)).toBe('1 byte');
    expect(formatBytes(1023)).toBe('1023 bytes');
    expect(formatBytes(1536)).toBe('1.5 KiB');
    expect(formatBytes(3 * 1024 * 1024)).toBe('3 MiB');
    expect(formatBytes(2 * 1024 ** 3)).toBe('2 GiB');
    expect(formatBytes(10737418240)).toBe('10 GiB');
  });
});

describe('errors', () => {
  it('parses the server error envelope', () => {
    const e = parseError(507, JSON.stringify({ error: { code: 'quota_exceeded', message: 'quota' } }));
    expect(e.code).toBe('quota_exceeded');
    expect(e.status).toBe(507);
    expect(e.message).toBe('quota');
  });
  it('falls back to a code from the status when the body is not JSON', () => {
    expect(parseError(413, '<html>').code).toBe('file_too_large');
    expect(parseError(415, '').code).toBe('unsupported_media_type');
    expect(parseError(0, '').code).toBe('network_error');
  });
  it('explains errors in plain words', () => {
    expect(describeError(new ApiError(507, 'quota_exceeded', 'x'))).toMatch(/Not enough storage space/);
    expect(describeError(new ApiError(415, 'unsupported_media_type', 'x'))).toMatch(/not supported/);
    expect(describeError(new ApiError(413, 'file_too_large', 'x'))).toMatch(/larger than the per-file limit/);
  });
});

describe('StowageClient', () => {
  it('sends a bearer token from getToken', async () => {
    const { client, calls } = clientWith({ 'GET /api/storage/usage': usageOf(1, 10) }, async () => 'tok123');
    await client.usage();
    expect(calls[0].headers.get('Authorization')).toBe('Bearer tok123');
    expect(calls[0].credentials).toBe('same-origin');
  });

  it('uses the session cookie (credentials: include) without getToken', async () => {
    const { client, calls } = clientWith({ 'GET /api/storage/usage': usageOf(1, 10) });
    await client.usage();
    expect(calls[0].headers.get('Authorization')).toBeNull();
    expect(calls[0].credentials).toBe('include');
  });

  it('prefixes the base URL', async () => {
    const seen: string[] = [];
    const client = new StowageClient({
      baseUrl: 'https://files.example.com/',
      fetch: (async (u: RequestInfo | URL) => {
        seen.push(String(u));
        return new Response('{"files":[],"next_cursor":null}', { status: 200 });
      }) as typeof fetch,
    });
    await client.listFiles();
    expect(seen).toEqual(['https://files.example.com/api/files']);
    expect(client.downloadUrl('a b', true)).toBe('https://files.example.com/api/files/a%20b/download?inline=1');
    expect(client.absoluteUrl('/s/xyz')).toBe('https://files.example.com/s/xyz');
  });

  it('builds list queries', async () => {
    const { client, calls } = clientWith({ 'GET /api/files': { files: [], next_cursor: null } });
    await client.listFiles({ type: 'video', favorite: true, tag: 'intro', q: 'cl ip', sort: 'file_size', order: 'asc', limit: 20, cursor: 'c1' });
    const p = calls[0].url.searchParams;
    expect(Object.fromEntries(p)).toEqual({
      type: 'video',
      favorite: 'true',
      tag: 'intro',
      q: 'cl ip',
      sort: 'file_size',
      order: 'asc',
      limit: '20',
      cursor: 'c1',
    });
  });

  it('sends favourite, tags and signed-url bodies', async () => {
    const f = fileOf();
    const { client, calls } = clientWith({
      [`POST /api/files/${f.id}/favorite`]: f,
      [`PUT /api/files/${f.id}/tags`]: f,
      [`POST /api/files/${f.id}/signed-url`]: { url: '/s/abc', expires_at: '2026-11-24T11:00:00Z' },
      [`DELETE /api/files/${f.id}`]: () => new Response(null, { status: 204 }),
    });
    await client.setFavorite(f.id, true);
    await client.setTags(f.id, ['a', 'b']);
    await client.signedUrl(f.id, 60);
    await client.deleteFile(f.id);
    expect(calls.map((c) => [c.method, c.body])).toEqual([
      ['POST', { is_favorite: true }],
      ['PUT', { tags: ['a', 'b'] }],
      ['POST', { expires_in: 60 }],
      ['DELETE', undefined],
    ]);
    expect(calls[0].headers.get('Content-Type')).toBe('application/json');
  });

  it('throws ApiError with the server code', async () => {
    const { client } = clientWith({ 'GET /api/storage/usage': () => apiError(401, 'unauthorized', 'sign in') });
    await expect(client.usage()).rejects.toMatchObject({ status: 401, code: 'unauthorized', message: 'sign in' });
  });

  it('maps a network failure to network_error', async () => {
    const client = new StowageClient({
      fetch: (async () => {
        throw new TypeError('Failed to fetch');
      }) as typeof fetch,
    });
    await expect(client.usage()).rejects.toMatchObject({ status: 0, code: 'network_error' });
  });

  it('reports dev sign-in off when the status route is missing', async () => {
    const { client } = clientWith({});
    await expect(client.devStatus()).resolves.toEqual({ dev_login: false });
  });
});
