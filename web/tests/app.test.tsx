import { render, screen, waitFor } from '@testing-library/react';
import userEvent from '@testing-library/user-event';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { App } from '../src/demo/App';
import { apiError, mockFetch, usageOf, type Call } from './helpers';

afterEach(() => {
  vi.unstubAllGlobals();
});

function stubServer({ devLogin }: { devLogin: boolean }) {
  let session: string | null = null;
  const m = mockFetch({
    'GET /api/storage/usage': () => (session ? usageOf(0, 1024, { user_id: session }) : apiError(401, 'unauthorized')),
    'GET /api/dev/status': () => (devLogin ? { dev_login: true } : apiError(404, 'not_found')),
    'POST /api/dev/login': (c: Call) => {
      session = (c.body as { user_id: string }).user_id;
      return new Response(null, { status: 204 });
    },
    'POST /api/dev/logout': () => {
      session = null;
      return new Response(null, { status: 204 });
    },
    'GET /api/files': { files: [], next_cursor: null },
  });
  vi.stubGlobal('fetch', m.fetch);
  return m;
}

describe('demo app', () => {
  it('offers development sign-in, then shows every component, and signs out', async () => {
    const { calls } = stubServer({ devLogin: true });
    render(<App />);
    expect(await screen.findByRole('heading', { name: 'Sign in' })).toBeTruthy();
    const input = screen.getByLabelText('User id');
    await userEvent.clear(input);
    await userEvent.type(input, 'alice');
    await userEvent.click(screen.getByRole('button', { name: 'Sign in as alice' }));
    expect(calls.find((c) => c.path === '/api/dev/login')?.body).toEqual({ user_id: 'alice' });
    expect((await screen.findByTestId('user-id')).textContent).toBe('alice');
    expect(screen.getByRole('region', { name: 'Storage usage' })).toBeTruthy();
    expect(screen.getByRole('region', { name: 'Upload files' })).toBeTruthy();
    expect(await screen.findByText('No files yet. Upload something to get started.')).toBeTruthy();
    await userEvent.click(screen.getByRole('button', { name: 'Sign out' }));
    expect(await screen.findByRole('heading', { name: 'Sign in' })).toBeTruthy();
    expect(calls.some((c) => c.path === '/api/dev/logout')).toBe(true);
  });

  it('asks for a sign-in elsewhere when development sign-in is off', async () => {
    stubServer({ devLogin: false });
    render(<App />);
    expect(await screen.findByRole('heading', { name: 'Sign in required' })).toBeTruthy();
    expect(screen.queryByLabelText('User id')).toBeNull();
  });

  it('shows an error when the server cannot be reached', async () => {
    vi.stubGlobal('fetch', async () => {
      throw new TypeError('Failed to fetch');
    });
    render(<App />);
    await waitFor(() => expect(screen.getByRole('alert').textContent).toMatch(/Could not reach the server/));
    expect(screen.getByRole('button', { name: 'Try again' })).toBeTruthy();
  });
});
