// A host app as a front-end developer would write it: the stowage
// components from the installed package, auth through a `getToken` prop
// (here a stand-in for Clerk's `useAuth().getToken`, asking this app's own
// backend for a fresh session token), the server on another origin.
import { StrictMode } from 'react';
import { createRoot } from 'react-dom/client';
import {
  FileManager,
  FileUploader,
  StorageIndicator,
  StorageWarning,
  StowageProvider,
  type GetToken,
} from '@stowage/react';
import '@stowage/react/style.css';

declare global {
  interface Window {
    tokenRequests: number;
    uploaded: string[];
  }
}
window.tokenRequests = 0;
window.uploaded = [];

const server = new URLSearchParams(window.location.search).get('server') ?? '';

const getToken: GetToken = async () => {
  window.tokenRequests++;
  const r = await fetch('/session-token', { cache: 'no-store' });
  if (!r.ok) return null;
  const body = (await r.json()) as { token: string };
  return body.token;
};

function onUploaded(id: string | null, file: File) {
  window.uploaded.push(`${file.name} ${id ?? ''}`);
}

function HostApp() {
  return (
    <main>
      <h1>My files</h1>
      <StowageProvider baseUrl={server} getToken={getToken}>
        <StorageIndicator showBreakdown />
        <StorageWarning upgradeHint={<a href="/billing">upgrade your plan</a>} />
        <FileUploader onUploaded={onUploaded} />
        <FileManager defaultView="list" />
      </StowageProvider>
    </main>
  );
}

const root = document.getElementById('root');
if (root) {
  createRoot(root).render(
    <StrictMode>
      <HostApp />
    </StrictMode>,
  );
}
