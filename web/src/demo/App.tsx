import { useCallback, useEffect, useId, useMemo, useState, type FormEvent } from 'react';
import {
  ApiError,
  FileManager,
  FileUploader,
  StorageIndicator,
  StorageWarning,
  StowageClient,
  StowageProvider,
  describeError,
  type StorageUsage,
  type UploadProtocol,
  type UploadTransport,
} from '../lib';

type State =
  | { kind: 'loading' }
  | { kind: 'signin'; error?: string }
  | { kind: 'no-session' }
  | { kind: 'error'; message: string }
  | { kind: 'ready'; usage: StorageUsage; devLogin: boolean };

/** `?transport=multipart` switches the uploader to the multipart fallback. */
function transportFromUrl(): UploadTransport {
  const t = new URLSearchParams(window.location.search).get('transport');
  return t === 'multipart' ? 'multipart' : 'tus';
}

/** `?protocol=ietf` starts with the IETF draft instead of tus; the setting beside the uploader changes it. */
function protocolFromUrl(): UploadProtocol {
  return new URLSearchParams(window.location.search).get('protocol') === 'ietf' ? 'ietf' : 'tus';
}

/** The uploader's resumable protocol, switchable in the page (and kept in the address). */
function ResumableUploader({ transport }: { transport: UploadTransport }) {
  const [protocol, setProtocol] = useState<UploadProtocol>(protocolFromUrl);
  const id = useId();
  const change = (p: UploadProtocol) => {
    setProtocol(p);
    const url = new URL(window.location.href);
    if (p === 'tus') url.searchParams.delete('protocol');
    else url.searchParams.set('protocol', p);
    window.history.replaceState(null, '', url);
  };
  return (
    <>
      {transport === 'tus' && (
        <p className="demo-protocol">
          <label htmlFor={id}>Resumable protocol </label>
          <select id={id} value={protocol} onChange={(e) => change(e.target.value === 'ietf' ? 'ietf' : 'tus')}>
            <option value="tus">tus 1.0</option>
            <option value="ietf">IETF Resumable Uploads (draft)</option>
          </select>
        </p>
      )}
      {/* Each upload keeps the protocol it started with. */}
      <FileUploader transport={transport} protocol={protocol} />
    </>
  );
}

export function App() {
  const client = useMemo(() => new StowageClient(), []);
  const [state, setState] = useState<State>({ kind: 'loading' });

  const load = useCallback(async () => {
    setState({ kind: 'loading' });
    try {
      const usage = await client.usage();
      const dev = await client.devStatus();
      setState({ kind: 'ready', usage, devLogin: dev.dev_login });
    } catch (e) {
      if (e instanceof ApiError && e.status === 401) {
        const dev = await client.devStatus();
        setState(dev.dev_login ? { kind: 'signin' } : { kind: 'no-session' });
      } else {
        setState({ kind: 'error', message: describeError(e) });
      }
    }
  }, [client]);

  useEffect(() => {
    void load();
  }, [load]);

  const signOut = async () => {
    try {
      await client.devLogout();
    } finally {
      setState({ kind: 'signin' });
    }
  };

  return (
    <div className="demo">
      <header className="demo-header">
        <h1 className="demo-title">stowage</h1>
        {state.kind === 'ready' && (
          <div className="demo-user">
            <span className="demo-user-id" data-testid="user-id">
              {state.usage.user_id}
            </span>
            {state.devLogin && (
              <button type="button" className="stw-btn stw-btn-small" onClick={() => void signOut()}>
                Sign out
              </button>
            )}
          </div>
        )}
      </header>
      <main className="demo-main">
        {state.kind === 'loading' && <p className="stw-muted">Loading…</p>}
        {state.kind === 'signin' && <SignIn client={client} error={state.error} onDone={() => void load()} />}
        {state.kind === 'no-session' && (
          <section className="demo-card" aria-labelledby="nosession-title">
            <h2 id="nosession-title">Sign in required</h2>
            <p>
              You are not signed in. Sign in through the application that links here, then reload this page.
            </p>
          </section>
        )}
        {state.kind === 'error' && (
          <section className="demo-card" role="alert">
            <h2>Could not reach stowage</h2>
            <p>{state.message}</p>
            <button type="button" className="stw-btn" onClick={() => void load()}>
              Try again
            </button>
          </section>
        )}
        {state.kind === 'ready' && (
          <StowageProvider client={client} initialUsage={state.usage}>
            <div className="demo-layout">
              <aside className="demo-side">
                <section className="demo-card" aria-labelledby="storage-title">
                  <h2 id="storage-title">Storage</h2>
                  <StorageIndicator showBreakdown />
                </section>
                <StorageWarning />
                <section className="demo-card" aria-labelledby="upload-title">
                  <h2 id="upload-title">Upload</h2>
                  <ResumableUploader transport={transportFromUrl()} />
                </section>
              </aside>
              <section className="demo-card demo-files" aria-labelledby="files-title">
                <h2 id="files-title">Files</h2>
                <FileManager />
              </section>
            </div>
          </StowageProvider>
        )}
      </main>
    </div>
  );
}

function SignIn({ client, error, onDone }: { client: StowageClient; error?: string; onDone: () => void }) {
  const [userId, setUserId] = useState('demo-user');
  const [busy, setBusy] = useState(false);
  const [err, setErr] = useState<string | undefined>(error);
  const id = useId();
  const submit = async (e: FormEvent) => {
    e.preventDefault();
    const v = userId.trim();
    if (!v) {
      setErr('Enter a user id.');
      return;
    }
    setBusy(true);
    setErr(undefined);
    try {
      await client.devLogin(v);
      onDone();
    } catch (ex) {
      setErr(describeError(ex));
      setBusy(false);
    }
  };
  return (
    <section className="demo-card demo-signin" aria-labelledby="signin-title">
      <h2 id="signin-title">Sign in</h2>
      <p className="stw-muted">
        This server runs in development sign-in mode: pick any user id. Real deployments use your identity
        provider instead.
      </p>
      <form onSubmit={(e) => void submit(e)} className="demo-signin-form">
        <div className="stw-field">
          <label htmlFor={id}>User id</label>
          <input id={id} value={userId} onChange={(e) => setUserId(e.target.value)} autoComplete="username" />
        </div>
        {err && (
          <p className="stw-error" role="alert">
            {err}
          </p>
        )}
        <button type="submit" className="stw-btn stw-btn-primary" disabled={busy}>
          {busy ? 'Signing in…' : `Sign in as ${userId.trim() || '…'}`}
        </button>
      </form>
    </section>
  );
}
