import { render, screen, waitFor } from '@testing-library/react';
import userEvent from '@testing-library/user-event';
import { describe, expect, it } from 'vitest';
import { StorageIndicator, StorageWarning, StowageProvider, storageLevel, useStowage } from '../src/lib';
import { apiError, clientWith, usageOf } from './helpers';

const MiB = 1024 * 1024;

describe('storageLevel', () => {
  it('applies the 80 / 95 / full thresholds', () => {
    expect(storageLevel(usageOf(79.99 * MiB, 100 * MiB))).toBe('ok');
    expect(storageLevel(usageOf(80 * MiB, 100 * MiB))).toBe('warn');
    expect(storageLevel(usageOf(94.99 * MiB, 100 * MiB))).toBe('warn');
    expect(storageLevel(usageOf(95 * MiB, 100 * MiB))).toBe('critical');
    expect(storageLevel(usageOf(99.99 * MiB, 100 * MiB))).toBe('critical');
    expect(storageLevel(usageOf(100 * MiB, 100 * MiB))).toBe('full');
    expect(storageLevel(usageOf(120 * MiB, 100 * MiB))).toBe('full');
  });
  it('treats a zero quota as full', () => {
    expect(storageLevel(usageOf(0, 0))).toBe('full');
  });
  it('is full when rounding says 100 % but bytes are left', () => {
    expect(storageLevel({ ...usageOf(100 * MiB - 1, 100 * MiB), percent_used: 100 })).toBe('full');
  });
});

describe('StorageIndicator', () => {
  it('shows used / total and percent from GET /api/storage/usage', async () => {
    const { client } = clientWith({ 'GET /api/storage/usage': usageOf(1.5 * MiB, 3 * MiB) });
    render(<StorageIndicator client={client} />);
    expect(await screen.findByText('1.5 MiB of 3 MiB used')).toBeTruthy();
    expect(screen.getByTestId('storage-percent').textContent).toBe('50%');
    const meter = screen.getByRole('meter', { name: 'Storage used' });
    expect(meter.getAttribute('aria-valuenow')).toBe('50');
    expect(screen.getByText(/1\.5 MiB free/)).toBeTruthy();
  });

  it('shows a loading state first', () => {
    const { client } = clientWith({ 'GET /api/storage/usage': () => new Promise(() => undefined) });
    render(<StorageIndicator client={client} />);
    expect(screen.getByText('Loading storage usage…')).toBeTruthy();
  });

  it('shows the per-type breakdown', async () => {
    const { client } = clientWith({ 'GET /api/storage/usage': usageOf(2 * MiB, 10 * MiB) });
    render(<StorageIndicator client={client} showBreakdown />);
    await screen.findByText('Images');
    for (const t of ['Videos', 'Audio', 'Scenes', 'Projects']) expect(screen.getByText(t)).toBeTruthy();
  });

  it('shows an error with a retry that reloads', async () => {
    let fail = true;
    const { client } = clientWith({
      'GET /api/storage/usage': () => (fail ? apiError(503, 'unavailable', 'down') : usageOf(MiB, 2 * MiB)),
    });
    render(<StorageIndicator client={client} />);
    expect((await screen.findByRole('alert')).textContent).toMatch(/temporarily unavailable/);
    fail = false;
    await userEvent.click(screen.getByRole('button', { name: 'Try again' }));
    expect(await screen.findByText('1 MiB of 2 MiB used')).toBeTruthy();
  });

  it('caps the bar at 100 % when over quota', async () => {
    const { client } = clientWith({ 'GET /api/storage/usage': usageOf(4 * MiB, 2 * MiB) });
    render(<StorageIndicator client={client} />);
    await screen.findByText('4 MiB of 2 MiB used');
    expect(screen.getByRole('meter').getAttribute('aria-valuenow')).toBe('100');
  });
});

describe('StorageWarning', () => {
  const renderAt = (total: number, max: number) =>
    render(
      <StowageProvider client={clientWith({}).client} initialUsage={usageOf(total, max)}>
        <StorageWarning />
      </StowageProvider>,
    );

  it('shows nothing under 80 %', () => {
    const { container } = renderAt(79 * MiB, 100 * MiB);
    expect(container.textContent).toBe('');
  });

  it('warns at 80 %', () => {
    renderAt(80 * MiB, 100 * MiB);
    const box = screen.getByRole('status');
    expect(box.getAttribute('data-level')).toBe('warn');
    expect(box.textContent).toMatch(/You have used 80% of your storage/);
    expect(box.textContent).toMatch(/20 MiB left/);
  });

  it('is critical at 95 %', () => {
    renderAt(95 * MiB, 100 * MiB);
    const box = screen.getByRole('alert');
    expect(box.getAttribute('data-level')).toBe('critical');
    expect(box.textContent).toMatch(/Storage almost full \(95% used\)/);
    expect(box.textContent).toMatch(/Only 5 MiB left/);
  });

  it('says uploads are off and what to do when full', () => {
    renderAt(100 * MiB, 100 * MiB);
    const box = screen.getByRole('alert');
    expect(box.getAttribute('data-level')).toBe('full');
    expect(box.textContent).toMatch(/Your storage is full/);
    expect(box.textContent).toMatch(/Uploads are turned off/);
    expect(box.textContent).toMatch(/Delete files you no longer need/);
  });

  it('explains a zero quota', () => {
    renderAt(0, 0);
    expect(screen.getByRole('alert').textContent).toMatch(/Uploads are not available on your plan/);
  });

  it('accepts a custom upgrade hint', () => {
    render(
      <StowageProvider client={clientWith({}).client} initialUsage={usageOf(96, 100)}>
        <StorageWarning upgradeHint={<a href="/plans">choose a bigger plan</a>} />
      </StowageProvider>,
    );
    expect(screen.getByRole('link', { name: 'choose a bigger plan' })).toBeTruthy();
  });

  it('follows the shared usage when it is refreshed', async () => {
    let total = 50;
    const { client } = clientWith({ 'GET /api/storage/usage': () => usageOf(total, 100) });
    function Refresh() {
      const { refreshUsage } = useStowage();
      return (
        <button type="button" onClick={() => void refreshUsage()}>
          refresh
        </button>
      );
    }
    render(
      <StowageProvider client={client}>
        <StorageWarning />
        <StorageIndicator />
        <Refresh />
      </StowageProvider>,
    );
    await screen.findByText('50 bytes of 100 bytes used');
    expect(screen.queryByRole('alert')).toBeNull();
    total = 100;
    await userEvent.click(screen.getByRole('button', { name: 'refresh' }));
    await waitFor(() => expect(screen.getByRole('alert').textContent).toMatch(/storage is full/));
    expect(screen.getByText('100 bytes of 100 bytes used')).toBeTruthy();
  });
});
