import { act, fireEvent, render, screen, waitFor, within } from '@testing-library/react';
import userEvent from '@testing-library/user-event';
import { describe, expect, it, vi } from 'vitest';
import { FileManager, StorageIndicator, StowageProvider, type StowageFile } from '../src/lib';
import { apiError, clientWith, fileOf, usageOf, type Call } from './helpers';

function setup(files: StowageFile[], extra: Record<string, unknown> = {}, getToken?: () => Promise<string | null>) {
  let list = [...files];
  const env = clientWith(
    {
      'GET /api/files': (c: Call) => {
        const q = c.url.searchParams;
        let out = list;
        if (q.get('q')) out = out.filter((f) => f.file_name.includes(q.get('q') as string));
        if (q.get('type')) out = out.filter((f) => f.file_type === q.get('type'));
        if (q.get('favorite')) out = out.filter((f) => f.is_favorite);
        return { files: out, next_cursor: null };
      },
      'GET /api/storage/usage': usageOf(1000, 10_000),
      ...Object.fromEntries(
        files.flatMap((f) => [
          [`DELETE /api/files/${f.id}`, () => {
            list = list.filter((x) => x.id !== f.id);
            return new Response(null, { status: 204 });
          }],
          [`POST /api/files/${f.id}/favorite`, (c: Call) => ({ ...f, is_favorite: (c.body as { is_favorite: boolean }).is_favorite })],
          [`PUT /api/files/${f.id}/tags`, (c: Call) => ({ ...f, tags: (c.body as { tags: string[] }).tags })],
          [`POST /api/files/${f.id}/signed-url`, { url: `/s/signed-${f.id}`, expires_at: '2026-11-24T11:00:00Z' }],
        ]),
      ),
      ...extra,
    },
    getToken,
  );
  return env;
}

const item = (name: string) => {
  const li = document.querySelector(`li[data-file-name="${name}"]`);
  if (!li) throw new Error(`no item ${name}`);
  return within(li as HTMLElement);
};

describe('FileManager', () => {
  it('shows an empty state', async () => {
    const { client } = setup([]);
    render(<FileManager client={client} />);
    expect(await screen.findByText('No files yet. Upload something to get started.')).toBeTruthy();
  });

  it('shows a load error with a working retry', async () => {
    let fail = true;
    const f = fileOf({ file_name: 'back.png' });
    const { client } = clientWith({
      'GET /api/files': () => (fail ? apiError(503, 'unavailable') : { files: [f], next_cursor: null }),
    });
    render(<FileManager client={client} />);
    expect((await screen.findByRole('alert')).textContent).toMatch(/Could not load your files: The service is temporarily unavailable/);
    fail = false;
    await userEvent.click(screen.getByRole('button', { name: 'Try again' }));
    expect(await screen.findByText('back.png')).toBeTruthy();
  });

  it('lists files in a grid, switches to a list, shows thumbnails or a placeholder', async () => {
    const a = fileOf({ file_name: 'a.png', thumbnail_url: '/api/files/a/thumbnail' });
    const b = fileOf({ file_name: 'b.mp4', file_type: 'video', mime_type: 'video/mp4', duration: '00:00:05', resolution: '320x240' });
    const { client } = setup([a, b]);
    render(<FileManager client={client} />);
    await screen.findByText('a.png');
    expect(document.querySelector('ul[data-view="grid"]')).toBeTruthy();
    const img = document.querySelector(`li[data-file-name="a.png"] .stw-thumb img`) as HTMLImageElement;
    expect(img.getAttribute('src')).toBe('/api/files/a/thumbnail');
    expect(document.querySelector(`li[data-file-name="b.mp4"] .stw-thumb img`)).toBeNull();
    expect(document.querySelector(`li[data-file-name="b.mp4"] .stw-thumb svg`)).toBeTruthy();
    expect(item('b.mp4').getByText(/320x240 · 00:00:05/)).toBeTruthy();
    // a thumbnail that fails to load falls back to the icon
    fireEvent.error(img);
    expect(document.querySelector(`li[data-file-name="a.png"] .stw-thumb svg`)).toBeTruthy();
    await userEvent.click(screen.getByRole('button', { name: 'List' }));
    expect(document.querySelector('ul[data-view="list"]')).toBeTruthy();
    expect(screen.getByRole('button', { name: 'List' }).getAttribute('aria-pressed')).toBe('true');
  });

  it('fetches thumbnails with the bearer token when getToken is used', async () => {
    const a = fileOf({ file_name: 'tok.png', thumbnail_url: '/api/files/t/thumbnail' });
    const created: Blob[] = [];
    URL.createObjectURL = vi.fn((b: Blob) => {
      created.push(b);
      return 'blob:thumb';
    });
    URL.revokeObjectURL = vi.fn();
    const { client, calls } = setup([a], { 'GET /api/files/t/thumbnail': () => new Response(new Blob(['jpg'])) }, async () => 'tkn');
    render(<FileManager client={client} />);
    await screen.findByText('tok.png');
    await waitFor(() => expect(document.querySelector('li .stw-thumb img')?.getAttribute('src')).toBe('blob:thumb'));
    const thumbCall = calls.find((c) => c.path === '/api/files/t/thumbnail');
    expect(thumbCall?.headers.get('Authorization')).toBe('Bearer tkn');
  });

  it('filters by type tab, favourites, search and sort', async () => {
    const { client, calls } = setup([fileOf({ file_name: 'x.png' })]);
    render(<FileManager client={client} />);
    await screen.findByText('x.png');
    const last = () => Object.fromEntries(calls.filter((c) => c.path === '/api/files').at(-1)!.url.searchParams);
    expect(last()).toEqual({ sort: 'upload_date', order: 'desc', limit: '50' });

    await userEvent.click(screen.getByRole('tab', { name: 'Videos' }));
    await waitFor(() => expect(last().type).toBe('video'));
    expect(await screen.findByText('No files match these filters.')).toBeTruthy();
    // arrow keys move between tabs
    fireEvent.keyDown(screen.getByRole('tab', { name: 'Videos' }), { key: 'ArrowRight' });
    await waitFor(() => expect(last().type).toBe('image'));
    expect(screen.getByRole('tab', { name: 'Images' }).getAttribute('aria-selected')).toBe('true');
    expect(document.activeElement).toBe(screen.getByRole('tab', { name: 'Images' }));
    fireEvent.keyDown(screen.getByRole('tab', { name: 'Images' }), { key: 'Home' });
    await waitFor(() => expect(last().type).toBeUndefined());

    await userEvent.click(screen.getByRole('button', { name: 'Favourites only' }));
    await waitFor(() => expect(last().favorite).toBe('true'));
    await userEvent.click(screen.getByRole('button', { name: 'Favourites only' }));

    await userEvent.type(screen.getByLabelText('Search'), 'x.p');
    await waitFor(() => expect(last().q).toBe('x.p'));

    await userEvent.selectOptions(screen.getByLabelText('Sort'), 'Largest first');
    await waitFor(() => expect(last()).toMatchObject({ sort: 'file_size', order: 'desc' }));
    await userEvent.selectOptions(screen.getByLabelText('Sort'), 'Name A–Z');
    await waitFor(() => expect(last()).toMatchObject({ sort: 'file_name', order: 'asc' }));
  });

  it('pages with next_cursor and "Load more"', async () => {
    const p1 = [fileOf({ file_name: 'p1.png' })];
    const p2 = [fileOf({ file_name: 'p2.png' })];
    const { client, calls } = clientWith({
      'GET /api/files': (c: Call) =>
        c.url.searchParams.get('cursor') === 'next' ? { files: p2, next_cursor: null } : { files: p1, next_cursor: 'next' },
    });
    render(<FileManager client={client} pageSize={1} />);
    await screen.findByText('p1.png');
    await userEvent.click(screen.getByRole('button', { name: 'Load more' }));
    expect(await screen.findByText('p2.png')).toBeTruthy();
    expect(screen.getByText('p1.png')).toBeTruthy();
    expect(screen.queryByRole('button', { name: 'Load more' })).toBeNull();
    expect(calls.at(-1)!.url.searchParams.get('limit')).toBe('1');
  });

  it('toggles favourites', async () => {
    const f = fileOf({ file_name: 'fav.png' });
    const { client, calls } = setup([f]);
    render(<FileManager client={client} />);
    await screen.findByText('fav.png');
    const star = item('fav.png').getByRole('button', { name: 'Favourite fav.png' });
    expect(star.getAttribute('aria-pressed')).toBe('false');
    await userEvent.click(star);
    await waitFor(() => expect(star.getAttribute('aria-pressed')).toBe('true'));
    expect(calls.find((c) => c.path.endsWith('/favorite'))?.body).toEqual({ is_favorite: true });
  });

  it('reverts a favourite that failed and says why', async () => {
    const f = fileOf({ file_name: 'nofav.png' });
    const { client } = setup([f], { [`POST /api/files/${f.id}/favorite`]: () => apiError(404, 'not_found') });
    render(<FileManager client={client} />);
    await screen.findByText('nofav.png');
    await userEvent.click(item('nofav.png').getByRole('button', { name: 'Favourite nofav.png' }));
    expect((await screen.findByRole('alert')).textContent).toMatch(/Could not update “nofav.png”: This file no longer exists/);
    expect(item('nofav.png').getByRole('button', { name: 'Favourite nofav.png' }).getAttribute('aria-pressed')).toBe('false');
  });

  it('edits tags', async () => {
    const f = fileOf({ file_name: 'tag.png', tags: ['old'] });
    const { client, calls } = setup([f]);
    render(<FileManager client={client} />);
    await screen.findByText('tag.png');
    await userEvent.click(item('tag.png').getByRole('button', { name: 'Edit tags of tag.png' }));
    const input = screen.getByLabelText('Tags for tag.png (comma separated)');
    expect(document.activeElement).toBe(input);
    await userEvent.clear(input);
    await userEvent.type(input, ' intro, b-roll ,intro,{Enter}');
    await screen.findByRole('button', { name: 'Show files tagged b-roll' });
    expect(calls.find((c) => c.method === 'PUT')?.body).toEqual({ tags: ['intro', 'b-roll'] });
    // clicking a tag filters by it
    await userEvent.click(screen.getByRole('button', { name: 'Show files tagged intro' }));
    await waitFor(() => expect(calls.at(-1)!.url.searchParams.get('tag')).toBe('intro'));
    expect(screen.getByText(/Tag:/)).toBeTruthy();
  });

  it('renames, copies and offers the package download', async () => {
    const f = fileOf({ file_name: 'old.png', package_name: 'trip' });
    const plain = fileOf({ file_name: 'loose.png' });
    const copy = fileOf({ file_name: 'copy.png', package_name: 'trip' });
    const { client, calls } = setup([f, plain], {
      [`PATCH /api/files/${f.id}`]: (c: Call) => ({ ...f, file_name: (c.body as { file_name: string }).file_name }),
      [`POST /api/files/${f.id}/copy`]: () => new Response(JSON.stringify(copy), { status: 201, headers: { 'Content-Type': 'application/json' } }),
    });
    render(<FileManager client={client} />);
    await screen.findByText('old.png');
    // Only files in a package offer the package download.
    expect(item('old.png').getByRole('button', { name: 'Download package trip' })).toBeTruthy();
    expect(item('loose.png').queryByRole('button', { name: /Download package/ })).toBeNull();

    await userEvent.click(item('old.png').getByRole('button', { name: 'Rename old.png' }));
    const input = screen.getByLabelText('New name');
    await userEvent.clear(input);
    await userEvent.type(input, 'new.png{Enter}');
    await screen.findByText('new.png');
    expect(calls.find((c) => c.method === 'PATCH')?.body).toEqual({ file_name: 'new.png' });
    expect(screen.getByText('Renamed “old.png” to “new.png”.')).toBeTruthy();

    await userEvent.click(item('new.png').getByRole('button', { name: 'Copy new.png' }));
    await screen.findByText('copy.png');
    expect(calls.some((c) => c.method === 'POST' && c.url.pathname === `/api/files/${f.id}/copy`)).toBe(true);
  });

  it('refuses too many tags without calling the server', async () => {
    const f = fileOf({ file_name: 'many.png' });
    const { client, calls } = setup([f]);
    render(<FileManager client={client} />);
    await screen.findByText('many.png');
    await userEvent.click(item('many.png').getByRole('button', { name: 'Edit tags of many.png' }));
    const input = screen.getByLabelText('Tags for many.png (comma separated)');
    fireEvent.change(input, { target: { value: Array.from({ length: 33 }, (_, i) => `t${i}`).join(',') } });
    fireEvent.submit(input.closest('form')!);
    expect((await screen.findByRole('alert')).textContent).toMatch(/at most 32 tags/);
    expect(calls.some((c) => c.method === 'PUT')).toBe(false);
  });

  it('deletes only after confirmation and refreshes usage', async () => {
    const f = fileOf({ file_name: 'del.png', file_size: 2048 });
    const { client, calls } = setup([f]);
    render(
      <StowageProvider client={client}>
        <StorageIndicator />
        <FileManager />
      </StowageProvider>,
    );
    await screen.findByText('del.png');
    const button = item('del.png').getByRole('button', { name: 'Delete del.png' });
    await userEvent.click(button);
    let dialog = screen.getByRole('alertdialog', { name: 'Delete “del.png”?' });
    expect(dialog.textContent).toMatch(/2 KiB of storage will be freed/);
    expect(document.activeElement).toBe(within(dialog).getByRole('button', { name: 'Cancel' }));
    await userEvent.keyboard('{Escape}');
    expect(screen.queryByRole('alertdialog')).toBeNull();
    expect(document.activeElement).toBe(button);
    expect(calls.some((c) => c.method === 'DELETE')).toBe(false);

    const usageCalls = calls.filter((c) => c.path === '/api/storage/usage').length;
    await userEvent.click(button);
    dialog = screen.getByRole('alertdialog');
    await userEvent.click(within(dialog).getByRole('button', { name: 'Delete' }));
    await waitFor(() => expect(screen.queryByText('del.png')).toBeNull());
    expect(calls.some((c) => c.method === 'DELETE' && c.path === `/api/files/${f.id}`)).toBe(true);
    await waitFor(() => expect(calls.filter((c) => c.path === '/api/storage/usage').length).toBe(usageCalls + 1));
    expect(screen.getByTestId('files-status').textContent).toBe('Deleted “del.png”.');
  });

  it('reports a failed delete', async () => {
    const f = fileOf({ file_name: 'stuck.png' });
    const { client } = setup([f], { [`DELETE /api/files/${f.id}`]: () => apiError(423, 'locked', 'busy') });
    render(<FileManager client={client} />);
    await screen.findByText('stuck.png');
    await userEvent.click(item('stuck.png').getByRole('button', { name: 'Delete stuck.png' }));
    await userEvent.click(within(screen.getByRole('alertdialog')).getByRole('button', { name: 'Delete' }));
    expect((await screen.findByRole('alert')).textContent).toMatch(/Could not delete “stuck.png”: busy/);
    expect(screen.getByText('stuck.png')).toBeTruthy();
  });

  it('previews images, video and audio in place; other types have no preview', async () => {
    const img = fileOf({ file_name: 'pic.png' });
    const vid = fileOf({ file_name: 'mov.mp4', file_type: 'video', mime_type: 'video/mp4' });
    const aud = fileOf({ file_name: 'song.mp3', file_type: 'audio', mime_type: 'audio/mpeg' });
    const prj = fileOf({ file_name: 'proj.zip', file_type: 'project', mime_type: 'application/zip' });
    const { client } = setup([img, vid, aud, prj]);
    render(<FileManager client={client} />);
    await screen.findByText('pic.png');
    await userEvent.click(item('pic.png').getByRole('button', { name: 'Preview pic.png' }));
    const dialog = await screen.findByRole('dialog', { name: 'pic.png' });
    const el = await within(dialog).findByRole('img', { name: 'pic.png' });
    expect(el.getAttribute('src')).toBe(`/api/files/${img.id}/download?inline=1`);
    await userEvent.click(within(dialog).getByRole('button', { name: 'Close' }));
    await userEvent.click(item('mov.mp4').getByRole('button', { name: 'Preview mov.mp4' }));
    await waitFor(() => expect(document.querySelector('.stw-dialog video')?.getAttribute('src')).toBe(`/api/files/${vid.id}/download?inline=1`));
    await userEvent.keyboard('{Escape}');
    await userEvent.click(item('song.mp3').getByRole('button', { name: 'Preview song.mp3' }));
    await waitFor(() => expect(document.querySelector('.stw-dialog audio')).toBeTruthy());
    await userEvent.keyboard('{Escape}');
    expect(item('proj.zip').queryByRole('button', { name: /Preview/ })).toBeNull();
  });

  it('previews through a signed URL when using a bearer token', async () => {
    const img = fileOf({ file_name: 'sig.png' });
    const { client } = setup([img], {}, async () => 't');
    render(<FileManager client={client} />);
    await screen.findByText('sig.png');
    await userEvent.click(item('sig.png').getByRole('button', { name: 'Preview sig.png' }));
    const el = await screen.findByRole('img', { name: 'sig.png' });
    expect(el.getAttribute('src')).toBe(`/s/signed-${img.id}`);
  });

  it('offers a same-origin download link with cookies', async () => {
    const f = fileOf({ file_name: 'dl.png' });
    const { client } = setup([f]);
    render(<FileManager client={client} />);
    await screen.findByText('dl.png');
    const link = item('dl.png').getByRole('link', { name: 'Download dl.png' });
    expect(link.getAttribute('href')).toBe(`/api/files/${f.id}/download`);
    expect(link.getAttribute('download')).toBe('dl.png');
  });

  it('downloads through a signed URL with a bearer token', async () => {
    const f = fileOf({ file_name: 'tdl.png' });
    const { client, calls } = setup([f], {}, async () => 't');
    const clicked: string[] = [];
    const spy = vi.spyOn(HTMLAnchorElement.prototype, 'click').mockImplementation(function (this: HTMLAnchorElement) {
      clicked.push(this.getAttribute('href') ?? '');
    });
    render(<FileManager client={client} />);
    await screen.findByText('tdl.png');
    await userEvent.click(item('tdl.png').getByRole('button', { name: 'Download tdl.png' }));
    await waitFor(() => expect(clicked).toEqual([`/s/signed-${f.id}`]));
    expect(calls.find((c) => c.path.endsWith('/signed-url'))?.body).toEqual({ expires_in: 300 });
    spy.mockRestore();
  });

  it('copies a share link to the clipboard', async () => {
    const f = fileOf({ file_name: 'share.png' });
    const { client, calls } = setup([f]);
    const writeText = vi.fn(async () => undefined);
    Object.defineProperty(navigator, 'clipboard', { value: { writeText }, configurable: true });
    render(<FileManager client={client} shareExpiresIn={600} />);
    await screen.findByText('share.png');
    await userEvent.click(item('share.png').getByRole('button', { name: 'Copy share link for share.png' }));
    await waitFor(() => expect(writeText).toHaveBeenCalledWith(`${window.location.origin}/s/signed-${f.id}`));
    expect(calls.find((c) => c.path.endsWith('/signed-url'))?.body).toEqual({ expires_in: 600 });
    expect(screen.getByTestId('files-status').textContent).toMatch(/Link to “share.png” copied/);
  });

  it('shows the share link when the clipboard is unavailable', async () => {
    const f = fileOf({ file_name: 'noclip.png' });
    const { client } = setup([f]);
    Object.defineProperty(navigator, 'clipboard', { value: { writeText: () => Promise.reject(new Error('denied')) }, configurable: true });
    render(<FileManager client={client} />);
    await screen.findByText('noclip.png');
    await userEvent.click(item('noclip.png').getByRole('button', { name: 'Copy share link for noclip.png' }));
    const field = (await screen.findByLabelText('Share link')) as HTMLInputElement;
    expect(field.value).toBe(`${window.location.origin}/s/signed-${f.id}`);
  });

  it('reloads when files change elsewhere (e.g. after an upload)', async () => {
    const { client, calls } = setup([]);
    let bump: () => void = () => undefined;
    const { useStowage } = await import('../src/lib');
    function Hook() {
      bump = useStowage().notifyFilesChanged;
      return null;
    }
    render(
      <StowageProvider client={client}>
        <Hook />
        <FileManager />
      </StowageProvider>,
    );
    await screen.findByText(/No files yet/);
    const before = calls.filter((c) => c.path === '/api/files').length;
    act(() => bump());
    await waitFor(() => expect(calls.filter((c) => c.path === '/api/files').length).toBe(before + 1));
  });

  it('looks again for thumbnails of fresh uploads', async () => {
    vi.useFakeTimers({ shouldAdvanceTime: true });
    try {
      const f = fileOf({ file_name: 'fresh.png', upload_date: new Date().toISOString(), thumbnail_url: null });
      let ready = false;
      const { client, calls } = setup([f], {
        [`GET /api/files/${f.id}`]: () => ({ ...f, thumbnail_url: ready ? `/api/files/${f.id}/thumbnail` : null }),
      });
      render(<FileManager client={client} />);
      await screen.findByText('fresh.png');
      await act(() => vi.advanceTimersByTimeAsync(2100));
      expect(calls.filter((c) => c.path === `/api/files/${f.id}`)).toHaveLength(1);
      expect(document.querySelector('li .stw-thumb img')).toBeNull();
      ready = true;
      await act(() => vi.advanceTimersByTimeAsync(4100));
      await waitFor(() => expect(document.querySelector('li .stw-thumb img')?.getAttribute('src')).toBe(`/api/files/${f.id}/thumbnail`));
    } finally {
      vi.useRealTimers();
    }
  });
});
