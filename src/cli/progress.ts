/**
 * Progress on stderr: on a terminal one live line per layer (bytes, rate) and a total; elsewhere
 * (CI logs) plain lines, a summary every few seconds; `--progress=json` one JSON event a line.
 */
import type { LayerEvent, ProgressEvent } from '../ops/transfer.js';
import { printable } from '../errors.js';
import { formatBytes, short } from './output.js';

export type ProgressMode = 'tty' | 'plain' | 'json' | 'none';

interface LayerLine {
  digest: string;
  done: number;
  total?: number;
  started: number;
  status?: string;
}

const PLAIN_EVERY_MS = 5000;
const TTY_EVERY_MS = 100;
const JSON_EVERY_MS = 1000;

export function describeLayerEvent(e: LayerEvent): string {
  if (e.status === 'skipped') return e.reuse?.how === 'mounted' ? `mounted${e.reuse.from ? ` from ${e.reuse.from}` : ''}, nothing sent` : 'already there';
  if (e.status === 'foreign') return 'foreign, not copied';
  return `${e.status} ${formatBytes(e.bytes)}`;
}

export class ProgressDisplay {
  private readonly layers = new Map<string, LayerLine>();
  private readonly started = Date.now();
  private timer: NodeJS.Timeout | undefined;
  private drawn = 0;
  private lastJson = new Map<string, number>();

  constructor(
    readonly mode: ProgressMode,
    private readonly stream?: NodeJS.WriteStream,
  ) {
    const every = mode === 'tty' ? TTY_EVERY_MS : mode === 'plain' ? PLAIN_EVERY_MS : 0;
    if (every) {
      this.timer = setInterval(() => (mode === 'tty' ? this.draw() : this.plainSummary()), every);
      this.timer.unref();
    }
  }

  /** process.stderr, made on first use: with no progress to show it is never made. */
  private get out(): NodeJS.WriteStream {
    return this.stream ?? process.stderr;
  }

  private line(digest: string): LayerLine {
    let l = this.layers.get(digest);
    if (!l) {
      l = { digest, done: 0, started: Date.now() };
      this.layers.set(digest, l);
    }
    return l;
  }

  onProgress = (e: ProgressEvent): void => {
    const l = this.line(e.digest);
    l.done += e.bytes;
    if (e.total !== undefined) l.total = e.total;
    if (this.mode === 'json') {
      const now = Date.now();
      if (now - (this.lastJson.get(e.digest) ?? 0) >= JSON_EVERY_MS) {
        this.lastJson.set(e.digest, now);
        this.json({ event: 'progress', digest: e.digest, bytes: l.done, ...(l.total !== undefined ? { total: l.total } : {}) });
      }
    }
  };

  onLayer = (e: LayerEvent): void => {
    const l = this.line(e.digest);
    l.status = describeLayerEvent(e);
    if (this.mode === 'json') this.json({ event: 'layer', ...e });
    else if (this.mode === 'plain') this.out.write(`layer ${short(e.digest)}: ${l.status}\n`);
  };

  /** Any other line (a warning) must not be overwritten by the live display; it stays one line (control characters escaped). */
  message(text: string): void {
    if (this.mode === 'tty') this.clear();
    if (this.mode !== 'none') this.out.write(`${printable(text)}\n`);
  }

  private json(value: object): void {
    this.out.write(`${JSON.stringify(value)}\n`);
  }

  private rate(l: { done: number; started: number }): string {
    const s = (Date.now() - l.started) / 1000;
    return s > 0.2 ? `${formatBytes(Math.round(l.done / s))}/s` : '';
  }

  private totals(): { done: number; total: number } {
    let done = 0;
    let total = 0;
    for (const l of this.layers.values()) {
      // A transfer started again counts its bytes again: what is shown is progress, not traffic.
      done += l.total !== undefined ? Math.min(l.done, l.total) : l.done;
      total += l.total ?? l.done;
    }
    return { done, total };
  }

  private clear(): void {
    if (this.drawn) this.out.write(`\x1b[${this.drawn}A\x1b[J`);
    this.drawn = 0;
  }

  private draw(): void {
    this.clear();
    const rows = [...this.layers.values()].map((l) => {
      const amount = l.total ? `${formatBytes(Math.min(l.done, l.total))} / ${formatBytes(l.total)}` : formatBytes(l.done);
      return `${short(l.digest)}  ${l.status ?? `${amount}  ${this.rate(l)}`}`;
    });
    const t = this.totals();
    rows.push(`total  ${formatBytes(t.done)} / ${formatBytes(t.total)}  ${this.rate({ done: t.done, started: this.started })}`);
    const width = this.out.columns || 100;
    this.out.write(rows.map((r) => `${r.slice(0, width - 1)}\n`).join(''));
    this.drawn = rows.length;
  }

  private plainSummary(): void {
    const t = this.totals();
    if (t.done === 0) return;
    this.out.write(`progress: ${formatBytes(t.done)} of ${formatBytes(t.total)} ${this.rate({ done: t.done, started: this.started })}\n`);
  }

  /** Stops the live display; on a terminal leaves the final per-layer lines in place. */
  finish(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    if (this.mode === 'tty') this.draw();
  }
}
