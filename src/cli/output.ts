/** Human and machine output of the CLI: summaries on stdout (--json) or stderr, errors as one line. */
import { isErrno, isSmartError, printable, type ErrorCode } from '../errors.js';

/**
 * The version of every JSON document the CLI prints (summaries, cache results, errors, progress
 * events): raised when a key changes meaning or goes away, not when one is added.
 */
export const JSON_SCHEMA_VERSION = 1;

/** What an error says to a script: the code, the message, the input at fault, the hint, whether trying again may help. */
export interface ErrorDocument {
  code: ErrorCode;
  message: string;
  input: string | null;
  hint: string | null;
  retryable: boolean;
}

/** Any thrown value as an error document: a SmartError as it is, anything else INTERNAL. */
export function errorDocument(e: unknown): ErrorDocument {
  if (isSmartError(e)) return { code: e.code, message: e.message, input: e.input ?? null, hint: e.hint ?? null, retryable: e.retryable };
  return { code: 'INTERNAL', message: String((e as Error)?.message ?? e), input: null, hint: null, retryable: false };
}

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

let stdoutGuarded = false;
let stdoutBroken = false;

/**
 * process.stdout, made on first use, with a closed pipe made harmless: when the reader goes away
 * (`smart push --help | head -1`) the write fails with EPIPE, which would otherwise be thrown as an
 * unhandled stream error with a stack trace. It is noted instead (stdoutClosed) and the writes
 * that follow are dropped.
 */
export function guardedStdout(): NodeJS.WriteStream {
  if (!stdoutGuarded) {
    stdoutGuarded = true;
    process.stdout.on('error', (e) => {
      // After EPIPE, writes that were already queued fail too (the stream is destroyed).
      if (!isErrno(e, 'EPIPE') && !stdoutBroken) throw e;
      stdoutBroken = true;
    });
  }
  return process.stdout;
}

/** Whether a write to stdout found its reader gone. */
export function stdoutClosed(): boolean {
  return stdoutBroken;
}

/** Set once a JSON document went to stdout: a command prints one, its result or else its error. */
let documentPrinted = false;

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
    return this.streams.stdout ?? guardedStdout();
  }

  /** Progress and human text: stderr, silenced by -q. */
  info(line: string): void {
    if (!this.options.quiet) this.stderr.write(`${line}\n`);
  }

  /** One line, whatever the message holds (control characters are escaped). */
  warn(line: string): void {
    this.stderr.write(`warning: ${printable(line)}\n`);
  }

  /** The one machine-readable summary, on stdout, its schema version first. */
  json(value: object): void {
    documentPrinted = true;
    this.stdout.write(`${JSON.stringify({ schemaVersion: JSON_SCHEMA_VERSION, ...value }, null, 2)}\n`);
  }

  /** A line of the command's result on stdout (the pushed reference): printed with -q too, never with --json. */
  result(line: string): void {
    if (!this.options.json) this.stdout.write(`${line}\n`);
  }

  /**
   * One line naming the error's code and the input at fault, always one line: a message holding
   * remote or user-supplied text (a digest with a newline, a registry's error message) has its
   * control characters escaped. With --json the same error as a document on stdout too, unless the
   * command printed its result already (`cache lint --strict` with advice). The stack and causes
   * only with --debug.
   */
  error(prog: string, e: unknown): void {
    const doc = errorDocument(e);
    const text = `${doc.message}${doc.hint ? ` (${doc.hint})` : ''}`;
    this.stderr.write(`${prog}: error [${doc.code}]: ${printable(text)}\n`);
    if (this.options.json && !documentPrinted) this.json({ error: doc });
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
