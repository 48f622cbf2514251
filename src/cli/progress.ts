/**
 * Progress on stderr: on a terminal one live line per layer (bytes, rate) and a total; elsewhere
 * (CI logs) plain lines, a summary every few seconds; `--progress=json` one JSON event a line.
 */
import type { LayerEvent, ProgressEvent } from '../ops/transfer.js';
import { printable } from '../errors.js';
import { JSON_SCHEMA_VERSION, errorDocument, formatBytes, guardedStderr, short } from './output.js';

export type ProgressMode = 'tty' | 'plain' | 'json' | 'none';

/** The command a display follows: named in the start event, and its words (a pull writes, a push pushes). */
export interface ProgressRun {
  command: 'push' | 'pull';
  source: string;
  destination: string;
}

interface LayerLine {
  /** What the source calls the layer: the key of all its events. */
  key: string;
  /** Bytes read so far. */
  done: number;
  total?: number;
  started: number;
  status?: string;
  /** Stored at the destination (not found there already). */
  stored?: boolean;
}

const PLAIN_EVERY_MS = 5000;
const TTY_EVERY_MS = 100;
const JSON_EVERY_MS = 1000;

export function describeLayerEvent(e: LayerEvent): string {
  if (e.status === 'skipped') return e.reuse?.how === 'mounted' ? `mounted${e.reuse.from ? ` from ${e.reuse.from}` : ''}, nothing sent` : 'already there';
  if (e.status === 'foreign') return 'foreign, not copied';
  return `${e.status} ${formatBytes(e.bytes)}`;
}

/** A layer's key for a line of text: a digest's first 12 hex digits, the digest in an archive member's name (`<hex>/layer.tar`, `blobs/sha256/<hex>`), else the name. */
export function layerLabel(key: string): string {
  if (key.startsWith('sha256:')) return short(key);
  const hex = /[0-9a-f]{64}/.exec(key);
  return hex ? hex[0].slice(0, 12) : key;
}

function seconds(ms: number): string {
  return `${(ms / 1000).toFixed(1)} s`;
}

export class ProgressDisplay {
  private readonly layers = new Map<string, LayerLine>();
  private readonly started = Date.now();
  private timer: NodeJS.Timeout | undefined;
  private drawn = 0;
  private lastJson = new Map<string, number>();
  private finished = false;

  constructor(
    readonly mode: ProgressMode,
    private readonly run: ProgressRun,
    private readonly stream?: NodeJS.WriteStream,
  ) {
    const every = mode === 'tty' ? TTY_EVERY_MS : mode === 'plain' ? PLAIN_EVERY_MS : 0;
    if (every) {
      this.timer = setInterval(() => (mode === 'tty' ? this.draw() : this.plainSummary()), every);
      this.timer.unref();
    }
    if (mode === 'json') this.json({ event: 'start', command: run.command, source: run.source, destination: run.destination });
  }

  /** process.stderr, made on first use: with no progress to show it is never made. */
  private get out(): NodeJS.WriteStream {
    return this.stream ?? guardedStderr();
  }

  private line(key: string): LayerLine {
    let l = this.layers.get(key);
    if (!l) {
      l = { key, done: 0, started: Date.now() };
      this.layers.set(key, l);
    }
    return l;
  }

  onProgress = (e: ProgressEvent): void => {
    const l = this.line(e.layer);
    l.done += e.bytes;
    if (e.total !== undefined) l.total = e.total;
    if (this.mode === 'json') {
      const now = Date.now();
      if (now - (this.lastJson.get(e.layer) ?? 0) >= JSON_EVERY_MS) {
        this.lastJson.set(e.layer, now);
        this.json({ event: 'progress', layer: e.layer, bytes: l.done, ...(l.total !== undefined ? { total: l.total } : {}) });
      }
    }
  };

  onLayer = (event: LayerEvent): void => {
    // A pull writes its layers: its events say so, whatever the engine calls a blob it stored.
    const e: LayerEvent = this.run.command === 'pull' && event.status === 'pushed' ? { ...event, status: 'written' } : event;
    const key = e.layer ?? e.digest;
    const l = this.line(key);
    // Read and stored differ for a layer compressed (or decompressed) on the way: both are said.
    l.stored = e.status === 'pushed' || e.status === 'written';
    l.status = `${describeLayerEvent(e)}${l.done && e.bytes && l.done !== e.bytes ? ` (${formatBytes(l.done)} read)` : ''}`;
    if (this.mode === 'json') {
      const { layer: _, ...rest } = e;
      this.json({ event: 'layer', layer: key, ...rest, ...(l.done ? { read: l.done } : {}) });
    } else if (this.mode === 'plain') this.out.write(`layer ${layerLabel(key)}: ${l.status}\n`);
  };

  /** A warning: a `warning:` line, not overwritten by the live display, or with json a `warning` event. */
  warning(message: string): void {
    if (this.mode === 'json') this.json({ event: 'warning', message });
    else this.message(`warning: ${message}`);
  }

  /** Any other line must not be overwritten by the live display; it stays one line (control characters escaped). */
  message(text: string): void {
    if (this.mode === 'tty') this.clear();
    if (this.mode !== 'none') this.out.write(`${printable(text)}\n`);
  }

  /** Seconds since the display started (with the command's work). */
  seconds(): number {
    return (Date.now() - this.started) / 1000;
  }

  /** Bytes read from the source so far, every layer together (`stored`: of the layers stored only). */
  bytesRead(options: { stored?: boolean } = {}): number {
    let done = 0;
    for (const l of this.layers.values()) if (!options.stored || l.stored) done += l.done;
    return done;
  }

  private json(value: object): void {
    this.out.write(`${JSON.stringify({ schemaVersion: JSON_SCHEMA_VERSION, time: new Date().toISOString(), ...value })}\n`);
  }

  private rate(l: { done: number; started: number }): string {
    const s = (Date.now() - l.started) / 1000;
    return s > 0.2 ? `${formatBytes(Math.round(l.done / s))}/s` : '';
  }

  /** Bytes read and the total to read; the total unknown (undefined) while a layer's size is (a layer read from a stream). */
  private totals(): { done: number; total: number | undefined } {
    let done = 0;
    let total: number | undefined = 0;
    for (const l of this.layers.values()) {
      // A transfer started again counts its bytes again: what is shown is progress, not traffic.
      done += l.total !== undefined ? Math.min(l.done, l.total) : l.done;
      if (l.status) total = total === undefined ? undefined : total + (l.total ?? l.done);
      else total = l.total === undefined || total === undefined ? undefined : total + l.total;
    }
    return { done, total };
  }

  private clear(): void {
    if (this.drawn) this.out.write(`\x1b[${this.drawn}A\x1b[J`);
    this.drawn = 0;
  }

  private draw(): void {
    this.clear();
    const now = Date.now();
    const rows = [...this.layers.values()].map((l) => {
      const amount = l.total ? `${formatBytes(Math.min(l.done, l.total))} / ${formatBytes(l.total)}` : `${formatBytes(l.done)} read`;
      return `${layerLabel(l.key)}  ${l.status ?? `${amount}  ${this.rate(l)}  ${seconds(now - l.started)}`}`;
    });
    const t = this.totals();
    const amount = !this.layers.size ? 'waiting for the first layer' : t.total === undefined ? `${formatBytes(t.done)} read` : `${formatBytes(t.done)} / ${formatBytes(t.total)}`;
    rows.push(`total  ${amount}  ${this.rate({ done: t.done, started: this.started })}  ${seconds(now - this.started)}`);
    const width = this.out.columns || 100;
    this.out.write(rows.map((r) => `${r.slice(0, width - 1)}\n`).join(''));
    this.drawn = rows.length;
  }

  private plainSummary(): void {
    const t = this.totals();
    if (t.done === 0) return;
    const amount = t.total === undefined ? `${formatBytes(t.done)} read` : `${formatBytes(t.done)} of ${formatBytes(t.total)}`;
    this.out.write(`progress: ${amount} ${this.rate({ done: t.done, started: this.started })} ${seconds(Date.now() - this.started)}\n`);
  }

  /**
   * Stops the live display; on a terminal leaves the final per-layer lines in place. With json the
   * end event: whether the command succeeded, its time, and the manifest written or the error.
   */
  finish(result: { ok: true; manifestDigest: string } | { ok: false; error: unknown }): void {
    if (this.finished) return;
    this.finished = true;
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    if (this.mode === 'tty') this.draw();
    if (this.mode === 'json') {
      this.json({
        event: 'end',
        ok: result.ok,
        seconds: Number(this.seconds().toFixed(3)),
        bytesRead: this.bytesRead(),
        ...(result.ok ? { manifestDigest: result.manifestDigest } : { error: errorDocument(result.error) }),
      });
    }
  }
}
