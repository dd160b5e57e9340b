import { act, fireEvent, render, screen, waitFor } from '@testing-library/react';
import userEvent from '@testing-library/user-event';
import { beforeEach, describe, expect, it, vi } from 'vitest';
import { FileUploader, StorageIndicator, StowageProvider, UploadProgress, type UploadItem } from '../src/lib';
import { clientWith, usageOf } from './helpers';

// A stand-in for tus-js-client's Upload that the tests drive by hand.
const tusState = vi.hoisted(() => ({ uploads: [] as any[] }));
vi.mock('tus-js-client', () => {
  class Upload {
    file: File;
    options: any;
    url: string | null = null;
    started = 0;
    aborted: boolean[] = [];
    constructor(file: File, options: any) {
      this.file = file;
      this.options = options;
      tusState.uploads.push(this);
    }
    start() {
      this.started++;
    }
    abort(terminate?: boolean) {
      this.aborted.push(!!terminate);
      return Promise.resolve();
    }
    findPreviousUploads() {
      return Promise.resolve([]);
    }
    resumeFromPreviousUpload() {}
  }
  return { Upload };
});

const MiB = 1024 * 1024;
const fileOfSize = (name: string, size: number, type = 'image/png') => {
  const f = new File(['x'], name, { type });
  Object.defineProperty(f, 'size', { value: size });
  return f;
};
const tusResponse = (status: number, body = '', headers: Record<string, string> = {}) => ({
  getStatus: () => status,
  getBody: () => body,
  getHeader: (h: string) => headers[h],
});

beforeEach(() => {
  tusState.uploads.length = 0;
});

async function choose(files: File[]) {
  const input = screen.getByTestId('file-input') as HTMLInputElement;
  await userEvent.upload(input, files);
}

describe('FileUploader', () => {
  it('uploads with tus to /api/uploads with metadata and reports progress, speed and completion', async () => {
    let used = 0;
    const { client, calls } = clientWith({ 'GET /api/storage/usage': () => usageOf(used, 10 * MiB) });
    const onUploaded = vi.fn();
    render(
      <StowageProvider client={client}>
        <StorageIndicator />
        <FileUploader fileType="image" onUploaded={onUploaded} />
      </StowageProvider>,
    );
    await screen.findByText('0 bytes of 10 MiB used');
    await choose([fileOfSize('cat.png', 2 * MiB)]);
    await waitFor(() => expect(tusState.uploads).toHaveLength(1));
    const up = tusState.uploads[0];
    expect(up.options.endpoint).toBe('/api/uploads');
    expect(up.options.metadata).toEqual({ filename: 'cat.png', filetype: 'image/png', file_type: 'image' });
    expect(up.options.retryDelays.length).toBeGreaterThan(0);
    await waitFor(() => expect(up.started).toBe(1));

    const now = vi.spyOn(performance, 'now');
    now.mockReturnValue(100_000);
    act(() => up.options.onProgress(0, 2 * MiB));
    now.mockReturnValue(101_000);
    act(() => up.options.onProgress(MiB, 2 * MiB));
    const bar = screen.getByRole('progressbar', { name: 'Upload progress for cat.png' });
    expect(bar.getAttribute('aria-valuenow')).toBe('50');
    expect(screen.getByText(/1 MiB of 2 MiB/).textContent).toMatch(/1 MiB\/s · 1 s left/);
    now.mockRestore();

    used = 2 * MiB;
    act(() => up.options.onSuccess({ lastResponse: tusResponse(204, '', { 'Stowage-File-Id': 'file-1' }) }));
    expect(screen.getByText('Uploaded')).toBeTruthy();
    expect(onUploaded).toHaveBeenCalledWith('file-1', expect.any(File));
    // usage is refreshed after the upload
    await screen.findByText('2 MiB of 10 MiB used');
    expect(calls.filter((c) => c.path === '/api/storage/usage').length).toBeGreaterThanOrEqual(3);
  });

  it('speaks tus 1.0 by default and the IETF draft when asked', async () => {
    const { client } = clientWith({ 'GET /api/storage/usage': usageOf(0, 10 * MiB) });
    const { rerender } = render(<FileUploader client={client} />);
    await choose([fileOfSize('t.png', 10)]);
    await waitFor(() => expect(tusState.uploads).toHaveLength(1));
    expect(tusState.uploads[0].options.protocol).toBe('tus-v1');
    rerender(<FileUploader client={client} protocol="ietf" />);
    await choose([fileOfSize('i.png', 10)]);
    await waitFor(() => expect(tusState.uploads).toHaveLength(2));
    expect(tusState.uploads[1].options.protocol).toBe('ietf-draft-05');
    expect(tusState.uploads[1].options.endpoint).toBe('/api/uploads');
    // The upload already under way keeps its protocol.
    expect(tusState.uploads[0].options.protocol).toBe('tus-v1');
  });

  it('adds the bearer token to every tus request', async () => {
    const { client } = clientWith({ 'GET /api/storage/usage': usageOf(0, 10 * MiB) }, async () => 'tok');
    render(<FileUploader client={client} />);
    await choose([fileOfSize('a.png', 10)]);
    await waitFor(() => expect(tusState.uploads).toHaveLength(1));
    const headers: Record<string, string> = {};
    await tusState.uploads[0].options.onBeforeRequest({
      setHeader: (k: string, v: string) => (headers[k] = v),
      getUnderlyingObject: () => ({}),
    });
    expect(headers).toEqual({ Authorization: 'Bearer tok' });
  });

  it('refuses a file over the per-file limit before sending', async () => {
    const { client } = clientWith({ 'GET /api/storage/usage': usageOf(0, 100 * MiB) });
    render(<FileUploader client={client} maxFileSize={5 * MiB} />);
    await choose([fileOfSize('big.mov', 6 * MiB, 'video/quicktime')]);
    const row = await screen.findByText(/over the 5 MiB limit per file/);
    expect(row.textContent).toBe('“big.mov” is 6 MiB, which is over the 5 MiB limit per file.');
    expect(screen.getByText('Not uploaded')).toBeTruthy();
    expect(tusState.uploads).toHaveLength(0);
  });

  it('refuses a file larger than the space left, counting uploads in flight', async () => {
    const { client } = clientWith({ 'GET /api/storage/usage': usageOf(6 * MiB, 10 * MiB) });
    render(<FileUploader client={client} />);
    await choose([fileOfSize('one.png', 3 * MiB), fileOfSize('two.png', 2 * MiB)]);
    expect(await screen.findByText('“two.png” needs 2 MiB but only 1 MiB is left. Delete files you no longer need or upgrade your plan.')).toBeTruthy();
    expect(tusState.uploads.map((u) => u.file.name)).toEqual(['one.png']);
  });

  it('blocks uploads when storage is full', async () => {
    const { client } = clientWith({ 'GET /api/storage/usage': usageOf(10 * MiB, 10 * MiB) });
    render(<FileUploader client={client} />);
    expect(await screen.findByText(/Uploads are turned off: your storage is full/)).toBeTruthy();
    expect((screen.getByTestId('file-input') as HTMLInputElement).disabled).toBe(true);
    expect(screen.queryByRole('button', { name: 'Choose files' })).toBeNull();
    fireEvent.drop(screen.getByTestId('dropzone'), { dataTransfer: { files: [fileOfSize('x.png', 1)] } });
    expect(tusState.uploads).toHaveLength(0);
  });

  it('accepts dropped files', async () => {
    const { client } = clientWith({ 'GET /api/storage/usage': usageOf(0, 10 * MiB) });
    render(<FileUploader client={client} />);
    await screen.findByText(/10 MiB free/);
    const zone = screen.getByTestId('dropzone');
    fireEvent.dragEnter(zone, { dataTransfer: { files: [] } });
    expect(zone.className).toMatch(/stw-dropzone-active/);
    fireEvent.drop(zone, { dataTransfer: { files: [fileOfSize('d1.png', 5), fileOfSize('d2.png', 6)] } });
    await waitFor(() => expect(tusState.uploads.map((u) => u.file.name)).toEqual(['d1.png', 'd2.png']));
    expect(zone.className).not.toMatch(/stw-dropzone-active/);
  });

  it('shows server errors in plain words', async () => {
    const { client } = clientWith({ 'GET /api/storage/usage': usageOf(0, 10 * MiB) });
    render(<FileUploader client={client} />);
    await choose([fileOfSize('q.png', 10), fileOfSize('t.exe', 10, 'application/x-msdownload')]);
    await waitFor(() => expect(tusState.uploads).toHaveLength(2));
    const body = (code: string) => JSON.stringify({ error: { code, message: code } });
    act(() => tusState.uploads[0].options.onError({ originalResponse: tusResponse(507, body('quota_exceeded')) }));
    act(() => tusState.uploads[1].options.onError({ originalResponse: tusResponse(415, body('unsupported_media_type')) }));
    expect(screen.getByText(/“q.png” was not uploaded: there is not enough storage space left/)).toBeTruthy();
    expect(screen.getByText(/“t.exe” was not uploaded: this kind of file is not supported/)).toBeTruthy();
    expect(screen.getAllByRole('button', { name: /Retry/ })).toHaveLength(2);
  });

  it('retries only what can succeed on retry', async () => {
    const { client } = clientWith({ 'GET /api/storage/usage': usageOf(0, 10 * MiB) });
    render(<FileUploader client={client} />);
    await choose([fileOfSize('r.png', 10)]);
    await waitFor(() => expect(tusState.uploads).toHaveLength(1));
    const should = tusState.uploads[0].options.onShouldRetry;
    const err = (s: number | null) => ({ originalResponse: s == null ? null : tusResponse(s) });
    expect(should(err(null), 0, {})).toBe(true);
    expect(should(err(503), 0, {})).toBe(true);
    expect(should(err(423), 0, {})).toBe(true);
    expect(should(err(507), 0, {})).toBe(false);
    expect(should(err(413), 0, {})).toBe(false);
    expect(should(err(415), 0, {})).toBe(false);
  });

  it('pauses, resumes and cancels', async () => {
    const { client } = clientWith({ 'GET /api/storage/usage': usageOf(0, 10 * MiB) });
    render(<FileUploader client={client} />);
    await choose([fileOfSize('p.png', 100)]);
    await waitFor(() => expect(tusState.uploads[0]?.started).toBe(1));
    const up = tusState.uploads[0];
    await userEvent.click(screen.getByRole('button', { name: 'Pause p.png' }));
    expect(up.aborted).toEqual([false]);
    expect(screen.getByText(/^Paused/)).toBeTruthy();
    await userEvent.click(screen.getByRole('button', { name: 'Resume p.png' }));
    expect(up.started).toBe(2);
    await userEvent.click(screen.getByRole('button', { name: 'Cancel p.png' }));
    expect(up.aborted).toEqual([false, true]);
    expect(screen.getByText('Cancelled')).toBeTruthy();
    await userEvent.click(screen.getByRole('button', { name: 'Clear finished' }));
    expect(screen.queryByText('p.png')).toBeNull();
  });

  it('falls back to multipart POST /api/files/upload when asked', async () => {
    const sent: { url: string; form: FormData; headers: Record<string, string> }[] = [];
    class FakeXHR {
      upload: { onprogress: ((e: any) => void) | null } = { onprogress: null };
      onload: (() => void) | null = null;
      onerror: (() => void) | null = null;
      onabort: (() => void) | null = null;
      status = 0;
      responseText = '';
      withCredentials = false;
      private url = '';
      private headers: Record<string, string> = {};
      open(_m: string, url: string) {
        this.url = url;
      }
      setRequestHeader(k: string, v: string) {
        this.headers[k] = v;
      }
      send(form: FormData) {
        sent.push({ url: this.url, form, headers: this.headers });
        setTimeout(() => {
          this.upload.onprogress?.({ lengthComputable: true, loaded: 5, total: 10 });
          this.status = 201;
          this.responseText = JSON.stringify({ id: 'mp-1' });
          this.onload?.();
        }, 0);
      }
      abort() {
        this.onabort?.();
      }
    }
    vi.stubGlobal('XMLHttpRequest', FakeXHR);
    const onUploaded = vi.fn();
    const { client } = clientWith({ 'GET /api/storage/usage': usageOf(0, 10 * MiB) });
    render(<FileUploader client={client} transport="multipart" fileType="image" onUploaded={onUploaded} />);
    await choose([fileOfSize('m.png', 10)]);
    await waitFor(() => expect(onUploaded).toHaveBeenCalledWith('mp-1', expect.any(File)));
    expect(sent[0].url).toBe('/api/files/upload');
    expect(sent[0].form.get('file_type')).toBe('image');
    expect((sent[0].form.get('file') as File).name).toBe('m.png');
    expect(tusState.uploads).toHaveLength(0);
    expect(screen.queryByRole('button', { name: /Pause/ })).toBeNull();
    vi.unstubAllGlobals();
  });
});

describe('UploadProgress', () => {
  const item = (p: Partial<UploadItem>): UploadItem => ({
    key: 'k',
    name: 'clip.mp4',
    size: 100 * MiB,
    status: 'uploading',
    sent: 25 * MiB,
    speed: 5 * MiB,
    eta: 15,
    canPause: true,
    ...p,
  });

  it('renders nothing without items', () => {
    const { container } = render(<UploadProgress items={[]} />);
    expect(container.textContent).toBe('');
  });

  it('shows percent, speed and time left while uploading', () => {
    render(<UploadProgress items={[item({})]} onPause={() => undefined} onCancel={() => undefined} />);
    expect(screen.getByText('Uploading · 25%')).toBeTruthy();
    expect(screen.getByText(/25 MiB of 100 MiB · 5 MiB\/s · 15 s left/)).toBeTruthy();
    expect(screen.getByRole('button', { name: 'Pause clip.mp4' })).toBeTruthy();
    expect(screen.getByRole('button', { name: 'Cancel clip.mp4' })).toBeTruthy();
  });

  it('formats long waits', () => {
    render(<UploadProgress items={[item({ eta: 3725 })]} />);
    expect(screen.getByText(/1 h 2 min left/)).toBeTruthy();
  });

  it('shows errors and a retry button', () => {
    const onRetry = vi.fn();
    render(<UploadProgress items={[item({ status: 'error', error: 'No space left.' })]} onRetry={onRetry} />);
    expect(screen.getByRole('alert').textContent).toBe('No space left.');
    fireEvent.click(screen.getByRole('button', { name: 'Retry clip.mp4' }));
    expect(onRetry).toHaveBeenCalledWith('k');
  });

  it('offers no pause for transports that cannot pause', () => {
    render(<UploadProgress items={[item({ canPause: false })]} onPause={() => undefined} />);
    expect(screen.queryByRole('button', { name: /Pause/ })).toBeNull();
  });
});
