/**
 * The extended attributes of a file, read by GNU tar (`--xattrs`, every name included) and our
 * tar reader: no package beyond tar, and tar is what writes them into layers in the first place.
 */
import path from 'node:path';
import { Readable } from 'node:stream';
import { encodeName } from '../../src/tar/byte-names.js';
import { TarStreamReader } from '../../src/tar/stream-reader.js';
import { runOk } from './run.js';

/** name → value bytes, of `file` itself (a symlink's own). */
export async function xattrsOf(file: string): Promise<Record<string, Buffer>> {
  const { stdout } = await runOk('tar', ['--xattrs', '--xattrs-include=*', '--no-recursion', '--format=posix', '-C', path.dirname(file), '-cf', '-', path.basename(file)]);
  const reader = new TarStreamReader(Readable.from([stdout]));
  const h = await reader.next();
  const out: Record<string, Buffer> = {};
  for (const [key, value] of Object.entries((h?.pax ?? {}) as Record<string, string>)) {
    if (key.startsWith('SCHILY.xattr.')) out[key.slice('SCHILY.xattr.'.length)] = encodeName(value);
  }
  return out;
}
