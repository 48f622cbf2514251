/**
 * What goes wrong in a tar, said once for every reader (layers unpacked into a tree or into the
 * layer store, `docker save` streams): tar-stream's errors, and header values that no filesystem
 * call accepts, become CORRUPT_ARCHIVE errors that name the archive or layer and the entry, in
 * place of the parser's or Node's own words.
 */
import type { Header } from 'tar-stream';
import { SmartError, isSmartError, machineRefusal, quoted } from '../errors.js';

/** tar-stream's errors about the bytes of a tar, and what each means. */
const PARSER_ERRORS: [message: string, meaning: string][] = [
  ['Invalid tar header. Maybe the tar is corrupted or it needs to be gunzipped?', 'wrong header checksum'],
  ['Header exceeds max size', 'extended header (pax or GNU long name) over the 1 MiB allowed'],
  ['Invalid header', 'invalid entry size'],
  ['Unexpected end of data', 'truncated'],
  ['Invalid sparse file map', 'invalid sparse file map (GNU tar --sparse)'],
];

/** What a tar-stream error says about the tar, or undefined when `e` is not one of those. */
function parserMeaning(e: unknown): string | undefined {
  const message = (e as Error)?.message;
  return PARSER_ERRORS.find(([m]) => m === message)?.[1];
}

export interface TarContext {
  /** The archive or layer, for the message: `layer sha256:… of oci:dir:tag`, `docker-archive:-`. */
  what: string;
  /** The input at fault (default `what`). */
  input?: string;
  /** The last entry read whole, when known: where in the tar the damage is. */
  after?: string;
}

/**
 * A failure of the tar PARSER (not of a write, nor of the stream feeding it) as a SmartError: a
 * SmartError passes through; tar-stream's errors become CORRUPT_ARCHIVE
 * `<what>: corrupt tar: <meaning> in the entry after "<name>"` (or `in its first entry`); anything
 * else CORRUPT_ARCHIVE with its message. Cancellations are the caller's to pass through first.
 */
export function tarParseError(e: unknown, context: TarContext): SmartError {
  if (isSmartError(e)) return e;
  // A full or read-only disk where the tar's content goes is never the tar's fault.
  const refused = machineRefusal(e);
  if (refused) return refused;
  const where = context.after !== undefined ? `in the entry after ${quoted(context.after)}` : 'in its first entry';
  const meaning = parserMeaning(e);
  const input = context.input ?? context.what;
  if (meaning) {
    // Only a header's damage in the first entry suggests the bytes are no tar at all.
    const atStart = context.after === undefined && meaning !== 'truncated' && !meaning.startsWith('invalid sparse');
    return new SmartError('CORRUPT_ARCHIVE', `${context.what}: corrupt tar: ${meaning} ${where}`, {
      input,
      cause: e,
      hint: atStart ? 'is it a tar at all (not compressed, not another format)?' : 'the tar is damaged; fetch or build it again',
    });
  }
  return new SmartError('CORRUPT_ARCHIVE', `${context.what}: unreadable tar ${where}: ${(e as Error)?.message ?? String(e)}`, { input, cause: e });
}

type PaxRecords = Record<string, string>;

function paxOf(h: Header): PaxRecords | null {
  const p = h.pax;
  return p && typeof p === 'object' ? (p as PaxRecords) : null;
}

/** uid_t is 32 bits and (uid_t)-1 means "leave unchanged": the ids a file can be given. */
const MAX_ID = 2 ** 32 - 2;
/** A time beyond this many seconds from 1970 does not fit the kernel's 64-bit time (EINVAL). */
const MAX_SECONDS = 9e18;

function corruptEntry(h: Header, context: TarContext, problem: string): SmartError {
  return new SmartError('CORRUPT_ARCHIVE', `${context.what}: entry ${quoted(h.name)}: ${problem}`, {
    input: context.input ?? context.what,
    hint: 'the tar holds values no filesystem accepts; it is damaged or was crafted',
  });
}

/** A pax record as a number: undefined when absent, CORRUPT_ARCHIVE when present but not a number. */
function paxNumber(h: Header, p: PaxRecords | null, key: string, context: TarContext): number | undefined {
  const v = p?.[key];
  if (v === undefined || v === '') return undefined;
  const n = Number(v);
  if (!Number.isFinite(n)) throw corruptEntry(h, context, `its pax ${key} record ${quoted(v, 40)} is not a number`);
  return n;
}

function checkedId(h: Header, value: number, name: 'uid' | 'gid', context: TarContext): number {
  if (!Number.isInteger(value) || value < 0 || value > MAX_ID) throw corruptEntry(h, context, `${name} ${Number.isNaN(value) ? 'is not a number' : `${value} is out of range`}`);
  return value;
}

function checkedTime(h: Header, value: number | Date, name: string, context: TarContext): number | Date {
  const seconds = value instanceof Date ? value.getTime() / 1000 : value;
  if (!Number.isFinite(seconds) || Math.abs(seconds) > MAX_SECONDS) throw corruptEntry(h, context, `its ${name} is not a valid time`);
  // Node's utimes family reads a negative number as "now" (its toUnixTimestamp) and a Date as its
  // time, before 1970 too: a time before 1970 goes as a Date (to the millisecond).
  return typeof value === 'number' && value < 0 ? new Date(value * 1000) : value;
}

/** An entry's owner and times, as every writer of entries sets them. */
export interface EntryMeta {
  uid: number;
  gid: number;
  atime: number | Date;
  mtime: number | Date;
}

/**
 * The owner and the access and modification times of an entry (pax records first, the times in
 * seconds; else the header's fields), checked: an id chown cannot take, or a time utimes cannot,
 * is CORRUPT_ARCHIVE naming the entry.
 */
export function entryMeta(h: Header, context: TarContext): EntryMeta {
  const p = paxOf(h);
  const uid = checkedId(h, paxNumber(h, p, 'uid', context) ?? h.uid ?? 0, 'uid', context);
  const gid = checkedId(h, paxNumber(h, p, 'gid', context) ?? h.gid ?? 0, 'gid', context);
  const mtime = checkedTime(h, paxNumber(h, p, 'mtime', context) ?? h.mtime ?? new Date(0), 'modification time', context);
  const atime = checkedTime(h, paxNumber(h, p, 'atime', context) ?? mtime, 'access time', context);
  return { uid, gid, atime, mtime };
}
