/** The plain progress display (CI logs): totals that add up after a transfer restarts, rates printed as rates. */
import { afterEach, describe, expect, it, vi } from 'vitest';
import { ProgressDisplay } from '../../src/cli/progress.js';

function capture(): { stream: NodeJS.WriteStream; text: () => string } {
  let out = '';
  return { stream: { write: (s: string) => ((out += s), true), columns: 100 } as unknown as NodeJS.WriteStream, text: () => out };
}

describe('plain progress', () => {
  afterEach(() => vi.useRealTimers());

  // Found by the fault soak: after uploads were sent again the summary read "3.66 KiB of 1.63 KiB
  // 748.8502299540091 B/s": the bytes of every attempt counted, and a slow rate not rounded.
  it('counts a layer sent again once, and rounds a slow rate', () => {
    vi.useFakeTimers();
    const { stream, text } = capture();
    const display = new ProgressDisplay('plain', { command: 'push', source: 'oci:in', destination: 'file:out' }, stream);
    display.onProgress({ layer: 'sha256:' + 'a'.repeat(64), bytes: 1001, total: 1670 });
    display.onProgress({ layer: 'sha256:' + 'a'.repeat(64), bytes: 1670, total: 1670 }); // the attempt that went through
    vi.advanceTimersByTime(5000);
    display.finish({ ok: true, manifestDigest: 'sha256:' + 'b'.repeat(64) });
    expect(text()).toMatch(/^progress: 1\.63 KiB of 1\.63 KiB \d+ B\/s \d+\.\d s\n$/);
  });
});

describe('formatBytes', () => {
  // Found by the fault soak: the summary after a slow pull read "(559.56790123456 B/s)".
  it('prints whole bytes below a KiB, a rate included', async () => {
    const { formatBytes } = await import('../../src/cli/output.js');
    expect(formatBytes(559.5679012345679)).toBe('560 B');
    expect(formatBytes(1536)).toBe('1.50 KiB');
  });
});
