/** Human and machine output of the CLI: summaries on stdout (--json) or stderr, errors as one line. */
import { SmartError, isErrno, isSmartError, machineRefusal, printable, type ErrorCode } from '../errors.js';

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

/**
 * Any thrown value as an error document: a SmartError as it is, a refusal of the machine (a full
 * or read-only disk) as STORAGE, anything else INTERNAL.
 */
export function errorDocument(e: unknown): ErrorDocument {
  e = machineRefusal(e) ?? e;
  if (isSmartError(e)) return { code: e.code, message: e.message, input: e.input ?? null, hint: e.hint ?? null, retryable: e.retryable };
  return { code: 'INTERNAL', message: String((e as Error)?.message ?? e), input: null, hint: null, retryable: false };
}

export interface OutputOptions {
  json: boolean;
  quiet: boolean;
  debug: boolean;
  /** `--progress json`: stderr holds JSON events alone (a warning is a `warning` event; no other line), and the error line. */
  progressJson?: boolean;
}

/** `1 tag`, `2 tags`: a count and its noun (`many`: a plural other than NOUNs). */
export function plural(n: number, one: string, many = `${one}s`): string {
  return `${n} ${n === 1 ? one : many}`;
}

export function formatBytes(n: number): string {
  if (n < 1024) return `${Math.round(n)} B`; // a rate is a fraction
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

/** Set when stdout carries the image (`docker-archive:-`): no document of ours goes there, not even an error's. */
let stdoutHoldsTheImage = false;
export function imageGoesToStdout(): void {
  stdoutHoldsTheImage = true;
}

let stdoutGuarded = false;
let stdoutBroken = false;
/** The first other error writing stdout: a full disk under `> FILE` (ENOSPC), an I/O error. */
let stdoutFailure: Error | undefined;

/**
 * process.stdout, made on first use, with its errors kept instead of thrown as an unhandled stream
 * error with a stack trace. A closed pipe (`smart push --help | head -1`, EPIPE) is noted
 * (stdoutClosed) and the writes that follow are dropped. Any other failure (`> FILE` on a full
 * disk) is kept for the command to report (stdoutError): what it printed did not arrive.
 */
export function guardedStdout(): NodeJS.WriteStream {
  if (!stdoutGuarded) {
    stdoutGuarded = true;
    process.stdout.on('error', (e) => {
      // After EPIPE, writes that were already queued fail too (the stream is destroyed).
      if (isErrno(e, 'EPIPE') || stdoutBroken) stdoutBroken = true;
      else stdoutFailure ??= e;
    });
  }
  return process.stdout;
}

let stderrGuarded = false;

/**
 * process.stderr, made on first use, with its errors dropped: a reader of the progress and
 * messages that went away (`smart pull … 2>&1 | head`) is no reason to stop the work, which goes
 * on unheard and ends as it would have (before, the unhandled EPIPE ended the run at once, its
 * staging directory left behind). There is nowhere left to say that it failed.
 */
export function guardedStderr(): NodeJS.WriteStream {
  if (!stderrGuarded) {
    stderrGuarded = true;
    process.stderr.on('error', () => undefined);
  }
  return process.stderr;
}

/**
 * Whether a write to stdout found its reader gone. Also before the 'error' event: a pipe's is
 * emitted once its handle has closed, a turn of the loop after the failed write is seen.
 */
export function stdoutClosed(): boolean {
  return stdoutBroken || (stdoutGuarded && isErrno(process.stdout.errored, 'EPIPE'));
}

/**
 * The failure of a write to stdout other than a closed pipe, as the error to report, once the
 * writes made so far have had their turn to fail (a file's write fails on the next tick).
 */
export async function stdoutError(): Promise<SmartError | undefined> {
  if (!stdoutGuarded) return undefined;
  await new Promise((resolve) => setImmediate(resolve));
  if (!stdoutFailure) return undefined;
  return machineRefusal(stdoutFailure, 'cannot write to stdout') ?? new SmartError('STORAGE', `cannot write to stdout: ${stdoutFailure.message}`, { cause: stdoutFailure });
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
    return this.streams.stderr ?? guardedStderr();
  }

  private get stdout(): NodeJS.WritableStream {
    return this.streams.stdout ?? guardedStdout();
  }

  /** Progress and human text: stderr, silenced by -q and by --progress json. */
  info(line: string): void {
    if (!this.options.quiet && !this.options.progressJson) this.stderr.write(`${line}\n`);
  }

  /** One line, whatever the message holds (control characters are escaped); with --progress json a warning event. */
  warn(line: string): void {
    if (this.options.progressJson) this.stderr.write(`${JSON.stringify({ schemaVersion: JSON_SCHEMA_VERSION, time: new Date().toISOString(), event: 'warning', message: line })}\n`);
    else this.stderr.write(`warning: ${printable(line)}\n`);
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
    if (this.options.json && !documentPrinted && !stdoutHoldsTheImage) this.json({ error: doc });
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
