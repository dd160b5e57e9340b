import { vi } from 'vitest';
import { StowageClient, type StorageUsage, type StowageFile } from '../src/lib';

export interface Call {
  method: string;
  path: string;
  url: URL;
  headers: Headers;
  body: unknown;
  credentials: RequestCredentials | undefined;
}

type Handler = ((call: Call) => unknown) | object;

export function json(body: unknown, status = 200, headers: Record<string, string> = {}): Response {
  return new Response(JSON.stringify(body), { status, headers: { 'Content-Type': 'application/json', ...headers } });
}

export function apiError(status: number, code: string, message = code): Response {
  return json({ error: { code, message } }, status);
}

/**
 * A fetch stand-in routing "METHOD /path" (no query) to handlers; a handler
 * returning a plain value answers it as JSON 200. Unknown routes answer 404.
 */
export function mockFetch(routes: Record<string, Handler>) {
  const calls: Call[] = [];
  const fn = vi.fn(async (input: RequestInfo | URL, init: RequestInit = {}) => {
    const url = new URL(String(input), 'http://localhost');
    const method = (init.method ?? 'GET').toUpperCase();
    let body: unknown = init.body;
    if (typeof body === 'string') {
      try {
        body = JSON.parse(body);
      } catch {
        // keep the string
      }
    }
    const call: Call = { method, path: url.pathname, url, headers: new Headers(init.headers), body, credentials: init.credentials };
    calls.push(call);
    const handler = routes[`${method} ${url.pathname}`];
    if (handler === undefined) return apiError(404, 'not_found');
    const out = typeof handler === 'function' ? await (handler as (c: Call) => unknown)(call) : handler;
    return out instanceof Response ? out : json(out);
  });
  return { fetch: fn as unknown as typeof fetch, calls };
}

export function usageOf(total: number, max: number, extra: Partial<StorageUsage> = {}): StorageUsage {
  return {
    user_id: 'user_1',
    total_bytes: total,
    max_bytes: max,
    file_count: 1,
    percent_used: max > 0 ? Math.round((total / max) * 10000) / 100 : 100,
    by_type: {
      video: { bytes: 0, count: 0 },
      image: { bytes: total, count: 1 },
      audio: { bytes: 0, count: 0 },
      scene: { bytes: 0, count: 0 },
      project: { bytes: 0, count: 0 },
    },
    ...extra,
  };
}

let n = 0;
export function fileOf(p: Partial<StowageFile> = {}): StowageFile {
  n++;
  return {
    id: `00000000-0000-4000-8000-${String(n).padStart(12, '0')}`,
    file_name: `file-${n}.png`,
    file_type: 'image',
    mime_type: 'image/png',
    file_size: 1024 * n,
    sha256: 'ab'.repeat(32),
    resolution: null,
    duration: null,
    package_name: null,
    tags: [],
    is_favorite: false,
    upload_date: '2026-11-24T10:00:00Z',
    thumbnail_url: null,
    ...p,
  };
}

export function clientWith(routes: Record<string, Handler>, getToken?: () => Promise<string | null>) {
  const m = mockFetch(routes);
  return { client: new StowageClient({ fetch: m.fetch, getToken }), calls: m.calls, fetch: m.fetch };
}
