/**
 * Extended attributes of layer entries: pax `SCHILY.xattr.<name>` records, as GNU tar, Docker and
 * buildah write them. A file capability (`security.capability`: ping's cap_net_raw, newuidmap's
 * cap_setuid) is one; without it such a program fails in the container where the image's own
 * runtime would run it. They are set with lsetxattr through the native addon (Node has no call
 * for it); without the addon, or where this filesystem or user may not have them (no xattrs on
 * it; a capability needs CAP_SETFCAP, so root), they are counted for the caller to say, as umoci
 * and Docker skip them there.
 */
import os from 'node:os';
import { nativeBinding } from '../pipeline/native.js';
import { encodeName } from '../tar/byte-names.js';

const PREFIX = 'SCHILY.xattr.';

/** Not set: the SELinux label of the host that made the layer means nothing here (umoci leaves it too). */
const SKIPPED = new Set(['security.selinux']);

/** Refusals of this filesystem or user: the attribute is skipped and counted, not the layer failed. */
const REFUSALS = new Set(['ENOTSUP', 'EOPNOTSUPP', 'EPERM', 'EACCES', 'EINVAL', 'ERANGE', 'E2BIG']);

/** An entry's extended attributes as bytes ([name, value]); names and values keep their bytes (src/tar/byte-names.ts). */
export function entryXattrs(pax: unknown): [Buffer, Buffer][] {
  if (pax === null || typeof pax !== 'object') return [];
  const out: [Buffer, Buffer][] = [];
  for (const [key, value] of Object.entries(pax as Record<string, string>)) {
    if (!key.startsWith(PREFIX) || typeof value !== 'string') continue;
    const name = key.slice(PREFIX.length);
    if (name === '' || SKIPPED.has(name)) continue;
    out.push([encodeName(name), encodeName(value)]);
  }
  return out;
}

/** What setting a layer's attributes came to: how many were not set, and why the first was not. */
export interface XattrTally {
  notSet: number;
  why?: string;
}

function errnoName(errno: number): string {
  for (const [name, value] of Object.entries(os.constants.errno)) if (value === errno) return name;
  return `errno ${errno}`;
}

/**
 * Sets `xattrs` on `file` itself (a symlink's own). Attributes the addon's absence, the
 * filesystem or the user refuse are counted in `tally`; any other failure (an I/O error, a full
 * disk) is thrown as Node's errors are, with `code`, `syscall` and `path`.
 */
export function setXattrs(file: string | Buffer, xattrs: [Buffer, Buffer][], tally: XattrTally): void {
  if (xattrs.length === 0) return;
  const setXattr = nativeBinding()?.setXattr;
  if (!setXattr) {
    tally.notSet += xattrs.length;
    tally.why ??= 'setting them needs the native addon (`smart version --verbose` says why it is not there)';
    return;
  }
  const pathBytes = typeof file === 'string' ? encodeName(file) : file;
  for (const [name, value] of xattrs) {
    const errno = setXattr(pathBytes, name, value);
    if (errno === 0) continue;
    const code = errnoName(errno);
    if (REFUSALS.has(code)) {
      tally.notSet++;
      tally.why ??= `${name.toString()}: ${code === 'EPERM' ? 'EPERM (not permitted to this user)' : code === 'ENOTSUP' || code === 'EOPNOTSUPP' ? `${code} (not supported by this filesystem)` : code}`;
      continue;
    }
    throw Object.assign(new Error(`${code}: lsetxattr ${name.toString()}, '${String(file)}'`), { code, errno: -errno, syscall: 'lsetxattr', path: String(file) });
  }
}
