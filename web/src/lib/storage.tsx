import type { ReactNode } from 'react';
import { FILE_TYPES, describeError, formatBytes, type StorageUsage } from './api';
import { useStowage, withStowage } from './context';

export type StorageLevel = 'ok' | 'warn' | 'critical' | 'full';

export const WARN_PERCENT = 80;
export const CRITICAL_PERCENT = 95;

/** Percent of the quota in use (0 when there is no quota and nothing stored). */
export function usagePercent(u: StorageUsage): number {
  if (u.max_bytes <= 0) return 100;
  if (Number.isFinite(u.percent_used)) return u.percent_used;
  return Math.round((u.total_bytes / u.max_bytes) * 10000) / 100;
}

/** ok < 80 % ≤ warn < 95 % ≤ critical < full (nothing left, or a zero quota). */
export function storageLevel(u: StorageUsage): StorageLevel {
  if (u.max_bytes <= 0 || u.total_bytes >= u.max_bytes) return 'full';
  const p = usagePercent(u);
  if (p >= 100) return 'full';
  if (p >= CRITICAL_PERCENT) return 'critical';
  if (p >= WARN_PERCENT) return 'warn';
  return 'ok';
}

export function remainingBytes(u: StorageUsage): number {
  return Math.max(0, u.max_bytes - u.total_bytes);
}

const TYPE_LABELS: Record<string, string> = {
  video: 'Videos',
  image: 'Images',
  audio: 'Audio',
  scene: 'Scenes',
  project: 'Projects',
};

export interface StorageIndicatorProps {
  /** Show the per-type breakdown under the bar. */
  showBreakdown?: boolean;
  /** Usage to display instead of the shared one (controlled use). */
  usage?: StorageUsage | null;
  className?: string;
}

function StorageIndicatorInner({ showBreakdown = false, usage: given, className }: StorageIndicatorProps) {
  const { usage: shared, usageError, refreshUsage } = useStowage();
  const usage = given ?? shared;
  if (!usage) {
    if (usageError) {
      return (
        <section className={`stw-storage ${className ?? ''}`} aria-label="Storage usage">
          <p className="stw-error" role="alert">
            Could not load storage usage: {describeError(usageError)}{' '}
            <button type="button" className="stw-btn stw-btn-link" onClick={() => void refreshUsage()}>
              Try again
            </button>
          </p>
        </section>
      );
    }
    return (
      <section className={`stw-storage ${className ?? ''}`} aria-label="Storage usage" aria-busy="true">
        <p className="stw-muted">Loading storage usage…</p>
      </section>
    );
  }
  const pct = usagePercent(usage);
  const level = storageLevel(usage);
  const barPct = Math.min(100, Math.max(0, pct));
  const text = `${formatBytes(usage.total_bytes)} of ${formatBytes(usage.max_bytes)} used`;
  return (
    <section className={`stw-storage stw-level-${level} ${className ?? ''}`} aria-label="Storage usage" data-level={level}>
      <div className="stw-storage-head">
        <span className="stw-storage-text" data-testid="storage-text">
          {text}
        </span>
        <span className="stw-storage-pct" data-testid="storage-percent">
          {pct.toFixed(pct % 1 === 0 ? 0 : 1)}%
        </span>
      </div>
      <div
        className="stw-meter"
        role="meter"
        aria-label="Storage used"
        aria-valuemin={0}
        aria-valuemax={100}
        aria-valuenow={Math.round(barPct * 100) / 100}
        aria-valuetext={`${text} (${pct}%)`}
      >
        <div className="stw-meter-fill" style={{ width: `${barPct}%` }} />
      </div>
      <p className="stw-muted stw-small">
        {usage.file_count} {usage.file_count === 1 ? 'file' : 'files'} · {formatBytes(remainingBytes(usage))} free
      </p>
      {showBreakdown && (
        <ul className="stw-breakdown">
          {FILE_TYPES.map((t) => {
            const b = usage.by_type?.[t] ?? { bytes: 0, count: 0 };
            return (
              <li key={t}>
                <span>{TYPE_LABELS[t]}</span>
                <span>
                  {formatBytes(b.bytes)} · {b.count}
                </span>
              </li>
            );
          })}
        </ul>
      )}
    </section>
  );
}

export const StorageIndicator = withStowage(StorageIndicatorInner, 'StorageIndicator');

export interface StorageWarningProps {
  usage?: StorageUsage | null;
  /** What the user can do to get more space (e.g. a link to the plans page). */
  upgradeHint?: ReactNode;
  className?: string;
}

function StorageWarningInner({ usage: given, upgradeHint, className }: StorageWarningProps) {
  const { usage: shared } = useStowage();
  const usage = given ?? shared;
  if (!usage) return null;
  const level = storageLevel(usage);
  if (level === 'ok') return null;
  const pct = usagePercent(usage);
  const left = formatBytes(remainingBytes(usage));
  const hint = upgradeHint ?? 'upgrade your plan';
  let title: string;
  let body: ReactNode;
  if (level === 'full') {
    title = usage.max_bytes <= 0 ? 'Uploads are not available on your plan' : 'Your storage is full';
    body = (
      <>
        Uploads are turned off until there is free space. Delete files you no longer need, or {hint} to get more
        space.
      </>
    );
  } else if (level === 'critical') {
    title = `Storage almost full (${pct}% used)`;
    body = (
      <>
        Only {left} left. Uploads larger than that will fail. Delete files you no longer need, or {hint}.
      </>
    );
  } else {
    title = `You have used ${pct}% of your storage`;
    body = <>{left} left. Consider deleting files you no longer need.</>;
  }
  return (
    <div
      className={`stw-warning stw-warning-${level} ${className ?? ''}`}
      role={level === 'warn' ? 'status' : 'alert'}
      data-level={level}
    >
      <strong className="stw-warning-title">{title}</strong>
      <p>{body}</p>
    </div>
  );
}

export const StorageWarning = withStowage(StorageWarningInner, 'StorageWarning');
