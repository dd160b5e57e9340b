import { formatBytes } from './api';

export type UploadStatus =
  | 'queued'
  | 'uploading'
  | 'paused'
  | 'done'
  | 'error'
  | 'cancelled'
  | 'rejected';

export interface UploadItem {
  key: string;
  name: string;
  size: number;
  status: UploadStatus;
  /** Bytes the server has acknowledged or that have been sent. */
  sent: number;
  /** Bytes per second (smoothed); 0 when unknown. */
  speed: number;
  /** Seconds left; null when unknown. */
  eta: number | null;
  /** Plain-words reason for `error` / `rejected`. */
  error?: string;
  /** Id of the stored file once done. */
  fileId?: string | null;
  /** Whether pause/resume is supported (tus: yes, multipart: no). */
  canPause: boolean;
}

export function formatDuration(seconds: number | null): string {
  if (seconds == null || !Number.isFinite(seconds)) return '';
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${s % 60} s`;
  const h = Math.floor(m / 60);
  return `${h} h ${m % 60} min`;
}

const STATUS_TEXT: Record<UploadStatus, string> = {
  queued: 'Waiting',
  uploading: 'Uploading',
  paused: 'Paused',
  done: 'Uploaded',
  error: 'Failed',
  cancelled: 'Cancelled',
  rejected: 'Not uploaded',
};

export interface UploadProgressProps {
  items: UploadItem[];
  onPause?: (key: string) => void;
  onResume?: (key: string) => void;
  onCancel?: (key: string) => void;
  onRetry?: (key: string) => void;
  /** Removes finished, failed and cancelled rows. */
  onClear?: () => void;
  className?: string;
}

/** Per-file progress rows with speed, time left and pause/resume/cancel controls. */
export function UploadProgress({ items, onPause, onResume, onCancel, onRetry, onClear, className }: UploadProgressProps) {
  if (items.length === 0) return null;
  const finished = items.some((i) => i.status === 'done' || i.status === 'error' || i.status === 'cancelled' || i.status === 'rejected');
  return (
    <section className={`stw-uploads ${className ?? ''}`} aria-label="Uploads">
      <ul className="stw-upload-list">
        {items.map((item) => {
          const pct = item.size > 0 ? Math.min(100, Math.round((item.sent / item.size) * 100)) : item.status === 'done' ? 100 : 0;
          const active = item.status === 'uploading' || item.status === 'queued';
          return (
            <li
              key={item.key}
              className={`stw-upload stw-upload-${item.status}`}
              data-status={item.status}
              data-file-id={item.fileId ?? undefined}
            >
              <div className="stw-upload-head">
                <span className="stw-upload-name" title={item.name}>
                  {item.name}
                </span>
                <span className="stw-upload-status">
                  {STATUS_TEXT[item.status]}
                  {item.status === 'uploading' || item.status === 'paused' ? ` · ${pct}%` : ''}
                </span>
              </div>
              {item.status !== 'rejected' && (
                <div
                  className="stw-meter stw-meter-small"
                  role="progressbar"
                  aria-label={`Upload progress for ${item.name}`}
                  aria-valuemin={0}
                  aria-valuemax={100}
                  aria-valuenow={pct}
                >
                  <div className="stw-meter-fill" style={{ width: `${pct}%` }} />
                </div>
              )}
              <div className="stw-upload-foot">
                <span className="stw-muted stw-small" aria-live="off">
                  {item.status === 'rejected' || item.status === 'error' ? (
                    <span className="stw-error-text" role="alert">
                      {item.error}
                    </span>
                  ) : (
                    <>
                      {formatBytes(item.sent)} of {formatBytes(item.size)}
                      {item.status === 'uploading' && item.speed > 0 && (
                        <>
                          {' · '}
                          {formatBytes(item.speed)}/s
                          {item.eta != null && ` · ${formatDuration(item.eta)} left`}
                        </>
                      )}
                    </>
                  )}
                </span>
                <span className="stw-upload-actions">
                  {item.canPause && item.status === 'uploading' && onPause && (
                    <button type="button" className="stw-btn stw-btn-small" onClick={() => onPause(item.key)} aria-label={`Pause ${item.name}`}>
                      Pause
                    </button>
                  )}
                  {item.status === 'paused' && onResume && (
                    <button type="button" className="stw-btn stw-btn-small" onClick={() => onResume(item.key)} aria-label={`Resume ${item.name}`}>
                      Resume
                    </button>
                  )}
                  {item.status === 'error' && onRetry && (
                    <button type="button" className="stw-btn stw-btn-small" onClick={() => onRetry(item.key)} aria-label={`Retry ${item.name}`}>
                      Retry
                    </button>
                  )}
                  {(active || item.status === 'paused') && onCancel && (
                    <button
                      type="button"
                      className="stw-btn stw-btn-small stw-btn-danger"
                      onClick={() => onCancel(item.key)}
                      aria-label={`Cancel ${item.name}`}
                    >
                      Cancel
                    </button>
                  )}
                </span>
              </div>
            </li>
          );
        })}
      </ul>
      {finished && onClear && (
        <button type="button" className="stw-btn stw-btn-link" onClick={onClear}>
          Clear finished
        </button>
      )}
    </section>
  );
}
