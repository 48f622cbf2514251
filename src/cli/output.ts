/** Human and machine output of the CLI: summaries on stdout (--json) or stderr, errors as one line. */
import { isSmartError, printable } from '../errors.js';

export interface OutputOptions {
  json: boolean;
  quiet: boolean;
  debug: boolean;
}

export function formatBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  const units = ['KiB', 'MiB', 'GiB', 'TiB'];
  let v = n / 1024;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v.toFixed(v < 10 ? 2 : 1)} ${units[i]}`;
}

export function short(d: string): string {
  return d.startsWith('sha256:') ? d.slice(7, 19) : d;
}

export class Output {
  constructor(
    readonly options: OutputOptions,
    private readonly streams: { stderr?: NodeJS.WritableStream; stdout?: NodeJS.WritableStream } = {},
  ) {}

  // process.stderr and process.stdout are made on first use (a millisecond or two each): a quiet
  // command that prints nothing never makes them.
  private get stderr(): NodeJS.WritableStream {
    return this.streams.stderr ?? process.stderr;
  }

  private get stdout(): NodeJS.WritableStream {
    return this.streams.stdout ?? process.stdout;
  }

  /** Progress and human text: stderr, silenced by -q. */
  info(line: string): void {
    if (!this.options.quiet) this.stderr.write(`${line}\n`);
  }

  /** One line, whatever the message holds (control characters are escaped). */
  warn(line: string): void {
    this.stderr.write(`warning: ${printable(line)}\n`);
  }

  /** The one machine-readable summary, on stdout. */
  json(value: unknown): void {
    this.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
  }

  /**
   * One line naming the input at fault, always one line: a message holding remote or user-supplied
   * text (a digest with a newline, a registry's error message) has its control characters escaped.
   * The stack and causes only with --debug.
   */
  error(prog: string, e: unknown): void {
    const text = isSmartError(e) ? `${e.message}${e.hint ? ` (${e.hint})` : ''}` : String((e as Error)?.message ?? e);
    this.stderr.write(`${prog}: error: ${printable(text)}\n`);
    if (this.options.debug) {
      let cause: unknown = e;
      while (cause) {
        this.stderr.write(`${(cause as Error).stack ?? String(cause)}\n`);
        cause = (cause as Error).cause;
        if (cause) this.stderr.write('caused by: ');
      }
    }
  }
}
