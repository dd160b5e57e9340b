// Typed client for the stowage HTTP API (see the product contract, section 3).

// The wire types are generated from the server's OpenAPI description
// (openapi.json, a committed copy of `GET /openapi.json`; regenerate
// openapi.ts with `npm run gen:api`), so they cannot drift from the server.
import type { components, operations } from './openapi';

export type { components, operations, paths } from './openapi';

type Schemas = components['schemas'];

export type FileType = Schemas['FileType'];
export const FILE_TYPES: readonly FileType[] = ['video', 'image', 'audio', 'scene', 'project'];

export type StowageFile = Schemas['File'];
export type TypeUsage = Schemas['TypeUsage'];
export type StorageUsage = Schemas['Usage'];
export type FileList = Schemas['FileList'];
export type SignedUrl = Schemas['SignedUrl'];

type ListQuery = NonNullable<operations['listFiles']['parameters']['query']>;
export type SortField = NonNullable<ListQuery['sort']>;
export type SortOrder = NonNullable<ListQuery['order']>;

/** Query of `GET /api/files`; `cursor` may be the `null` of a last page. */
export interface ListParams extends Omit<ListQuery, 'cursor'> {
  cursor?: string | null;
}

export type GetToken = () => Promise<string | null>;

export interface ClientOptions {
  /** Origin (and optional path prefix) of the stowage server. Empty = same origin. */
  baseUrl?: string;
  /**
   * Returns a session token sent as `Authorization: Bearer`. Without it, requests
   * rely on the `__session` cookie and are sent with credentials.
   */
  getToken?: GetToken;
  /** Replacement for the global fetch (tests). */
  fetch?: typeof fetch;
}

/** An error answered by the server (`{"error":{"code","message"}}`) or a network failure. */
export class ApiError extends Error {
  readonly status: number;
  readonly code: string;
  constructor(status: number, code: string, message: string) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.code = code;
  }
}

const STATUS_CODES: Record<number, string> = {
  400: 'invalid_request',
  401: 'unauthorized',
  403: 'forbidden',
  404: 'not_found',
  409: 'conflict',
  412: 'unsupported_version',
  413: 'file_too_large',
  415: 'unsupported_media_type',
  416: 'range_not_satisfiable',
  422: 'malware_detected',
  423: 'locked',
  429: 'rate_limited',
  460: 'checksum_mismatch',
  503: 'unavailable',
  507: 'quota_exceeded',
};

/** Parses an error body; falls back to a code derived from the status. */
export function parseError(status: number, body: string | null | undefined): ApiError {
  let code = STATUS_CODES[status] ?? (status === 0 ? 'network_error' : 'server_error');
  let message = '';
  if (body) {
    try {
      const parsed = JSON.parse(body) as { error?: { code?: unknown; message?: unknown } };
      if (parsed && parsed.error) {
        if (typeof parsed.error.code === 'string') code = parsed.error.code;
        if (typeof parsed.error.message === 'string') message = parsed.error.message;
      }
    } catch {
      // not JSON: keep the defaults
    }
  }
  return new ApiError(status, code, message || `Request failed (${status || 'network error'})`);
}

const UNITS = ['bytes', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];

/** Human-readable size: 0 bytes, 512 bytes, 1.5 KiB, 2 GiB. */
export function formatBytes(n: number): string {
  if (!Number.isFinite(n) || n < 0) return '—';
  if (n < 1024) return `${n} ${n === 1 ? 'byte' : 'bytes'}`;
  let v = n;
  let i = 0;
  while (v >= 1024 && i < UNITS.length - 1) {
    v /= 1024;
    i++;
  }
  const digits = v >= 100 || Number.isInteger(v) ? 0 : 1;
  return `${v.toFixed(digits).replace(/\.0$/, '')} ${UNITS[i]}`;
}

/** Plain-words explanation of an error, suitable for end users. */
export function describeError(err: unknown): string {
  if (err instanceof ApiError) {
    switch (err.code) {
      case 'file_too_large':
        return 'This file is larger than the per-file limit.';
      case 'unsupported_media_type':
        return 'This kind of file is not supported. Upload videos, images, audio, scenes or projects.';
      case 'quota_exceeded':
        return 'Not enough storage space left for this file. Delete files you no longer need or upgrade your plan.';
      case 'unauthorized':
        return 'Your session has ended. Sign in again.';
      case 'forbidden':
        return 'You are not allowed to do this.';
      case 'not_found':
        return 'This file no longer exists.';
      case 'rate_limited':
        return 'Too many requests. Wait a moment and try again.';
      case 'malware_detected':
        return 'This file was rejected because it appears to contain malware.';
      case 'checksum_mismatch':
        return 'The file was damaged in transit. Try again.';
      case 'network_error':
        return 'Could not reach the server. Check your connection and try again.';
      case 'unavailable':
        return 'The service is temporarily unavailable. Try again shortly.';
      default:
        return err.message || 'Something went wrong. Try again.';
    }
  }
  if (err instanceof Error && err.message) return err.message;
  return 'Something went wrong. Try again.';
}

export class StowageClient {
  readonly baseUrl: string;
  readonly getToken: GetToken | undefined;
  private readonly fetchImpl: typeof fetch;

  constructor(opts: ClientOptions = {}) {
    this.baseUrl = (opts.baseUrl ?? '').replace(/\/+$/, '');
    this.getToken = opts.getToken;
    this.fetchImpl = opts.fetch ?? ((input, init) => globalThis.fetch(input, init));
  }

  /** True when requests authenticate with a cookie rather than a bearer token. */
  get usesCookie(): boolean {
    return !this.getToken;
  }

  url(path: string): string {
    return `${this.baseUrl}${path}`;
  }

  /** Absolute URL (for sharing) of a path answered by the server. */
  absoluteUrl(path: string): string {
    const base = this.baseUrl || (typeof window !== 'undefined' ? window.location.origin : '');
    try {
      return new URL(path, base.endsWith('/') ? base : `${base}/`).toString();
    } catch {
      return `${base}${path}`;
    }
  }

  async authHeaders(): Promise<Record<string, string>> {
    if (!this.getToken) return {};
    const token = await this.getToken();
    return token ? { Authorization: `Bearer ${token}` } : {};
  }

  /** Raw request with auth applied; throws ApiError on a non-2xx answer. */
  async request(path: string, init: RequestInit = {}): Promise<Response> {
    const headers = new Headers(init.headers);
    for (const [k, v] of Object.entries(await this.authHeaders())) headers.set(k, v);
    let res: Response;
    try {
      res = await this.fetchImpl(this.url(path), {
        ...init,
        headers,
        credentials: this.getToken ? 'same-origin' : 'include',
      });
    } catch (e) {
      throw new ApiError(0, 'network_error', e instanceof Error ? e.message : 'Network error');
    }
    if (!res.ok) {
      let body = '';
      try {
        body = await res.text();
      } catch {
        // ignore
      }
      throw parseError(res.status, body);
    }
    return res;
  }

  private async json<T>(path: string, init: RequestInit = {}): Promise<T> {
    const res = await this.request(path, init);
    return (await res.json()) as T;
  }

  private jsonBody(method: string, body: unknown): RequestInit {
    return { method, headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body) };
  }

  usage(): Promise<StorageUsage> {
    return this.json<StorageUsage>('/api/storage/usage');
  }

  listFiles(params: ListParams = {}): Promise<FileList> {
    const qs = new URLSearchParams();
    if (params.type) qs.set('type', params.type);
    if (params.favorite) qs.set('favorite', 'true');
    if (params.tag) qs.set('tag', params.tag);
    if (params.q) qs.set('q', params.q);
    if (params.sort) qs.set('sort', params.sort);
    if (params.order) qs.set('order', params.order);
    if (params.limit) qs.set('limit', String(params.limit));
    if (params.cursor) qs.set('cursor', params.cursor);
    const s = qs.toString();
    return this.json<FileList>(`/api/files${s ? `?${s}` : ''}`);
  }

  getFile(id: string): Promise<StowageFile> {
    return this.json<StowageFile>(`/api/files/${encodeURIComponent(id)}`);
  }

  async deleteFile(id: string): Promise<void> {
    await this.request(`/api/files/${encodeURIComponent(id)}`, { method: 'DELETE' });
  }

  setFavorite(id: string, isFavorite: boolean): Promise<StowageFile> {
    return this.json<StowageFile>(
      `/api/files/${encodeURIComponent(id)}/favorite`,
      this.jsonBody('POST', { is_favorite: isFavorite } satisfies Schemas['FavoriteRequest']),
    );
  }

  setTags(id: string, tags: string[]): Promise<StowageFile> {
    return this.json<StowageFile>(
      `/api/files/${encodeURIComponent(id)}/tags`,
      this.jsonBody('PUT', { tags } satisfies Schemas['TagsRequest']),
    );
  }

  /** Renames a file and/or moves it to another package (`null` takes it out of its package). */
  renameFile(id: string, change: { file_name?: string; package_name?: string | null }): Promise<StowageFile> {
    return this.json<StowageFile>(
      `/api/files/${encodeURIComponent(id)}`,
      this.jsonBody('PATCH', change satisfies Schemas['RenameRequest']),
    );
  }

  /** Copies a file (counted against the quota like an upload); resolves to the copy. */
  copyFile(id: string, fileName?: string): Promise<StowageFile> {
    const body: Schemas['CopyRequest'] = fileName === undefined ? {} : { file_name: fileName };
    return this.json<StowageFile>(`/api/files/${encodeURIComponent(id)}/copy`, this.jsonBody('POST', body));
  }

  /** Path of a package's ZIP archive; works directly (e.g. as `<a href>`) with cookie auth. */
  archiveUrl(packageName: string): string {
    return this.url(`/api/files/archive?${new URLSearchParams({ package_name: packageName }).toString()}`);
  }

  /** A signed link to a package's ZIP archive that needs no session. */
  archiveSignedUrl(packageName: string, expiresIn = 300): Promise<SignedUrl> {
    return this.json<SignedUrl>(
      '/api/files/archive/signed-url',
      this.jsonBody('POST', { package_name: packageName, expires_in: expiresIn } satisfies Schemas['ArchiveLinkRequest']),
    );
  }

  signedUrl(id: string, expiresIn = 3600): Promise<SignedUrl> {
    return this.json<SignedUrl>(
      `/api/files/${encodeURIComponent(id)}/signed-url`,
      this.jsonBody('POST', { expires_in: expiresIn } satisfies Schemas['SignedUrlRequest']),
    );
  }

  /** Path of a file's bytes; works directly (e.g. as `<a href>`) with cookie auth. */
  downloadUrl(id: string, inline = false): string {
    return this.url(`/api/files/${encodeURIComponent(id)}/download${inline ? '?inline=1' : ''}`);
  }

  /** Fetches a file's bytes. */
  async downloadBlob(id: string): Promise<Blob> {
    const res = await this.request(`/api/files/${encodeURIComponent(id)}/download`);
    return res.blob();
  }

  /** Fetches an authenticated resource (e.g. a thumbnail) as a Blob. */
  async blob(path: string): Promise<Blob> {
    const res = await this.request(path);
    return res.blob();
  }

  /**
   * Multipart upload (POST /api/files/upload, part `file`) with progress.
   * A fallback for servers without the tus endpoint; cannot be paused.
   */
  uploadMultipart(
    file: File,
    opts: {
      fileType?: FileType;
      tags?: string[];
      packageName?: string;
      onProgress?: (sent: number, total: number) => void;
    } = {},
  ): { promise: Promise<StowageFile>; abort: () => void } {
    const xhr = new XMLHttpRequest();
    const promise = (async () => {
      const headers = await this.authHeaders();
      return new Promise<StowageFile>((resolve, reject) => {
        xhr.open('POST', this.url('/api/files/upload'));
        xhr.withCredentials = !this.getToken;
        for (const [k, v] of Object.entries(headers)) xhr.setRequestHeader(k, v);
        xhr.upload.onprogress = (ev) => {
          if (ev.lengthComputable) opts.onProgress?.(ev.loaded, ev.total);
        };
        xhr.onload = () => {
          if (xhr.status >= 200 && xhr.status < 300) {
            try {
              resolve(JSON.parse(xhr.responseText) as StowageFile);
            } catch {
              reject(new ApiError(xhr.status, 'server_error', 'The server sent an unreadable answer.'));
            }
          } else {
            reject(parseError(xhr.status, xhr.responseText));
          }
        };
        xhr.onerror = () => reject(new ApiError(0, 'network_error', 'Network error'));
        xhr.onabort = () => reject(new ApiError(0, 'aborted', 'Upload cancelled'));
        const form = new FormData();
        if (opts.fileType) form.append('file_type', opts.fileType);
        if (opts.packageName) form.append('package_name', opts.packageName);
        if (opts.tags && opts.tags.length) form.append('tags', opts.tags.join(','));
        form.append('file', file, file.name);
        xhr.send(form);
      });
    })();
    return { promise, abort: () => xhr.abort() };
  }

  // Development sign-in (only on a loopback server without real auth).

  async devStatus(): Promise<{ dev_login: boolean }> {
    try {
      return await this.json<{ dev_login: boolean }>('/api/dev/status');
    } catch {
      return { dev_login: false };
    }
  }

  async devLogin(userId: string): Promise<void> {
    await this.request('/api/dev/login', this.jsonBody('POST', { user_id: userId }));
  }

  async devLogout(): Promise<void> {
    await this.request('/api/dev/logout', { method: 'POST' });
  }
}
