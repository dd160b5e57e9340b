import {
  createContext,
  useCallback,
  useContext,
  useEffect,
  useMemo,
  useRef,
  useState,
  type ComponentType,
  type ReactNode,
} from 'react';
import { StowageClient, type GetToken, type StorageUsage } from './api';

export const DEFAULT_MAX_FILE_SIZE = 2 * 1024 * 1024 * 1024;

export interface StowageContextValue {
  client: StowageClient;
  /** Latest storage usage, null until loaded. */
  usage: StorageUsage | null;
  usageError: unknown;
  /** Reloads usage; components call it after an upload or a delete. */
  refreshUsage: () => Promise<void>;
  /** Bumped whenever the set of files changes (upload, delete). */
  filesVersion: number;
  /** Signals that files changed: refreshes usage and lists. */
  notifyFilesChanged: () => void;
  maxFileSize: number;
}

const StowageContext = createContext<StowageContextValue | null>(null);

export interface StowageConnectionProps {
  /** Server origin (and optional prefix); empty or omitted = same origin. */
  baseUrl?: string;
  /** Session token source, e.g. Clerk's `useAuth().getToken`. Omit to use the `__session` cookie. */
  getToken?: GetToken;
  /** A ready client; overrides baseUrl/getToken. */
  client?: StowageClient;
}

export interface StowageProviderProps extends StowageConnectionProps {
  /** Per-file size limit checked before uploading; default 2 GiB. */
  maxFileSize?: number;
  /** Usage known already (skips the first fetch). */
  initialUsage?: StorageUsage | null;
  children?: ReactNode;
}

/**
 * Shares one API client and the storage usage between the stowage components,
 * so the indicator and warning refresh after an upload or a delete.
 */
export function StowageProvider({
  baseUrl,
  getToken,
  client: givenClient,
  maxFileSize = DEFAULT_MAX_FILE_SIZE,
  initialUsage = null,
  children,
}: StowageProviderProps) {
  // getToken may be a new function on every render (hooks); read it through a ref.
  const tokenRef = useRef<GetToken | undefined>(getToken);
  tokenRef.current = getToken;
  const hasToken = !!getToken;
  const client = useMemo(
    () =>
      givenClient ??
      new StowageClient({
        baseUrl,
        getToken: hasToken ? () => (tokenRef.current ? tokenRef.current() : Promise.resolve(null)) : undefined,
      }),
    [givenClient, baseUrl, hasToken],
  );
  const [usage, setUsage] = useState<StorageUsage | null>(initialUsage);
  const [usageError, setUsageError] = useState<unknown>(null);
  const [filesVersion, setFilesVersion] = useState(0);
  const seq = useRef(0);

  const refreshUsage = useCallback(async () => {
    const mine = ++seq.current;
    try {
      const u = await client.usage();
      if (mine === seq.current) {
        setUsage(u);
        setUsageError(null);
      }
    } catch (e) {
      if (mine === seq.current) setUsageError(e);
    }
  }, [client]);

  useEffect(() => {
    if (!initialUsage) void refreshUsage();
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [refreshUsage]);

  const notifyFilesChanged = useCallback(() => {
    setFilesVersion((v) => v + 1);
    void refreshUsage();
  }, [refreshUsage]);

  const value = useMemo<StowageContextValue>(
    () => ({ client, usage, usageError, refreshUsage, filesVersion, notifyFilesChanged, maxFileSize }),
    [client, usage, usageError, refreshUsage, filesVersion, notifyFilesChanged, maxFileSize],
  );
  return <StowageContext.Provider value={value}>{children}</StowageContext.Provider>;
}

/** The surrounding StowageProvider's state; throws outside one. */
export function useStowage(): StowageContextValue {
  const ctx = useContext(StowageContext);
  if (!ctx) throw new Error('useStowage must be used inside <StowageProvider>');
  return ctx;
}

/**
 * Lets a component be used alone: inside a StowageProvider it shares that
 * provider's state; otherwise it gets a provider of its own built from its
 * `baseUrl` / `getToken` / `client` props.
 */
export function withStowage<P extends object>(Inner: ComponentType<P>, name: string) {
  function Wrapped(props: P & StowageConnectionProps & { maxFileSize?: number }) {
    const ctx = useContext(StowageContext);
    if (ctx) return <Inner {...props} />;
    return (
      <StowageProvider
        baseUrl={props.baseUrl}
        getToken={props.getToken}
        client={props.client}
        maxFileSize={props.maxFileSize}
      >
        <Inner {...props} />
      </StowageProvider>
    );
  }
  Wrapped.displayName = name;
  return Wrapped;
}
