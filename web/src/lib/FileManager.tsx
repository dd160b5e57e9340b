import { useCallback, useEffect, useId, useRef, useState, type KeyboardEvent } from 'react';
import {
  describeError,
  formatBytes,
  type FileType,
  type SortField,
  type SortOrder,
  type StowageClient,
  type StowageFile,
} from './api';
import { useStowage, withStowage } from './context';
import { Dialog } from './Dialog';

export type ViewMode = 'grid' | 'list';
type Tab = 'all' | FileType;

const TABS: { id: Tab; label: string }[] = [
  { id: 'all', label: 'All' },
  { id: 'video', label: 'Videos' },
  { id: 'image', label: 'Images' },
  { id: 'audio', label: 'Audio' },
  { id: 'scene', label: 'Scenes' },
  { id: 'project', label: 'Projects' },
];

const SORTS: { value: string; label: string; sort: SortField; order: SortOrder }[] = [
  { value: 'upload_date:desc', label: 'Newest first', sort: 'upload_date', order: 'desc' },
  { value: 'upload_date:asc', label: 'Oldest first', sort: 'upload_date', order: 'asc' },
  { value: 'file_name:asc', label: 'Name A–Z', sort: 'file_name', order: 'asc' },
  { value: 'file_name:desc', label: 'Name Z–A', sort: 'file_name', order: 'desc' },
  { value: 'file_size:desc', label: 'Largest first', sort: 'file_size', order: 'desc' },
  { value: 'file_size:asc', label: 'Smallest first', sort: 'file_size', order: 'asc' },
];

const PREVIEWABLE = new Set<FileType>(['image', 'video', 'audio']);

export interface FileManagerProps {
  /** Initial layout; the user can switch. */
  defaultView?: ViewMode;
  /** Page size (server default 50, max 200). */
  pageSize?: number;
  /** Lifetime of share links in seconds (1 to 604800). */
  shareExpiresIn?: number;
  /** Load the next page automatically when the end of the list scrolls into view. */
  infiniteScroll?: boolean;
  className?: string;
}

// ---------- small pieces ----------

function TypeIcon({ type }: { type: FileType | string }) {
  const paths: Record<string, string> = {
    video: 'M4 5h11a1 1 0 011 1v3l4-3v12l-4-3v3a1 1 0 01-1 1H4a1 1 0 01-1-1V6a1 1 0 011-1z',
    image: 'M4 4h16a1 1 0 011 1v14a1 1 0 01-1 1H4a1 1 0 01-1-1V5a1 1 0 011-1zm2 13h12l-4-5-3 4-2-2-3 3zM8 10a2 2 0 100-4 2 2 0 000 4z',
    audio: 'M9 17a3 3 0 11-2-2.83V5l12-2v12a3 3 0 11-2-2.83V7.4L9 8.7V17z',
    scene: 'M12 2l9 5v10l-9 5-9-5V7l9-5zm0 2.3L5.5 8 12 11.7 18.5 8 12 4.3z',
    project: 'M3 6a1 1 0 011-1h5l2 2h9a1 1 0 011 1v10a1 1 0 01-1 1H4a1 1 0 01-1-1V6z',
  };
  return (
    <svg className="stw-type-icon" viewBox="0 0 24 24" aria-hidden="true" focusable="false">
      <path d={paths[type] ?? paths.project} fill="currentColor" />
    </svg>
  );
}

function StarIcon({ filled }: { filled: boolean }) {
  return (
    <svg viewBox="0 0 24 24" className="stw-star" aria-hidden="true" focusable="false">
      <path
        d="M12 3.5l2.6 5.3 5.9.9-4.3 4.1 1 5.8L12 16.9l-5.2 2.7 1-5.8-4.3-4.1 5.9-.9z"
        fill={filled ? 'currentColor' : 'none'}
        stroke="currentColor"
        strokeWidth="1.6"
        strokeLinejoin="round"
      />
    </svg>
  );
}

/** An image that needs authentication: direct URL with cookies, blob URL with a bearer token. */
function useAuthedSrc(client: StowageClient, path: string | null): string | null {
  const [src, setSrc] = useState<string | null>(() => (path && client.usesCookie ? client.url(path) : null));
  useEffect(() => {
    if (!path) {
      setSrc(null);
      return;
    }
    if (client.usesCookie) {
      setSrc(client.url(path));
      return;
    }
    let url: string | null = null;
    let cancelled = false;
    client
      .blob(path)
      .then((b) => {
        if (cancelled) return;
        url = URL.createObjectURL(b);
        setSrc(url);
      })
      .catch(() => !cancelled && setSrc(null));
    return () => {
      cancelled = true;
      if (url) URL.revokeObjectURL(url);
    };
  }, [client, path]);
  return src;
}

function Thumb({ client, file }: { client: StowageClient; file: StowageFile }) {
  const src = useAuthedSrc(client, file.thumbnail_url);
  const [broken, setBroken] = useState(false);
  useEffect(() => setBroken(false), [src]);
  return (
    <div className={`stw-thumb stw-thumb-${file.file_type}`}>
      {src && !broken ? (
        <img src={src} alt="" loading="lazy" onError={() => setBroken(true)} />
      ) : (
        <TypeIcon type={file.file_type} />
      )}
    </div>
  );
}

function formatDate(iso: string): string {
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return iso;
  return new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'short' }).format(d);
}

function parseTags(text: string): string[] {
  const out: string[] = [];
  for (const t of text.split(',')) {
    const v = t.trim();
    if (v && !out.includes(v)) out.push(v);
  }
  return out;
}

// ---------- the manager ----------

function FileManagerInner({
  defaultView = 'grid',
  pageSize = 50,
  shareExpiresIn = 3600,
  infiniteScroll = false,
  className,
}: FileManagerProps) {
  const { client, filesVersion, refreshUsage } = useStowage();
  const [view, setView] = useState<ViewMode>(defaultView);
  const [tab, setTab] = useState<Tab>('all');
  const [favOnly, setFavOnly] = useState(false);
  const [tag, setTag] = useState<string | null>(null);
  const [query, setQuery] = useState('');
  const [q, setQ] = useState('');
  const [sortKey, setSortKey] = useState(SORTS[0].value);
  const [files, setFiles] = useState<StowageFile[]>([]);
  const [cursor, setCursor] = useState<string | null>(null);
  const [loading, setLoading] = useState(true);
  const [loadingMore, setLoadingMore] = useState(false);
  const [error, setError] = useState<unknown>(null);
  const [actionError, setActionError] = useState<string | null>(null);
  const [status, setStatus] = useState('');
  const [confirmDelete, setConfirmDelete] = useState<StowageFile | null>(null);
  const [deleting, setDeleting] = useState(false);
  const [preview, setPreview] = useState<{ file: StowageFile; src: string | null; error?: string } | null>(null);
  const [shareFallback, setShareFallback] = useState<{ file: StowageFile; url: string; expires: string } | null>(null);
  const [editingTags, setEditingTags] = useState<string | null>(null);
  const [renaming, setRenaming] = useState<StowageFile | null>(null);
  const [renameText, setRenameText] = useState('');
  const [busy, setBusy] = useState(false);
  const [reloadTick, setReloadTick] = useState(0);
  const searchId = useId();
  const sortId = useId();
  const panelId = useId();
  const tabRefs = useRef<(HTMLButtonElement | null)[]>([]);
  const seq = useRef(0);
  const sentinel = useRef<HTMLDivElement>(null);

  // Debounce typing into the query.
  useEffect(() => {
    const t = setTimeout(() => setQ(query.trim()), 250);
    return () => clearTimeout(t);
  }, [query]);

  const sort = SORTS.find((s) => s.value === sortKey) ?? SORTS[0];
  const params = {
    type: tab === 'all' ? undefined : tab,
    favorite: favOnly || undefined,
    tag: tag ?? undefined,
    q: q || undefined,
    sort: sort.sort,
    order: sort.order,
    limit: pageSize,
  };
  const paramsKey = JSON.stringify(params);

  useEffect(() => {
    const mine = ++seq.current;
    setLoading(true);
    setError(null);
    client
      .listFiles(JSON.parse(paramsKey) as typeof params)
      .then((res) => {
        if (mine !== seq.current) return;
        setFiles(res.files);
        setCursor(res.next_cursor);
      })
      .catch((e) => {
        if (mine !== seq.current) return;
        setError(e);
        setFiles([]);
        setCursor(null);
      })
      .finally(() => mine === seq.current && setLoading(false));
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [client, paramsKey, filesVersion, reloadTick]);

  const loadMore = useCallback(async () => {
    if (!cursor || loadingMore) return;
    const mine = seq.current;
    setLoadingMore(true);
    try {
      const res = await client.listFiles({ ...(JSON.parse(paramsKey) as object), cursor });
      if (mine !== seq.current) return;
      setFiles((prev) => {
        const seen = new Set(prev.map((f) => f.id));
        return [...prev, ...res.files.filter((f) => !seen.has(f.id))];
      });
      setCursor(res.next_cursor);
    } catch (e) {
      if (mine === seq.current) setActionError(`Could not load more files: ${describeError(e)}`);
    } finally {
      setLoadingMore(false);
    }
  }, [client, cursor, loadingMore, paramsKey]);

  useEffect(() => {
    if (!infiniteScroll || !cursor || !sentinel.current || typeof IntersectionObserver === 'undefined') return;
    const obs = new IntersectionObserver((entries) => {
      if (entries.some((e) => e.isIntersecting)) void loadMore();
    });
    obs.observe(sentinel.current);
    return () => obs.disconnect();
  }, [infiniteScroll, cursor, loadMore]);

  // Thumbnails are made shortly after an upload: look again a few times (2, 4, 8, 16 s)
  // for recent images and videos that have none yet.
  const [thumbRound, setThumbRound] = useState(0);
  useEffect(() => setThumbRound(0), [filesVersion]);
  useEffect(() => {
    const pending = files.filter(
      (f) =>
        !f.thumbnail_url &&
        (f.file_type === 'image' || f.file_type === 'video') &&
        Date.now() - new Date(f.upload_date).getTime() < 300_000,
    );
    if (pending.length === 0 || thumbRound >= 4) return;
    let cancelled = false;
    const t = setTimeout(async () => {
      const found: StowageFile[] = [];
      for (const f of pending.slice(0, 10)) {
        try {
          const fresh = await client.getFile(f.id);
          if (fresh.thumbnail_url) found.push(fresh);
        } catch {
          // gone or unreachable; leave it
        }
        if (cancelled) return;
      }
      if (found.length) setFiles((prev) => prev.map((p) => found.find((x) => x.id === p.id) ?? p));
      setThumbRound((r) => r + 1);
    }, 2000 * 2 ** thumbRound);
    return () => {
      cancelled = true;
      clearTimeout(t);
    };
    // Re-run on new ids or a new round, not on every favourite or tag change.
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [client, files.map((f) => `${f.id}:${f.thumbnail_url ?? ''}`).join(','), thumbRound]);

  const replace = (f: StowageFile) => setFiles((prev) => prev.map((p) => (p.id === f.id ? f : p)));

  const toggleFavorite = async (f: StowageFile) => {
    setActionError(null);
    const next = !f.is_favorite;
    replace({ ...f, is_favorite: next });
    try {
      const updated = await client.setFavorite(f.id, next);
      if (favOnly && !updated.is_favorite) setFiles((prev) => prev.filter((p) => p.id !== f.id));
      else replace(updated);
      setStatus(next ? `Added “${f.file_name}” to favourites.` : `Removed “${f.file_name}” from favourites.`);
    } catch (e) {
      replace(f);
      setActionError(`Could not update “${f.file_name}”: ${describeError(e)}`);
    }
  };

  const saveTags = async (f: StowageFile, text: string) => {
    setActionError(null);
    const tags = parseTags(text);
    if (tags.length > 32) {
      setActionError('A file can have at most 32 tags.');
      return;
    }
    const long = tags.find((t) => t.length > 64);
    if (long) {
      setActionError(`The tag “${long.slice(0, 20)}…” is too long (at most 64 characters).`);
      return;
    }
    try {
      const updated = await client.setTags(f.id, tags);
      replace(updated);
      setEditingTags(null);
      setStatus(`Tags saved for “${f.file_name}”.`);
    } catch (e) {
      setActionError(`Could not save tags: ${describeError(e)}`);
    }
  };

  const doDelete = async () => {
    if (!confirmDelete) return;
    const f = confirmDelete;
    setDeleting(true);
    setActionError(null);
    try {
      await client.deleteFile(f.id);
      setFiles((prev) => prev.filter((p) => p.id !== f.id));
      setStatus(`Deleted “${f.file_name}”.`);
      setConfirmDelete(null);
      void refreshUsage();
    } catch (e) {
      setConfirmDelete(null);
      setActionError(`Could not delete “${f.file_name}”: ${describeError(e)}`);
    } finally {
      setDeleting(false);
    }
  };

  const startRename = (f: StowageFile) => {
    setActionError(null);
    setRenameText(f.file_name);
    setRenaming(f);
  };

  const doRename = async () => {
    if (!renaming) return;
    const f = renaming;
    const name = renameText.trim();
    if (!name) {
      setActionError('A file name cannot be empty.');
      return;
    }
    setBusy(true);
    setActionError(null);
    try {
      const updated = await client.renameFile(f.id, { file_name: name });
      replace(updated);
      setRenaming(null);
      setStatus(`Renamed “${f.file_name}” to “${updated.file_name}”.`);
    } catch (e) {
      setActionError(`Could not rename “${f.file_name}”: ${describeError(e)}`);
    } finally {
      setBusy(false);
    }
  };

  const doCopy = async (f: StowageFile) => {
    setActionError(null);
    setBusy(true);
    try {
      const copy = await client.copyFile(f.id);
      setFiles((prev) => {
        const at = prev.findIndex((p) => p.id === f.id);
        const next = prev.slice();
        next.splice(at < 0 ? 0 : at + 1, 0, copy);
        return next;
      });
      setStatus(`Copied “${f.file_name}”.`);
      void refreshUsage();
    } catch (e) {
      setActionError(`Could not copy “${f.file_name}”: ${describeError(e)}`);
    } finally {
      setBusy(false);
    }
  };

  const downloadPackage = async (pkg: string) => {
    setActionError(null);
    try {
      const href = client.usesCookie ? client.archiveUrl(pkg) : client.url((await client.archiveSignedUrl(pkg, 300)).url);
      const a = document.createElement('a');
      a.href = href;
      a.download = `${pkg}.zip`;
      a.rel = 'noopener';
      document.body.appendChild(a);
      a.click();
      a.remove();
      setStatus(`Downloading package “${pkg}”.`);
    } catch (e) {
      setActionError(`Could not download package “${pkg}”: ${describeError(e)}`);
    }
  };

  const mediaUrl = async (f: StowageFile): Promise<string> => {
    if (client.usesCookie) return client.downloadUrl(f.id, true);
    const s = await client.signedUrl(f.id, 3600);
    return client.url(s.url);
  };

  const openPreview = async (f: StowageFile) => {
    setPreview({ file: f, src: null });
    try {
      const src = await mediaUrl(f);
      setPreview((p) => (p && p.file.id === f.id ? { file: f, src } : p));
    } catch (e) {
      setPreview((p) => (p && p.file.id === f.id ? { file: f, src: null, error: describeError(e) } : p));
    }
  };

  const download = async (f: StowageFile) => {
    setActionError(null);
    try {
      let href: string;
      let revoke = false;
      try {
        href = client.url((await client.signedUrl(f.id, 300)).url);
      } catch {
        href = URL.createObjectURL(await client.downloadBlob(f.id));
        revoke = true;
      }
      const a = document.createElement('a');
      a.href = href;
      a.download = f.file_name;
      a.rel = 'noopener';
      document.body.appendChild(a);
      a.click();
      a.remove();
      if (revoke) setTimeout(() => URL.revokeObjectURL(href), 10_000);
    } catch (e) {
      setActionError(`Could not download “${f.file_name}”: ${describeError(e)}`);
    }
  };

  const share = async (f: StowageFile) => {
    setActionError(null);
    try {
      const s = await client.signedUrl(f.id, shareExpiresIn);
      const url = client.absoluteUrl(s.url);
      const expires = formatDate(s.expires_at);
      try {
        if (!navigator.clipboard) throw new Error('no clipboard');
        await navigator.clipboard.writeText(url);
        setStatus(`Link to “${f.file_name}” copied. Anyone with the link can download it until ${expires}.`);
      } catch {
        setShareFallback({ file: f, url, expires });
      }
    } catch (e) {
      setActionError(`Could not create a link: ${describeError(e)}`);
    }
  };

  const onTabKey = (e: KeyboardEvent<HTMLButtonElement>, index: number) => {
    let next = -1;
    if (e.key === 'ArrowRight') next = (index + 1) % TABS.length;
    else if (e.key === 'ArrowLeft') next = (index - 1 + TABS.length) % TABS.length;
    else if (e.key === 'Home') next = 0;
    else if (e.key === 'End') next = TABS.length - 1;
    if (next < 0) return;
    e.preventDefault();
    setTab(TABS[next].id);
    tabRefs.current[next]?.focus();
  };

  const filtered = tab !== 'all' || favOnly || !!tag || !!q;

  return (
    <section className={`stw-files ${className ?? ''}`} aria-label="Your files">
      <div className="stw-toolbar">
        <div className="stw-field stw-search">
          <label htmlFor={searchId}>Search</label>
          <input
            id={searchId}
            type="search"
            placeholder="File name"
            value={query}
            onChange={(e) => setQuery(e.target.value)}
          />
        </div>
        <div className="stw-field">
          <label htmlFor={sortId}>Sort</label>
          <select id={sortId} value={sortKey} onChange={(e) => setSortKey(e.target.value)}>
            {SORTS.map((s) => (
              <option key={s.value} value={s.value}>
                {s.label}
              </option>
            ))}
          </select>
        </div>
        <div className="stw-toolbar-buttons">
          <button
            type="button"
            className="stw-btn stw-toggle"
            aria-pressed={favOnly}
            onClick={() => setFavOnly((v) => !v)}
          >
            <StarIcon filled={favOnly} /> Favourites only
          </button>
          <div className="stw-segmented" role="group" aria-label="Layout">
            <button type="button" className="stw-btn stw-toggle" aria-pressed={view === 'grid'} onClick={() => setView('grid')}>
              Grid
            </button>
            <button type="button" className="stw-btn stw-toggle" aria-pressed={view === 'list'} onClick={() => setView('list')}>
              List
            </button>
          </div>
        </div>
      </div>

      <div className="stw-tabs" role="tablist" aria-label="File type">
        {TABS.map((t, i) => (
          <button
            key={t.id}
            ref={(el) => {
              tabRefs.current[i] = el;
            }}
            type="button"
            role="tab"
            className="stw-tab"
            aria-selected={tab === t.id}
            aria-controls={panelId}
            tabIndex={tab === t.id ? 0 : -1}
            onClick={() => setTab(t.id)}
            onKeyDown={(e) => onTabKey(e, i)}
          >
            {t.label}
          </button>
        ))}
      </div>

      {tag && (
        <p className="stw-filter-chip">
          Tag: <strong>{tag}</strong>{' '}
          <button type="button" className="stw-btn stw-btn-small" onClick={() => setTag(null)} aria-label={`Stop filtering by tag ${tag}`}>
            Clear
          </button>
        </p>
      )}

      <div className="stw-visually-hidden" role="status" aria-live="polite" data-testid="files-status">
        {status}
      </div>
      {actionError && (
        <div className="stw-error" role="alert">
          {actionError}{' '}
          <button type="button" className="stw-btn stw-btn-link" onClick={() => setActionError(null)}>
            Dismiss
          </button>
        </div>
      )}

      <div id={panelId} role="tabpanel" aria-busy={loading} className="stw-panel">
        {error ? (
          <div className="stw-error" role="alert">
            Could not load your files: {describeError(error)}{' '}
            <button type="button" className="stw-btn stw-btn-link" onClick={() => setReloadTick((n) => n + 1)}>
              Try again
            </button>
          </div>
        ) : loading && files.length === 0 ? (
          <p className="stw-muted">Loading files…</p>
        ) : files.length === 0 ? (
          <div className="stw-empty">
            <TypeIcon type="project" />
            <p>{filtered ? 'No files match these filters.' : 'No files yet. Upload something to get started.'}</p>
          </div>
        ) : (
          <ul className={view === 'grid' ? 'stw-grid' : 'stw-list'} data-view={view}>
            {files.map((f) => (
              <li key={f.id} className="stw-file" data-file-id={f.id} data-file-name={f.file_name}>
                <Thumb client={client} file={f} />
                <div className="stw-file-info">
                  <span className="stw-file-name" title={f.file_name}>
                    {f.file_name}
                  </span>
                  <span className="stw-muted stw-small">
                    {formatBytes(f.file_size)} · {f.file_type}
                    {f.resolution ? ` · ${f.resolution}` : ''}
                    {f.duration ? ` · ${f.duration}` : ''} · <time dateTime={f.upload_date}>{formatDate(f.upload_date)}</time>
                  </span>
                  {editingTags === f.id ? (
                    <TagEditor file={f} onSave={(text) => void saveTags(f, text)} onCancel={() => setEditingTags(null)} />
                  ) : (
                    f.tags.length > 0 && (
                      <ul className="stw-tags" aria-label="Tags">
                        {f.tags.map((t) => (
                          <li key={t}>
                            <button
                              type="button"
                              className="stw-tag"
                              onClick={() => setTag(t)}
                              aria-label={`Show files tagged ${t}`}
                            >
                              {t}
                            </button>
                          </li>
                        ))}
                      </ul>
                    )
                  )}
                </div>
                <div className="stw-file-actions">
                  <button
                    type="button"
                    className="stw-btn stw-icon-btn stw-fav"
                    aria-pressed={f.is_favorite}
                    aria-label={`Favourite ${f.file_name}`}
                    title={f.is_favorite ? 'Remove from favourites' : 'Add to favourites'}
                    onClick={() => void toggleFavorite(f)}
                  >
                    <StarIcon filled={f.is_favorite} />
                  </button>
                  {PREVIEWABLE.has(f.file_type) && (
                    <button type="button" className="stw-btn stw-btn-small" onClick={() => void openPreview(f)} aria-label={`Preview ${f.file_name}`}>
                      Preview
                    </button>
                  )}
                  {client.usesCookie ? (
                    <a className="stw-btn stw-btn-small" href={client.downloadUrl(f.id)} download={f.file_name} aria-label={`Download ${f.file_name}`}>
                      Download
                    </a>
                  ) : (
                    <button type="button" className="stw-btn stw-btn-small" onClick={() => void download(f)} aria-label={`Download ${f.file_name}`}>
                      Download
                    </button>
                  )}
                  <button type="button" className="stw-btn stw-btn-small" onClick={() => void share(f)} aria-label={`Copy share link for ${f.file_name}`}>
                    Share
                  </button>
                  <button
                    type="button"
                    className="stw-btn stw-btn-small"
                    onClick={() => setEditingTags(f.id)}
                    aria-label={`Edit tags of ${f.file_name}`}
                    disabled={editingTags === f.id}
                  >
                    Tags
                  </button>
                  <button type="button" className="stw-btn stw-btn-small" onClick={() => startRename(f)} aria-label={`Rename ${f.file_name}`}>
                    Rename
                  </button>
                  <button
                    type="button"
                    className="stw-btn stw-btn-small"
                    onClick={() => void doCopy(f)}
                    aria-label={`Copy ${f.file_name}`}
                    disabled={busy}
                  >
                    Copy
                  </button>
                  {f.package_name && (
                    <button
                      type="button"
                      className="stw-btn stw-btn-small"
                      onClick={() => void downloadPackage(f.package_name as string)}
                      aria-label={`Download package ${f.package_name}`}
                      title={`Download every file of “${f.package_name}” as one ZIP`}
                    >
                      Package
                    </button>
                  )}
                  <button
                    type="button"
                    className="stw-btn stw-btn-small stw-btn-danger"
                    onClick={() => setConfirmDelete(f)}
                    aria-label={`Delete ${f.file_name}`}
                  >
                    Delete
                  </button>
                </div>
              </li>
            ))}
          </ul>
        )}
        {cursor && !error && (
          <div className="stw-more" ref={sentinel}>
            <button type="button" className="stw-btn" onClick={() => void loadMore()} disabled={loadingMore}>
              {loadingMore ? 'Loading…' : 'Load more'}
            </button>
          </div>
        )}
      </div>

      {confirmDelete && (
        <Dialog
          role="alertdialog"
          title={`Delete “${confirmDelete.file_name}”?`}
          onClose={() => !deleting && setConfirmDelete(null)}
          footer={
            <>
              <button type="button" className="stw-btn" data-autofocus onClick={() => setConfirmDelete(null)} disabled={deleting}>
                Cancel
              </button>
              <button type="button" className="stw-btn stw-btn-danger-solid" onClick={() => void doDelete()} disabled={deleting}>
                {deleting ? 'Deleting…' : 'Delete'}
              </button>
            </>
          }
        >
          <p>
            The file will be removed for good and {formatBytes(confirmDelete.file_size)} of storage will be freed. Share links
            to it will stop working.
          </p>
        </Dialog>
      )}

      {renaming && (
        <Dialog
          title={`Rename “${renaming.file_name}”`}
          onClose={() => !busy && setRenaming(null)}
          footer={
            <>
              <button type="button" className="stw-btn" onClick={() => setRenaming(null)} disabled={busy}>
                Cancel
              </button>
              <button type="submit" form="stw-rename-form" className="stw-btn stw-btn-primary" disabled={busy}>
                {busy ? 'Saving…' : 'Rename'}
              </button>
            </>
          }
        >
          <form
            id="stw-rename-form"
            onSubmit={(e) => {
              e.preventDefault();
              void doRename();
            }}
          >
            <label className="stw-field">
              <span>New name</span>
              <input
                type="text"
                value={renameText}
                maxLength={255}
                data-autofocus
                onChange={(e) => setRenameText(e.target.value)}
              />
            </label>
          </form>
        </Dialog>
      )}

      {preview && (
        <Dialog
          title={preview.file.file_name}
          className="stw-preview"
          onClose={() => setPreview(null)}
          footer={
            <button type="button" className="stw-btn" onClick={() => setPreview(null)}>
              Close
            </button>
          }
        >
          {preview.error ? (
            <p className="stw-error" role="alert">
              Could not open the preview: {preview.error}
            </p>
          ) : !preview.src ? (
            <p className="stw-muted">Loading preview…</p>
          ) : preview.file.file_type === 'image' ? (
            <img className="stw-preview-media" src={preview.src} alt={preview.file.file_name} />
          ) : preview.file.file_type === 'video' ? (
            <video className="stw-preview-media" src={preview.src} controls preload="metadata" aria-label={preview.file.file_name} />
          ) : (
            <audio className="stw-preview-audio" src={preview.src} controls preload="metadata" aria-label={preview.file.file_name} />
          )}
        </Dialog>
      )}

      {shareFallback && (
        <Dialog
          title={`Share “${shareFallback.file.file_name}”`}
          onClose={() => setShareFallback(null)}
          footer={
            <button type="button" className="stw-btn" onClick={() => setShareFallback(null)}>
              Done
            </button>
          }
        >
          <p>Copy this link. Anyone with it can download the file until {shareFallback.expires}.</p>
          <label className="stw-field">
            <span>Share link</span>
            <input type="text" readOnly value={shareFallback.url} data-autofocus onFocus={(e) => e.currentTarget.select()} />
          </label>
        </Dialog>
      )}
    </section>
  );
}

function TagEditor({ file, onSave, onCancel }: { file: StowageFile; onSave: (text: string) => void; onCancel: () => void }) {
  const [text, setText] = useState(file.tags.join(', '));
  const id = useId();
  const ref = useRef<HTMLInputElement>(null);
  useEffect(() => ref.current?.focus(), []);
  return (
    <form
      className="stw-tag-editor"
      onSubmit={(e) => {
        e.preventDefault();
        onSave(text);
      }}
    >
      <label htmlFor={id} className="stw-small">
        Tags for {file.file_name} (comma separated)
      </label>
      <div className="stw-tag-editor-row">
        <input
          ref={ref}
          id={id}
          type="text"
          value={text}
          onChange={(e) => setText(e.target.value)}
          onKeyDown={(e) => {
            if (e.key === 'Escape') {
              e.preventDefault();
              onCancel();
            }
          }}
        />
        <button type="submit" className="stw-btn stw-btn-small stw-btn-primary">
          Save
        </button>
        <button type="button" className="stw-btn stw-btn-small" onClick={onCancel}>
          Cancel
        </button>
      </div>
    </form>
  );
}

export const FileManager = withStowage(FileManagerInner, 'FileManager');

