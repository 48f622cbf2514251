/**
 * One contract for every store destination, as the Distribution registry's storage driver suite:
 * a blob put is there and is reused; a put whose bytes are not the digest it claims, or whose
 * stream fails, leaves nothing; a blob another repository of the store holds is mounted (where
 * stores have repositories); and the commit order — every blob before the manifest that names it,
 * every manifest before the index, the tag last and invisible until then — proven by a wrapper that
 * records the order of the writes the copy engine makes. A copy that fails tags nothing. Run against
 * real stores: `file:`, `s3://` (s3rver), `docker://` (the stock registry), `oci:`, `oci-archive:`.
 * The whole-image writer `docker-archive:` (a file, or `-` on a stream) is held to what it can
 * promise: what it writes passes the source contract, and a copy that fails leaves no file.
 */
import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { PassThrough, Readable } from 'node:stream';
import { beforeAll, describe, expect, it } from 'vitest';
import { BlobInfoCache } from '../../src/cache/blob-info.js';
import { DiskMetadataCache } from '../../src/cache/metadata-cache.js';
import { SmartError } from '../../src/errors.js';
import { parseDigest, type Digest } from '../../src/oci/digest.js';
import { isStreamed, type BlobDestination, type BlobReuse, type ImageSource, type PutBlobInfo, type StoredBlob } from '../../src/oci/image.js';
import type { Descriptor, ParsedManifest } from '../../src/oci/manifest.js';
import { MediaType } from '../../src/oci/mediatypes.js';
import { hostPlatform } from '../../src/oci/platform.js';
import { copy } from '../../src/ops/copy.js';
import { openDestination, openSource, parseImageName } from '../../src/transports/all.js';
import { fixtures } from '../harness/fixtures.js';
import { tempDir } from '../harness/tmp.js';
import { ctx, haveServers, libraryCopy, openBlobDestination, openRandom, readAll, rejection, sha256, startServers, validateSource, type Servers } from './stores.js';

interface DestinationCase {
  label: string;
  /** An image name in this store: `n` tells images apart, `tag` tags of one. */
  name(n: string, tag?: string): string;
  /** Whether the store has repositories (and so mounts a blob held by another). */
  repositories: boolean;
  /** Whether what it holds is reused by the next copy (an archive is written anew each time). */
  reuses: boolean;
}

/**
 * A destination that records what it is asked to write, in order, and checks the commit order as
 * it goes: a manifest only after every blob (or child manifest) it names; the tag only last, the
 * name still unreadable until then. `failOn` makes a write fail, as a broken store would.
 */
class RecordingDestination implements BlobDestination {
  readonly events: string[] = [];
  private readonly have = new Set<string>();
  aborted = false;
  storedSource?: (repository: string) => ImageSource;
  currentDigest?: () => Promise<Digest | undefined>;

  constructor(
    private readonly inner: BlobDestination,
    private readonly imageName: string,
    private readonly failOn?: (event: string) => boolean,
  ) {
    if (inner.storedSource) this.storedSource = inner.storedSource.bind(inner);
    if (inner.currentDigest) this.currentDigest = inner.currentDigest.bind(inner);
  }

  get name() {
    return this.inner.name;
  }
  get cacheScope() {
    return this.inner.cacheScope;
  }
  get layerCompression() {
    return this.inner.layerCompression;
  }
  get repository() {
    return this.inner.repository;
  }

  private note(event: string, digest: string): void {
    if (this.failOn?.(event)) throw new SmartError('STORAGE', `injected failure at ${event}`);
    this.events.push(event);
    this.have.add(digest);
  }

  supportsManifestType(mediaType: string): boolean {
    return this.inner.supportsManifestType(mediaType);
  }

  async reuseBlob(d: Descriptor): Promise<BlobReuse | undefined> {
    const r = await this.inner.reuseBlob(d);
    if (r) this.note(`reuse ${d.digest}`, d.digest);
    return r;
  }

  async putBlob(stream: Readable, info: PutBlobInfo): Promise<StoredBlob> {
    const stored = await this.inner.putBlob(stream, info);
    this.note(`blob ${stored.digest}`, stored.digest);
    return stored;
  }

  async putManifest(m: ParsedManifest): Promise<void> {
    const named = m.kind === 'index' ? m.index.manifests : [m.manifest.config, ...m.manifest.layers.filter((l) => !l.urls?.length)];
    for (const d of named) expect(this.have.has(d.digest), `${m.digest} names ${d.digest}, not written before it`).toBe(true);
    await this.inner.putManifest(m);
    this.note(`manifest ${m.digest}`, m.digest);
  }

  async commit(top: ParsedManifest): Promise<void> {
    expect(this.have.has(top.digest), 'the tagged manifest is written before the tag').toBe(true);
    // Until the tag is written, the name shows nothing of this copy.
    const before = await openRandom(this.imageName).then(
      async (s) => {
        try {
          return (await s.getManifest()).digest;
        } finally {
          await s.close();
        }
      },
      () => undefined,
    ).catch(() => undefined);
    expect(before).toBeUndefined();
    if (this.failOn?.('commit')) throw new SmartError('STORAGE', 'injected failure at commit');
    await this.inner.commit(top);
    this.events.push('commit');
  }

  async abort(): Promise<void> {
    this.aborted = true;
    await this.inner.abort();
  }

  async close(): Promise<void> {
    await this.inner.close();
  }
}

const layerDescriptor = (bytes: Buffer): Descriptor => ({ mediaType: MediaType.OCI_LAYER_GZIP, digest: parseDigest(sha256(bytes)), size: bytes.length });

/** A stream that sends `head`, then fails. */
function breaking(head: Buffer): Readable {
  return new Readable({
    read() {
      if (this.readableLength === 0 && !(this as { sent?: boolean }).sent) {
        (this as { sent?: boolean }).sent = true;
        this.push(head);
      } else this.destroy(new Error('connection reset by the source'));
    },
  });
}

describe.skipIf(!haveServers)('the destination contract', () => {
  let servers: Servers;
  const cases: DestinationCase[] = [];

  beforeAll(async () => {
    servers = await startServers();
    const root = await tempDir('smart-contract-file-');
    const layouts = await tempDir('smart-contract-oci-');
    cases.push(
      { label: 'file:', name: (n, tag = '1') => `file:${root}#contract/${n}:${tag}`, repositories: true, reuses: true },
      { label: 's3://', name: (n, tag = '1') => `s3://${servers.s3.bucket}/dest#contract/${n}:${tag}`, repositories: true, reuses: true },
      { label: 'docker://', name: (n, tag = '1') => `docker://${servers.registry.host}/contract/${n}:${tag}`, repositories: true, reuses: true },
      { label: 'oci:', name: (n, tag = '1') => `oci:${path.join(layouts, n)}:${tag}`, repositories: false, reuses: true },
      { label: 'oci-archive:', name: (n, tag = '1') => `oci-archive:${path.join(layouts, `${n}.tar`)}:${tag}`, repositories: false, reuses: false },
    );
  });

  const each = async (what: string, test: (c: DestinationCase) => Promise<void>) => {
    expect(cases.length).toBe(5);
    for (const c of cases) await test(c).catch((e: unknown) => Promise.reject(new Error(`${c.label} ${what}: ${(e as Error).message}`, { cause: e })));
  };

  it('keeps a blob put and reuses it; a put whose bytes are not its digest, or whose stream breaks, leaves nothing', async () => {
    await each('put', async (c) => {
      const dest = await openBlobDestination(c.name('put'));
      try {
        const blob = randomBytes(70_000);
        const d = layerDescriptor(blob);
        expect(await dest.reuseBlob(d)).toBeUndefined();
        expect(await dest.putBlob(Readable.from([blob]), d)).toEqual({ digest: d.digest, size: d.size });
        expect(await dest.reuseBlob(d)).toEqual({ how: 'present' });

        // Digest unknown (a layer compressed on the way): the store names it.
        const fresh = randomBytes(5000);
        expect(await dest.putBlob(Readable.from([fresh]), { mediaType: MediaType.OCI_LAYER_GZIP })).toEqual({ digest: sha256(fresh), size: fresh.length });

        const claimed = layerDescriptor(randomBytes(100));
        const other = randomBytes(100);
        expect((await rejection(dest.putBlob(Readable.from([other]), claimed))).code).toBe('DIGEST_MISMATCH');
        expect(await dest.reuseBlob(claimed)).toBeUndefined();
        expect(await dest.reuseBlob(layerDescriptor(other))).toBeUndefined();

        const broken = layerDescriptor(randomBytes(64 * 1024));
        await rejection(dest.putBlob(breaking(randomBytes(1000)), broken));
        expect(await dest.reuseBlob(broken)).toBeUndefined();
      } finally {
        await dest.abort();
        await dest.close();
      }
    });
  });

  it('mounts a blob another repository of the store holds, where stores have repositories', async () => {
    const fx = fixtures();
    await each('mount', async (c) => {
      if (!c.repositories) return;
      const from = c.name('mount-from');
      await libraryCopy(`oci:${fx.paths.ociBasic}:latest`, from);
      // A registry mounts from the repository of a source on the same registry; storage links what it holds.
      const to = c.name('mount-to');
      const dest = await openDestination(parseImageName(to), ctx(), parseImageName(from));
      if (!('reuseBlob' in dest)) throw new Error('not a blob destination');
      try {
        const layer = fx.basic.layers[0]!;
        const reuse = await dest.reuseBlob({ mediaType: layer.mediaType, digest: parseDigest(layer.digest), size: layer.size });
        expect(reuse?.how).toBe('mounted');
        expect(await dest.reuseBlob({ mediaType: layer.mediaType, digest: parseDigest(layer.digest), size: layer.size })).toEqual({ how: 'present' });
      } finally {
        await dest.close();
      }
    });
  });

  it('writes every blob before the manifest naming it, every manifest before the index, and the tag last', async () => {
    const fx = fixtures();
    const sources = [
      { from: `oci:${fx.paths.ociBasic}:latest`, n: 'order-oci', digest: fx.basic.manifest.digest },
      { from: `docker-archive:${fx.paths.dockerArchiveBasic}`, n: 'order-docker-archive' },
      { from: `oci:${fx.paths.ociMulti}:latest`, n: 'order-index', digest: fx.multi.manifest.digest, allPlatforms: true },
    ];
    // What uncompressed layers became in each store, so that a second copy compresses nothing again.
    const blobInfo = new BlobInfoCache(new DiskMetadataCache(await tempDir('smart-contract-cache-')));
    await each('commit order', async (c) => {
      for (const s of sources) {
        const options = { ...(s.allPlatforms ? { allPlatforms: true } : {}), blobInfo };
        const name = c.name(s.n);
        const recorder = new RecordingDestination(await openBlobDestination(name, blobInfo), name);
        const summary = await libraryCopy(s.from, recorder, options);
        expect(recorder.events.at(-1)).toBe('commit');
        expect(recorder.events.filter((e) => e === 'commit')).toHaveLength(1);
        expect(recorder.events.at(-2)).toBe(`manifest ${summary.manifestDigest}`);
        if (s.digest) expect(summary.manifestDigest).toBe(s.digest);
        const back = await openRandom(name);
        try {
          expect((await back.getManifest()).digest).toBe(summary.manifestDigest);
        } finally {
          await back.close();
        }
        // Again, under another tag: every blob is reused, none sent.
        if (!c.reuses) continue;
        const again = await libraryCopy(s.from, new RecordingDestination(await openBlobDestination(c.name(s.n, '2'), blobInfo), c.name(s.n, '2')), options);
        expect(again.layers.pushed, `${s.from} again`).toBe(0);
      }
    });
  });

  it('a copy that fails tags nothing and is aborted', async () => {
    const fx = fixtures();
    await each('failed copy', async (c) => {
      for (const failAt of ['manifest', 'commit']) {
        const name = c.name(`failed-${failAt}`);
        const recorder = new RecordingDestination(await openBlobDestination(name), name, (e) => e.startsWith(failAt));
        const e = await rejection(libraryCopy(`oci:${fx.paths.ociBasic}:latest`, recorder));
        expect(e.message).toMatch(/injected failure/);
        expect(recorder.aborted).toBe(true);
        expect(recorder.events).not.toContain('commit');
        await rejection(openRandom(name).then(async (s) => {
          try {
            return await s.getManifest();
          } finally {
            await s.close();
          }
        }));
      }
    });
  });
});

describe('oci-archive: written in one pass', () => {
  it('takes back a layer that broke midway and writes it again, into a file and onto a stream', async () => {
    const fx = fixtures();
    const dir = await tempDir('smart-contract-oci-archive-');
    const basic = `oci:${fx.paths.ociBasic}:latest`;
    /** The source with its second layer dropping once, midway, as a connection reset that a retry mends. */
    const flaky = async (): Promise<ImageSource> => {
      const inner = await openRandom(basic);
      let layers = 0;
      return {
        ...inner,
        getManifest: () => inner.getManifest(),
        getManifestByDigest: (d) => inner.getManifestByDigest(d),
        repoTags: () => inner.repoTags(),
        close: () => inner.close(),
        getBlob: async (d, options) => {
          if (d.mediaType === MediaType.OCI_CONFIG || ++layers !== 2) return inner.getBlob(d, options);
          const whole = await readAll(await inner.getBlob(d, options));
          return new Readable({
            read() {
              if ((this as { sent?: boolean }).sent) return this.destroy(new SmartError('REGISTRY', 'the connection dropped (ECONNRESET)', { retryable: true }));
              (this as { sent?: boolean }).sent = true;
              this.push(whole.subarray(0, Math.floor(whole.length / 2)));
            },
          });
        },
      };
    };
    const file = path.join(dir, 'basic.tar');
    let source = await flaky();
    try {
      const done = await copy(source, await openDestination(parseImageName(`oci-archive:${file}:v1`), ctx()), { platform: hostPlatform(), jobs: 4 });
      expect(done.manifestDigest).toBe(fx.basic.manifest.digest);
    } finally {
      await source.close();
    }
    await validateSource(await openRandom(`oci-archive:${file}:v1`), { name: file, manifest: fx.basic.manifest.digest });
    expect((await fs.readdir(dir)).sort()).toEqual(['basic.tar']);

    const out = new PassThrough();
    const collected = readAll(out);
    source = await flaky();
    try {
      await copy(source, await openDestination(parseImageName('oci-archive:-:v1'), { ...ctx(), stdout: out }), { platform: hostPlatform(), jobs: 4 });
    } finally {
      await source.close();
    }
    out.end();
    const streamed = path.join(dir, 'streamed.tar');
    await fs.writeFile(streamed, await collected);
    await validateSource(await openRandom(`oci-archive:${streamed}:v1`), { name: streamed, manifest: fx.basic.manifest.digest });
  });
});

/** A source whose `broken`-th layer blob fails midway, as a connection that drops. */
function breakingLayer(inner: ImageSource, broken: number): ImageSource {
  let layers = 0;
  return {
    ...inner,
    name: inner.name,
    getManifest: () => inner.getManifest(),
    getManifestByDigest: (d) => inner.getManifestByDigest(d),
    repoTags: () => inner.repoTags(),
    close: () => inner.close(),
    getBlob: async (d, options) => {
      if (d.mediaType === MediaType.OCI_CONFIG || d.mediaType === MediaType.DOCKER_CONFIG || ++layers !== broken) return inner.getBlob(d, options);
      return breaking(randomBytes(1000));
    },
  };
}

describe.skipIf(!haveServers)('the whole-image destination contract (docker-archive:)', () => {
  it('writes an archive the source contract holds for, to a file and to a stream alike; a copy that fails leaves no file', async () => {
    const fx = fixtures();
    const dir = await tempDir('smart-contract-archive-');
    const basic = `oci:${fx.paths.ociBasic}:latest`;
    const file = path.join(dir, 'basic.tar');
    await libraryCopy(basic, `docker-archive:${file}:contract/basic:1`);
    await validateSource(await openRandom(`docker-archive:${file}`), { name: file });
    const written = await openRandom(`docker-archive:${file}`);
    expect(written.repoTags()).toEqual(['contract/basic:1']);
    await written.close();

    // docker-archive:- : the same image on a stream, read back as a stream and as a file.
    const out = new PassThrough();
    const collected = readAll(out);
    const toStdout = await openDestination(parseImageName('docker-archive:-'), { ...ctx(), stdout: out }, parseImageName(basic));
    const source = await openRandom(basic);
    try {
      await copy(source, toStdout, { platform: hostPlatform(), jobs: 4 });
    } finally {
      await source.close();
    }
    out.end();
    const bytes = await collected;
    const streamed = await openSource(parseImageName('docker-archive:-'), ctx(Readable.from([bytes])));
    if (!isStreamed(streamed)) throw new Error('docker-archive:- did not open as a stream');
    const read = await streamed.read(async (layer) => sha256(await readAll(layer.stream)));
    if ('unpicked' in read) throw read.unpicked;
    expect(read.layers).toEqual(fx.basic.diffIds);
    const asFile = path.join(dir, 'streamed.tar');
    await fs.writeFile(asFile, bytes);
    await validateSource(await openRandom(`docker-archive:${asFile}`), { name: asFile });

    // A layer that breaks midway: the copy fails, and nothing is left where the archive would be.
    const failed = path.join(dir, 'failed.tar');
    const before = (await fs.readdir(dir)).sort();
    const breaks = breakingLayer(await openRandom(basic), 2);
    const dest = await openDestination(parseImageName(`docker-archive:${failed}`), ctx(), parseImageName(basic));
    await rejection(copy(breaks, dest, { platform: hostPlatform(), jobs: 4 }));
    await breaks.close();
    expect((await fs.readdir(dir)).sort()).toEqual(before);
  });
});
