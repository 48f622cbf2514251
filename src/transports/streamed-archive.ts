/**
 * An image archive read as a stream (`docker-archive:-`, `oci-archive:-`), never holding a layer in
 * memory or on disk. Where the image's shape is written (manifest.json, index.json) differs between
 * the kinds and between their writers: `docker save` writes manifest.json after the layers,
 * containers/image and this project write blobs before index.json, a tar of a layout directory
 * has them in whatever order the directory lists. So no order is assumed: each layer is handed to the reader as it arrives (the copy stores it at
 * once), JSON members are kept, and each kind assembles its image from them at the end.
 */
import { createHash } from 'node:crypto';
import { Readable, pipeline } from 'node:stream';
import tar from 'tar-stream';
import { SmartError, isCancellation, isSmartError, quoted } from '../errors.js';
import { MAX_ARCHIVE_JSON_BYTES, checkSize, limitExceeded } from '../limits.js';
import { MAX_CONFIG_BYTES } from '../oci/config.js';
import type { Digest } from '../oci/digest.js';
import type { StreamedLayer } from '../oci/image.js';
import { sniffCompression } from '../oci/mediatypes.js';
import { tarParseError } from '../tar/errors.js';
import { decodeHeader, linkedMemberName, normalizeMemberName } from '../tar/header.js';
import { hasSparseRecords } from '../tar/sparse.js';

/** JSON members (configs, manifests, manifest.json, index.json, v1 json) up to this size are kept, up to MAX_ARCHIVE_JSON_BYTES in all. */
const MAX_JSON_MEMBER = MAX_CONFIG_BYTES;

/**
 * What an archive read to its end holds, but for the layers, which went to the reader as they
 * passed. A name that comes again is what its last member was, as `tar x` (and the archive read as
 * a file) leaves it.
 */
export interface ArchiveMembers<T> {
  /** JSON members, by name. */
  json: Map<string, Buffer>;
  /** JSON members too large to keep, with their sizes: named in the error if the image needs one. */
  oversized: Map<string, number>;
  /** What the reader returned for each layer member (and each opaque blob: see `opaque`). */
  layers: Map<string, T>;
  /** Members handed to the reader as opaque blobs (see readArchiveMembers' `opaqueBlobs`), not layers. */
  opaque: Set<string>;
  /** What each opaque blob's bytes hashed to, where the reader read it whole: a name that lies is said to. */
  opaqueDigests: Map<string, Digest>;
  /** Members that were neither a layer nor JSON (VERSION files, an artifact's blobs). */
  others: Set<string>;
  /** The member a name leads to through the archive's links (Docker's older saves link repeated layers). */
  resolve(member: string): string;
  /** Links, by their member: where each leads, and whether it is a hard link (GNU tar stores a second name of a file so). */
  links: Map<string, { target: string; hard: boolean }>;
  /** The first member of a type a stream cannot hold (an old GNU sparse file): named if a layer is then missing. */
  sparse?: string;
}

/**
 * What a member is, from its first block: a layer (a tar: ustar magic, a header of no magic with a
 * right checksum (V7, as `tar --format=v7` writes), or the all-zero block of an empty layer; or a
 * compressed stream), JSON, or something else that is skipped.
 */
function classifyMember(head: Buffer): 'layer' | 'json' | 'other' {
  if (sniffCompression(head) !== 'none') return 'layer';
  if (head.length >= 512) {
    if (head.subarray(257, 262).toString('latin1') === 'ustar') return 'layer';
    if (head.subarray(0, 512).every((b) => b === 0)) return 'layer';
    if (decodeHeader(head.subarray(0, 512)) !== undefined) return 'layer';
  }
  for (const b of head) {
    if (b === 0x20 || b === 0x0a || b === 0x0d || b === 0x09) continue;
    return b === 0x7b || b === 0x5b ? 'json' : 'other'; // { or [
  }
  return 'other';
}

/**
 * The digest a member's name states for its bytes: `blobs/sha256/<hex>` (an OCI layout: Docker
 * 25+, an OCI archive), `<hex>.tar` (containers/image, ours: the diff id of the layer it holds).
 * Docker's older `<v1 id>/layer.tar` states none.
 */
export function namedDigest(member: string): Digest | undefined {
  const m = /^(?:blobs\/sha256\/([0-9a-f]{64})|([0-9a-f]{64})\.tar)$/.exec(member);
  return m ? (`sha256:${m[1] ?? m[2]}` as Digest) : undefined;
}

/** How readArchiveMembers reads an archive of one kind. */
export interface ArchiveReading {
  /** Names the archive in the error for an empty input: `a docker-archive`. */
  kind: string;
  /** Members refused as they arrive when larger (manifest.json), before any of their bytes are read. */
  limits?: Record<string, number>;
  /**
   * Members named by their digest that are not kept (not JSON, or too large) are handed to the
   * reader as opaque blobs rather than skipped: an OCI archive's blobs, which an index copied
   * whole may name.
   */
  opaqueBlobs?: boolean;
  /**
   * Told of each JSON member kept, as soon as it is read whole (again for a member that comes
   * again: the later one replaces it); what it throws ends the reading there. A kind whose image's
   * shape arrives before its blobs judges it through this, to refuse what the end would refuse
   * before any more blobs are stored.
   */
  onJson?: (member: string, bytes: Buffer) => void;
}

/**
 * Reads the archive `input` carries to its end, handing each layer member to `onLayer` as it
 * arrives (one at a time; it must consume or destroy the stream).
 */
export async function readArchiveMembers<T>(input: Readable, name: string, reading: ArchiveReading, onLayer: (layer: StreamedLayer) => Promise<T>): Promise<ArchiveMembers<T>> {
  const limits = reading.limits ?? {};
  // A header without ustar's or GNU's magic is V7's, as Go's archive/tar (docker load) reads it
  // (an option extract.js reads and its types leave out).
  const options = { allowUnknownFormat: true } as Parameters<typeof tar.extract>[0];
  const extract = tar.extract(options);
  const json = new Map<string, Buffer>();
  let jsonBytes = 0;
  const oversized = new Map<string, number>();
  const layers = new Map<string, T>();
  const others = new Set<string>();
  const opaque = new Set<string>();
  const opaqueDigests = new Map<string, Digest>();
  const links = new Map<string, { target: string; hard: boolean }>();
  // A name that comes again (a member appended by `tar -r`, a duplicate) stands for its last member only.
  const forget = (member: string): void => {
    jsonBytes -= json.get(member)?.length ?? 0;
    for (const held of [json, oversized, layers, opaqueDigests, links]) held.delete(member);
    opaque.delete(member);
    others.delete(member);
  };
  let sawEntry = false;
  let sparse: string | undefined;
  // The last member read whole: where an archive that breaks broke.
  let lastMember: string | undefined;
  let inputError: unknown;
  pipeline(input, extract as unknown as NodeJS.WritableStream, (e) => {
    if (e) inputError = e;
  });
  try {
    for await (const entry of extract) {
      sawEntry = true;
      const header = entry.header;
      // A size field tar-stream could not read (garbage, base-256 out of range): it hands the entry
      // on with no size and then waits, for ever, for where the next header would be. Refused.
      if (!(Number.isSafeInteger(header.size) && (header.size as number) >= 0)) {
        throw new SmartError('CORRUPT_ARCHIVE', `${name}: member ${quoted(header.name)} has no valid size (${header.size}): not a tar archive, or a damaged one`, { input: name });
      }
      // tar --sparse (a file with holes: an uncompressed layer can be one): tar-stream reads such a
      // member as a plain file, so it is refused by name rather than read as other bytes.
      if (header.type === null || hasSparseRecords(header)) {
        sparse ??= header.name;
        if (header.type !== null) {
          throw new SmartError('UNSUPPORTED', `${name}: member ${quoted((header.pax as Record<string, string> | undefined)?.['GNU.sparse.name'] ?? header.name)} is a sparse file (GNU tar --sparse), which a streamed archive cannot hold`, {
            input: name,
            hint: 'give the archive as a file (it reads sparse members), or write it without --sparse',
          });
        }
      }
      const member = normalizeMemberName(header.name);
      if (header.type !== 'directory') forget(member);
      if (header.type === 'symlink' || header.type === 'link') {
        links.set(member, { target: linkedMemberName(member, header.type, header.linkname ?? ''), hard: header.type === 'link' });
        entry.resume();
        lastMember = header.name;
        continue;
      }
      if (header.type !== 'file' || !header.size) {
        entry.resume();
        lastMember = header.name;
        continue;
      }
      const limit = limits[member];
      if (limit !== undefined) checkSize(header.size, limit, `${name}: ${member}`, name);
      // Gather the first block: enough to tell a tar (or a compressed tar) from JSON and the rest.
      const it = entry[Symbol.asyncIterator]() as AsyncIterator<Buffer>;
      const headChunks: Buffer[] = [];
      let headLength = 0;
      let ended = false;
      while (headLength < 512) {
        const r = await it.next();
        if (r.done) {
          ended = true;
          break;
        }
        headChunks.push(r.value);
        headLength += r.value.length;
      }
      const head = Buffer.concat(headChunks);
      const kind = classifyMember(head);
      const named = namedDigest(member);
      const keep = kind === 'json' && header.size <= MAX_JSON_MEMBER;
      if (kind === 'json' && !keep) oversized.set(member, header.size);
      if (kind === 'other') others.add(member);
      const asOpaque = kind !== 'layer' && !keep && reading.opaqueBlobs === true && named !== undefined;
      if (kind !== 'layer' && !asOpaque) {
        if (keep && (jsonBytes += header.size) > MAX_ARCHIVE_JSON_BYTES) {
          throw limitExceeded(`${name}: holds more than ${MAX_ARCHIVE_JSON_BYTES} bytes of JSON members`, name);
        }
        const chunks: Buffer[] = [head];
        for (let r = ended ? undefined : await it.next(); r && !r.done; r = await it.next()) {
          if (keep) chunks.push(r.value);
        }
        if (keep) {
          const bytes = Buffer.concat(chunks);
          json.set(member, bytes);
          reading.onJson?.(member, bytes);
        }
        lastMember = header.name;
        continue;
      }
      // An opaque blob is hashed as it passes (its reader hashes it too, but what it finds may come
      // after the end): the image may name it as a layer, and a member that is neither a tar nor its
      // name's bytes (a damaged copy of a layer) is then said to be the latter, whatever the pace.
      // No layer is hashed here, and blobs that are no layer are mostly small (signatures, SBOMs).
      const hash = asOpaque ? createHash('sha256') : undefined;
      const body = Readable.from(
        (async function* () {
          hash?.update(head);
          yield head;
          if (!ended) {
            for (let r = await it.next(); !r.done; r = await it.next()) {
              hash?.update(r.value);
              yield r.value;
            }
          }
          if (hash) opaqueDigests.set(member, `sha256:${hash.digest('hex')}` as Digest);
        })(),
        { objectMode: false },
      );
      if (asOpaque) opaque.add(member);
      layers.set(
        member,
        await onLayer({
          member,
          what: `${asOpaque ? 'blob' : 'layer'} ${member} of ${name}`,
          compression: asOpaque ? 'none' : sniffCompression(head),
          size: header.size,
          ...(named ? { namedDigest: named } : {}),
          ...(asOpaque ? { opaque: true as const } : {}),
          stream: body,
        }),
      );
      // onLayer must have drained it; if it did not, skip the rest so the archive can go on.
      body.destroy();
      lastMember = header.name;
    }
  } catch (e) {
    extract.destroy();
    input.destroy();
    if (isSmartError(e)) throw e;
    throw corrupt(name, inputError ?? e, lastMember);
  }
  if (inputError) throw corrupt(name, inputError, lastMember);
  if (!sawEntry) throw new SmartError('NOT_AN_IMAGE', `${name}: empty input, not ${reading.kind}`, { input: name });
  const resolve = (m: string): string => {
    let n = normalizeMemberName(m);
    for (let i = 0; i < 16 && links.has(n); i++) n = links.get(n)!.target;
    return n;
  };
  return { json, oversized, layers, opaque, opaqueDigests, others, resolve, links, ...(sparse !== undefined ? { sparse } : {}) };
}

/**
 * Why `member` (as the image names it, before links are followed) cannot be read from what the
 * stream kept, when a link is the reason: it leads to a member whose bytes passed unkept (a file a
 * hard link names under a blob's name, `ln blob zz` in the layout before `tar c`), or to none.
 */
export function unkeptLink(members: ArchiveMembers<unknown>, member: string, what: string, name: string): SmartError | undefined {
  const link = members.links.get(normalizeMemberName(member));
  if (!link) return undefined;
  const target = members.resolve(member);
  if (members.json.has(target) || members.layers.has(target)) return undefined;
  const stored = `${name}: ${what} is stored as a ${link.hard ? 'hard' : 'symbolic'} link to ${quoted(link.target)}`;
  const seen = members.others.has(target) || members.oversized.has(target);
  if (!seen) return new SmartError('CORRUPT_ARCHIVE', `${stored}, which is not in the archive`, { input: name });
  return new SmartError('UNSUPPORTED', `${stored}, which a stream cannot read back`, { input: name, hint: 'pass the archive as a file' });
}

/** The error for a layer an archive's image names but the stream did not hold as one; `what` names it (`layer sha256:…`). */
export function missingLayer(members: ArchiveMembers<unknown>, member: string, what: string, name: string): SmartError {
  const linked = unkeptLink(members, member, what, name);
  if (linked) return linked;
  const target = members.resolve(member);
  // Handed over as a blob that is no tar: bytes other than its name says (a damaged copy), or truly no layer.
  const named = namedDigest(target);
  const got = members.opaqueDigests.get(target);
  if (members.opaque.has(target) && named && got && got !== named) {
    return new SmartError('CORRUPT_ARCHIVE', `blob ${target} of ${name}: its bytes hash to ${got}, not the ${named} its name says`, { input: target });
  }
  const notALayer = members.opaque.has(target) || members.others.has(target) || members.json.has(target) || members.oversized.has(target);
  const hint = notALayer
    ? `member ${quoted(target)} is neither a tar nor a compressed tar (an artifact's blob?): only images are copied`
    : members.sparse !== undefined
      ? `member ${quoted(members.sparse)} is of a type a streamed archive cannot hold (an old GNU sparse file, from tar --sparse?): give the archive as a file`
      : undefined;
  return new SmartError('CORRUPT_ARCHIVE', `${name}: ${what} is not in the archive`, { input: name, ...(hint ? { hint } : {}) });
}

/** Why the archive could not be read: a cancellation as it is, else what the tar parser says (src/tar/errors.ts). */
function corrupt(name: string, e: unknown, lastMember: string | undefined): unknown {
  if (isCancellation(e)) return e;
  return tarParseError(e, { what: name, ...(lastMember !== undefined ? { after: lastMember } : {}) });
}
