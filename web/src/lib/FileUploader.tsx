import { useCallback, useEffect, useId, useRef, useState, type DragEvent, type ReactNode } from 'react';
import * as tus from 'tus-js-client';
import { ApiError, describeError, formatBytes, parseError, type FileType, type StorageUsage } from './api';
import { useStowage, withStowage } from './context';
import { remainingBytes, storageLevel } from './storage';
import { UploadProgress, type UploadItem } from './UploadProgress';

export type UploadTransport = 'tus' | 'multipart';

/**
 * The resumable protocol of the `tus` transport: `tus` (tus 1.0.0, the
 * default) or `ietf` (the IETF draft "Resumable Uploads for HTTP", as
 * tus-js-client's `ietf-draft-05` speaks it: interop version 6).
 */
export type UploadProtocol = 'tus' | 'ietf';

/** tus-js-client's name of each protocol. */
const TUS_JS_PROTOCOL = { tus: 'tus-v1', ietf: 'ietf-draft-05' } as const;

/** tus-js-client 4.3 reads `protocol`, but its type declarations leave it out. */
type UploadOptions = tus.UploadOptions & { protocol?: 'tus-v1' | 'ietf-draft-03' | 'ietf-draft-05' };

export interface FileUploaderProps {
  /** `tus` (resumable, default) or `multipart` (POST /api/files/upload, no pause). */
  transport?: UploadTransport;
  /** Resumable protocol of the `tus` transport: `tus` (default) or `ietf` (the IETF draft). */
  protocol?: UploadProtocol;
  /** Per-file limit checked before sending; default from the provider (2 GiB). */
  maxFileSize?: number;
  /** Declared type sent with each upload; omit to let the server decide from content. */
  fileType?: FileType;
  /** Tags attached to every upload. */
  tags?: string[];
  /** `accept` attribute of the file picker. */
  accept?: string;
  /** Delays between automatic retries (ms). */
  retryDelays?: number[];
  /** tus chunk size in bytes; default: one request per file. */
  chunkSize?: number;
  /** Called with the new file's id after each upload completes. */
  onUploaded?: (fileId: string | null, file: File) => void;
  /** Extra content under the drop zone's text. */
  hint?: ReactNode;
  className?: string;
}

interface Controller {
  file: File;
  upload?: tus.Upload;
  abortMultipart?: () => void;
  lastT: number;
  lastSent: number;
  speed: number;
}

const RETRYABLE = new Set([0, 409, 423, 429, 500, 502, 503, 504]);
const DEFAULT_RETRY = [0, 1000, 3000, 5000, 10000];

let counter = 0;
const nextKey = () => `u${Date.now().toString(36)}-${++counter}`;

/** Upper bound of the bytes a multipart form adds around a file. */
function multipartOverhead(file: File): number {
  return 1024 + new TextEncoder().encode(file.name).length * 3 + file.type.length;
}

function tooLargeMessage(file: File, limit: number) {
  return `“${file.name}” is ${formatBytes(file.size)}, which is over the ${formatBytes(limit)} limit per file.`;
}

function noSpaceMessage(file: File, left: number) {
  return left <= 0
    ? `“${file.name}” was not uploaded: your storage is full. Delete files you no longer need or upgrade your plan.`
    : `“${file.name}” needs ${formatBytes(file.size)} but only ${formatBytes(left)} is left. Delete files you no longer need or upgrade your plan.`;
}

/** Turns a server or network failure into plain words. */
function uploadErrorMessage(err: unknown, file: File, limit: number): string {
  let apiErr: ApiError | null = null;
  if (err instanceof ApiError) apiErr = err;
  else if (err && typeof err === 'object' && 'originalResponse' in err) {
    const res = (err as tus.DetailedError).originalResponse;
    apiErr = res ? parseError(res.getStatus(), res.getBody()) : new ApiError(0, 'network_error', 'Network error');
  }
  if (apiErr) {
    if (apiErr.code === 'file_too_large') return tooLargeMessage(file, limit);
    if (apiErr.code === 'quota_exceeded')
      return `“${file.name}” was not uploaded: there is not enough storage space left. Delete files you no longer need or upgrade your plan.`;
    if (apiErr.code === 'unsupported_media_type')
      return `“${file.name}” was not uploaded: this kind of file is not supported. Upload videos, images, audio, scenes or projects.`;
    return describeError(apiErr);
  }
  return describeError(err);
}

function FileUploaderInner({
  transport = 'tus',
  protocol = 'tus',
  maxFileSize,
  fileType,
  tags,
  accept,
  retryDelays = DEFAULT_RETRY,
  chunkSize,
  onUploaded,
  hint,
  className,
}: FileUploaderProps) {
  const { client, usage, notifyFilesChanged, maxFileSize: ctxMax } = useStowage();
  const limit = maxFileSize ?? ctxMax;
  const [items, setItems] = useState<UploadItem[]>([]);
  const [dragging, setDragging] = useState(false);
  const [announce, setAnnounce] = useState('');
  const controllers = useRef(new Map<string, Controller>());
  const itemsRef = useRef(items);
  itemsRef.current = items;
  const inputRef = useRef<HTMLInputElement>(null);
  const inputId = useId();
  const full = usage ? storageLevel(usage) === 'full' : false;
  const mounted = useRef(true);

  useEffect(() => {
    mounted.current = true;
    const ctrls = controllers.current;
    return () => {
      mounted.current = false;
      for (const c of ctrls.values()) {
        void c.upload?.abort(false);
        c.abortMultipart?.();
      }
    };
  }, []);

  const patch = useCallback((key: string, p: Partial<UploadItem>) => {
    if (!mounted.current) return;
    setItems((prev) => prev.map((i) => (i.key === key ? { ...i, ...p } : i)));
  }, []);

  const onProgress = useCallback(
    (key: string, sent: number, total: number) => {
      const c = controllers.current.get(key);
      if (!c) return;
      const now = typeof performance !== 'undefined' ? performance.now() : Date.now();
      const dt = now - c.lastT;
      if (dt < 250 && sent < total) return;
      const inst = dt > 0 ? ((sent - c.lastSent) * 1000) / dt : 0;
      if (inst >= 0 && dt > 0) c.speed = c.speed > 0 ? c.speed * 0.7 + inst * 0.3 : inst;
      c.lastT = now;
      c.lastSent = sent;
      const eta = c.speed > 0 ? (total - sent) / c.speed : null;
      patch(key, { sent, speed: c.speed, eta });
    },
    [patch],
  );

  const finish = useCallback(
    (key: string, fileId: string | null) => {
      const c = controllers.current.get(key);
      patch(key, { status: 'done', fileId, speed: 0, eta: 0, sent: c?.file.size ?? 0 });
      if (c) {
        setAnnounce(`${c.file.name} uploaded.`);
        onUploaded?.(fileId, c.file);
      }
      notifyFilesChanged();
    },
    [patch, notifyFilesChanged, onUploaded],
  );

  const fail = useCallback(
    (key: string, err: unknown) => {
      const c = controllers.current.get(key);
      if (!c) return;
      const message = uploadErrorMessage(err, c.file, limit);
      // The row itself is an alert; no second announcement here.
      patch(key, { status: 'error', error: message, speed: 0, eta: null });
      // A refused upload may mean usage changed elsewhere.
      notifyFilesChanged();
    },
    [patch, limit, notifyFilesChanged],
  );

  const startTus = useCallback(
    (key: string) => {
      const c = controllers.current.get(key);
      if (!c) return;
      c.lastT = typeof performance !== 'undefined' ? performance.now() : Date.now();
      c.lastSent = 0;
      c.speed = 0;
      if (!c.upload) {
        const metadata: Record<string, string> = {
          filename: c.file.name,
          filetype: c.file.type || 'application/octet-stream',
        };
        if (fileType) metadata.file_type = fileType;
        if (tags && tags.length) metadata.tags = tags.join(',');
        const options: UploadOptions = {
          endpoint: client.url('/api/uploads'),
          protocol: TUS_JS_PROTOCOL[protocol] ?? 'tus-v1',
          metadata,
          retryDelays,
          chunkSize: chunkSize ?? Infinity,
          storeFingerprintForResuming: true,
          removeFingerprintOnSuccess: true,
          onBeforeRequest: async (req) => {
            const headers = await client.authHeaders();
            for (const [k, v] of Object.entries(headers)) req.setHeader(k, v);
            if (client.usesCookie) {
              const xhr = req.getUnderlyingObject() as XMLHttpRequest | undefined;
              if (xhr && 'withCredentials' in xhr) xhr.withCredentials = true;
            }
          },
          onShouldRetry: (err) => {
            const status = err.originalResponse ? err.originalResponse.getStatus() : 0;
            return RETRYABLE.has(status);
          },
          onProgress: (sent, total) => onProgress(key, sent, total),
          onSuccess: (payload) => {
            const id = payload?.lastResponse?.getHeader('Stowage-File-Id') ?? null;
            finish(key, id);
          },
          onError: (err) => fail(key, err),
        };
        c.upload = new tus.Upload(c.file, options);
        const up = c.upload;
        up.findPreviousUploads()
          .then((prev) => {
            if (prev.length > 0) {
              prev.sort((a, b) => (a.creationTime < b.creationTime ? 1 : -1));
              up.resumeFromPreviousUpload(prev[0]);
            }
          })
          .catch(() => undefined)
          .finally(() => {
            if (controllers.current.get(key)?.upload === up && itemsRef.current.find((i) => i.key === key)?.status === 'uploading') up.start();
          });
      } else {
        c.upload.start();
      }
      patch(key, { status: 'uploading', error: undefined });
    },
    [client, protocol, fileType, tags, retryDelays, chunkSize, onProgress, finish, fail, patch],
  );

  const startMultipart = useCallback(
    (key: string) => {
      const c = controllers.current.get(key);
      if (!c) return;
      c.lastT = typeof performance !== 'undefined' ? performance.now() : Date.now();
      c.lastSent = 0;
      c.speed = 0;
      const { promise, abort } = client.uploadMultipart(c.file, {
        fileType,
        tags,
        onProgress: (sent, total) => onProgress(key, Math.min(sent, c.file.size), Math.max(total, c.file.size)),
      });
      c.abortMultipart = abort;
      patch(key, { status: 'uploading', error: undefined, sent: 0 });
      promise.then(
        (f) => finish(key, f.id),
        (err) => {
          if (err instanceof ApiError && err.code === 'aborted') return;
          fail(key, err);
        },
      );
    },
    [client, fileType, tags, onProgress, finish, fail, patch],
  );

  const start = transport === 'multipart' ? startMultipart : startTus;

  const addFiles = useCallback(
    async (files: File[]) => {
      if (files.length === 0) return;
      let fresh: StorageUsage | null = usage;
      try {
        fresh = await client.usage();
      } catch {
        // use what we have
      }
      const inFlight = itemsRef.current
        .filter((i) => i.status === 'uploading' || i.status === 'paused' || i.status === 'queued')
        .reduce((n, i) => n + i.size, 0);
      let left = fresh ? remainingBytes(fresh) - inFlight : Infinity;
      const newItems: UploadItem[] = [];
      const toStart: string[] = [];
      for (const file of files) {
        const key = nextKey();
        const base: UploadItem = {
          key,
          name: file.name,
          size: file.size,
          status: 'queued',
          sent: 0,
          speed: 0,
          eta: null,
          canPause: transport === 'tus',
        };
        if (file.size > limit) {
          newItems.push({ ...base, status: 'rejected', error: tooLargeMessage(file, limit) });
          continue;
        }
        // A multipart request reserves its whole Content-Length (file plus form overhead).
        const need = file.size + (transport === 'multipart' ? multipartOverhead(file) : 0);
        if (need > left) {
          newItems.push({ ...base, status: 'rejected', error: noSpaceMessage(file, left) });
          continue;
        }
        left -= need;
        controllers.current.set(key, { file, lastT: 0, lastSent: 0, speed: 0 });
        newItems.push({ ...base, status: 'uploading' });
        toStart.push(key);
      }
      if (!mounted.current) return;
      itemsRef.current = [...itemsRef.current, ...newItems];
      setItems((prev) => [...prev, ...newItems]);
      for (const key of toStart) start(key);
    },
    [client, usage, limit, transport, start],
  );

  const pause = useCallback(
    (key: string) => {
      const c = controllers.current.get(key);
      if (!c?.upload) return;
      void c.upload.abort(false);
      patch(key, { status: 'paused', speed: 0, eta: null });
    },
    [patch],
  );

  const resume = useCallback(
    (key: string) => {
      patch(key, { status: 'uploading' });
      itemsRef.current = itemsRef.current.map((i) => (i.key === key ? { ...i, status: 'uploading' } : i));
      start(key);
    },
    [patch, start],
  );

  const cancel = useCallback(
    (key: string) => {
      const c = controllers.current.get(key);
      if (c?.upload) void c.upload.abort(true).catch(() => undefined);
      c?.abortMultipart?.();
      controllers.current.delete(key);
      patch(key, { status: 'cancelled', speed: 0, eta: null });
      setAnnounce(`${c?.file.name ?? 'Upload'} cancelled.`);
    },
    [patch],
  );

  const clear = useCallback(() => {
    setItems((prev) => {
      const keep = prev.filter((i) => i.status === 'uploading' || i.status === 'paused' || i.status === 'queued');
      for (const i of prev) if (!keep.includes(i)) controllers.current.delete(i.key);
      return keep;
    });
  }, []);

  const onDrop = (e: DragEvent<HTMLDivElement>) => {
    e.preventDefault();
    setDragging(false);
    if (full) return;
    const files = Array.from(e.dataTransfer?.files ?? []);
    void addFiles(files);
  };

  return (
    <section className={`stw-uploader ${className ?? ''}`} aria-label="Upload files">
      <div
        className={`stw-dropzone${dragging ? ' stw-dropzone-active' : ''}${full ? ' stw-dropzone-disabled' : ''}`}
        data-testid="dropzone"
        onDragEnter={(e) => {
          e.preventDefault();
          if (!full) setDragging(true);
        }}
        onDragOver={(e) => {
          e.preventDefault();
          if (e.dataTransfer) e.dataTransfer.dropEffect = full ? 'none' : 'copy';
        }}
        onDragLeave={(e) => {
          if (e.currentTarget.contains(e.relatedTarget as Node | null)) return;
          setDragging(false);
        }}
        onDrop={onDrop}
      >
        <svg className="stw-dropzone-icon" viewBox="0 0 24 24" aria-hidden="true" focusable="false">
          <path d="M12 3l5 5h-3v6h-4V8H7l5-5zM5 17h14v3H5z" fill="currentColor" />
        </svg>
        {full ? (
          <p className="stw-dropzone-text" role="alert">
            <strong>Uploads are turned off: your storage is full.</strong> Delete files you no longer need, or upgrade
            your plan, to upload again.
          </p>
        ) : (
          <p className="stw-dropzone-text">
            Drag and drop files here, or{' '}
            <button type="button" className="stw-btn stw-btn-primary" onClick={() => inputRef.current?.click()}>
              Choose files
            </button>
          </p>
        )}
        <p className="stw-muted stw-small">
          Up to {formatBytes(limit)} per file
          {usage && !full ? ` · ${formatBytes(remainingBytes(usage))} free` : ''}
        </p>
        {hint}
        <input
          ref={inputRef}
          id={inputId}
          className="stw-visually-hidden"
          type="file"
          multiple
          accept={accept}
          disabled={full}
          tabIndex={-1}
          aria-label="Choose files to upload"
          data-testid="file-input"
          onChange={(e) => {
            const files = Array.from(e.target.files ?? []);
            e.target.value = '';
            void addFiles(files);
          }}
        />
      </div>
      <div className="stw-visually-hidden" role="status" aria-live="polite">
        {announce}
      </div>
      <UploadProgress
        items={items}
        onPause={pause}
        onResume={resume}
        onCancel={cancel}
        onRetry={resume}
        onClear={clear}
      />
    </section>
  );
}

export const FileUploader = withStowage(FileUploaderInner, 'FileUploader');
