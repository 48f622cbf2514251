/**
 * The OCI Distribution API, what to ask a registry: manifests, blobs (streamed both ways, read
 * as one stream across broken connections, or by byte range), cross-repository mounts, uploads
 * and listings. How a request is made — ping, authentication, retries, errors — is the
 * subclass's (client.ts): this layer only names requests and reads answers.
 */
import { Readable } from 'node:stream';
import { SmartError, isCancellation } from '../../errors.js';
import { isRegistryError } from './errors.js';
import { sha256Digest, type Digest } from '../../oci/digest.js';
import { MediaType } from '../../oci/mediatypes.js';
import { DigestStream, VerifyStream } from '../../pipeline/digest-stream.js';
import { header, readBody, type Response } from './http.js';
import type { Retry } from './retry.js';
import { remoteText } from '../../redact.js';

/** A manifest as a message names it: `REPO:TAG`, or `REPO@sha256:…` by digest. */
function manifestName(repo: string, reference: string): string {
  return `${repo}${reference.includes(':') ? '@' : ':'}${reference}`;
}

export const MANIFEST_ACCEPT = [
  MediaType.OCI_INDEX,
  MediaType.OCI_MANIFEST,
  MediaType.DOCKER_MANIFEST_LIST,
  MediaType.DOCKER_MANIFEST,
  MediaType.DOCKER_MANIFEST_V1_SIGNED,
].join(', ');

export interface RequestSpec {
  method: 'GET' | 'HEAD' | 'POST' | 'PUT' | 'PATCH' | 'DELETE';
  /** `/v2/...` on the registry, or an absolute URL (upload locations, redirects). */
  url: string;
  headers?: Record<string, string>;
  /** A Buffer can be sent again; a stream cannot, so a request with one is never retried. */
  body?: Buffer | Readable;
  /** Token scopes the request needs, e.g. `repository:team/app:pull`. */
  scopes: string[];
  /** What the request is about, for messages: `team/app`, `blob sha256:…`. */
  what: string;
  signal?: AbortSignal;
  /** A GET of a blob's bytes (see RequestOptions.bulk). */
  bulk?: boolean;
  /**
   * A clean-up (an upload session closed): sent also once the run is cancelled, which is when it
   * matters most (Ctrl-C mid-push), within a deadline of its own instead of the run's signal.
   */
  cleanup?: boolean;
}

/** One registry's API over an authenticated, retried request (see client.ts). */
export abstract class RegistryApi {
  /** `host[:port]` as in the image reference, for messages. */
  abstract readonly host: string;
  /** The retry policy of this client: blob bodies are resumed with it. */
  protected abstract readonly retry: Retry;

  /**
   * One API request with authentication, retried where it can be; an answer whose status is not
   * in `expected` throws a RegistryError (its body read into the message).
   */
  abstract request(spec: RequestSpec, expected: number[]): Promise<Response>;

  /** `location` (an upload Location, a redirect) as an absolute URL, relative to `base` or to the API's origin. */
  protected abstract resolve(location: string, base?: string): URL;

  /** The signal of this client's requests when the caller gives none. */
  protected abstract readonly defaultSignal: AbortSignal | undefined;

  /** A connection that failed or broke during `what`, as the error to tell and throw. */
  protected abstract connectionError(e: unknown, what: string): SmartError;

  // ------------------------------------------------------------------ manifests

  async getManifest(repo: string, reference: string, signal?: AbortSignal): Promise<{ bytes: Buffer; mediaType: string | undefined }> {
    const what = `manifest ${manifestName(repo, reference)}`;
    // A body cut short or stalled is as transient as a request that failed: the GET is sent again.
    // Only the body's failures are retried here: the request's own were, in `request`.
    let bodyBroke = false;
    const { res, bytes } = await this.retry.run(
      async () => {
        bodyBroke = false;
        const res = await this.request({ method: 'GET', url: `/v2/${repo}/manifests/${reference}`, headers: { accept: MANIFEST_ACCEPT }, scopes: [`repository:${repo}:pull`], what, ...(signal ? { signal } : {}) }, [200]);
        try {
          return { res, bytes: await readBody(res.body, 4 * 1024 * 1024, `registry ${this.host}: ${what}`) };
        } catch (e) {
          bodyBroke = true;
          throw e;
        }
      },
      {
        failure: (e) => (bodyBroke ? { error: this.connectionError(e, what) } : { error: e, retry: false }),
        told: (message, delay) => `${what}: ${message}; retrying in ${(delay / 1000).toFixed(1)} s`,
      },
      { signal },
    );
    const declared = header(res.headers, 'docker-content-digest');
    if (declared && declared.startsWith('sha256:') && declared !== sha256Digest(bytes)) {
      throw new SmartError('DIGEST_MISMATCH', `registry ${this.host} sent manifest ${manifestName(repo, reference)} whose bytes hash to ${sha256Digest(bytes)}, not the ${declared} it declares`, {
        input: manifestName(repo, reference),
      });
    }
    const contentType = header(res.headers, 'content-type')?.split(';')[0]?.trim();
    return { bytes, mediaType: contentType };
  }

  /** The digest a tag points at, or undefined when the manifest does not exist. */
  async headManifest(repo: string, reference: string): Promise<{ digest: string | undefined; mediaType: string | undefined; size: number } | undefined> {
    const res = await this.request(
      { method: 'HEAD', url: `/v2/${repo}/manifests/${reference}`, headers: { accept: MANIFEST_ACCEPT }, scopes: [`repository:${repo}:pull`], what: `manifest ${manifestName(repo, reference)}` },
      [200, 404],
    );
    await res.body.dump();
    if (res.statusCode === 404) return undefined;
    return {
      digest: header(res.headers, 'docker-content-digest'),
      mediaType: header(res.headers, 'content-type')?.split(';')[0]?.trim(),
      size: Number(header(res.headers, 'content-length') ?? 0),
    };
  }

  async putManifest(repo: string, reference: string, bytes: Buffer, mediaType: string, signal?: AbortSignal): Promise<void> {
    const res = await this.request(
      {
        method: 'PUT',
        url: `/v2/${repo}/manifests/${reference}`,
        headers: { 'content-type': mediaType, 'content-length': String(bytes.length) },
        body: bytes,
        scopes: [`repository:${repo}:pull,push`],
        what: `manifest ${manifestName(repo, reference)}`,
        ...(signal ? { signal } : {}),
      },
      [200, 201, 202],
    );
    await res.body.dump();
  }

  // ------------------------------------------------------------------ blobs

  async headBlob(repo: string, digest: Digest, signal?: AbortSignal): Promise<number | undefined> {
    const res = await this.request(
      { method: 'HEAD', url: `/v2/${repo}/blobs/${digest}`, scopes: [`repository:${repo}:pull`], what: `blob ${digest} in ${repo}`, ...(signal ? { signal } : {}) },
      [200, 307, 302, 404],
    );
    await res.body.dump();
    if (res.statusCode === 404) return undefined;
    const len = header(res.headers, 'content-length');
    return len === undefined ? -1 : Number(len);
  }

  /** One GET of a blob from `offset`, following redirects (without our credentials when they leave the registry). */
  private async getBlobResponse(repo: string, digest: Digest, offset: number, signal: AbortSignal | undefined, endInclusive?: number): Promise<Response> {
    let url = `/v2/${repo}/blobs/${digest}`;
    const range: Record<string, string> =
      endInclusive !== undefined ? { range: `bytes=${offset}-${endInclusive}` } : offset > 0 ? { range: `bytes=${offset}-` } : {};
    for (let hops = 0; hops < 6; hops++) {
      const res = await this.request(
        { method: 'GET', url, headers: range, scopes: [`repository:${repo}:pull`], what: `blob ${digest} of ${repo}`, bulk: true, ...(signal ? { signal } : {}) },
        [200, 206, 301, 302, 303, 307, 308],
      );
      if (res.statusCode < 300) {
        const coding = header(res.headers, 'content-encoding');
        if (coding && coding.toLowerCase() !== 'identity') {
          await res.body.dump();
          // Its length and digest are not the blob's: said as what it is, not as a truncated blob.
          throw new SmartError('REGISTRY', `registry ${this.host} answered blob ${digest} encoded (Content-Encoding: ${remoteText(coding, { max: 40 })}), though only its bytes as stored were accepted`, {
            input: digest,
            hint: 'a proxy or CDN in between compresses what it serves: have it pass blobs unchanged',
          });
        }
        return res;
      }
      await res.body.dump();
      const location = header(res.headers, 'location');
      if (!location) throw new SmartError('REGISTRY', `registry ${this.host} redirected blob ${digest} nowhere`, { input: digest });
      url = this.resolve(location, this.resolve(url).toString()).toString();
    }
    throw new SmartError('REGISTRY', `registry ${this.host}: too many redirects for blob ${digest}`, { input: digest });
  }

  /**
   * A blob's bytes as one stream. A connection that breaks mid-way is resumed from the last byte
   * received with a Range request (or, if the server ignores ranges, by skipping what was already
   * delivered), up to the retry limit. The caller verifies the digest over the whole stream.
   */
  openBlob(repo: string, digest: Digest, signal: AbortSignal | undefined = this.defaultSignal): Readable {
    const what = `blob ${digest} of ${repo}`;
    return this.retry.body((offset, s) => this.getBlobResponse(repo, digest, offset, s), { signal, failure: (e) => this.connectionError(e, what), what: `registry ${this.host}: ${what}` });
  }

  /** Bytes `start`..`endInclusive` of a blob (a 206, or cut from a 200), resumed as `openBlob` is; the chunks in order. */
  async getBlobRange(repo: string, digest: Digest, start: number, endInclusive: number, signal: AbortSignal | undefined = this.defaultSignal): Promise<Buffer[]> {
    const what = `blob ${digest} of ${repo}`;
    const want = endInclusive - start + 1;
    const body = this.retry.body((offset, s) => this.getBlobResponse(repo, digest, offset, s, endInclusive), { start, length: want, signal, failure: (e) => this.connectionError(e, what), what: `registry ${this.host}: ${what}` });
    // As they came: each a buffer of its own, never written again (ImageSource.getBlobRange).
    const chunks: Buffer[] = [];
    for await (const c of body) chunks.push(c as Buffer);
    return chunks;
  }

  /**
   * Mounts a blob from another repository of this registry: `mounted` when the registry linked it
   * (201); `not-mounted` when it opened an upload instead (202: not there, or no mounts here),
   * which is closed; `forbidden` when the account may not read `from` (401 insufficient_scope, 403).
   */
  async mountBlob(repo: string, digest: Digest, from: string, signal?: AbortSignal): Promise<'mounted' | 'not-mounted' | 'forbidden'> {
    const res = await this.request(
      {
        method: 'POST',
        url: `/v2/${repo}/blobs/uploads/?mount=${encodeURIComponent(digest)}&from=${encodeURIComponent(from)}`,
        headers: { 'content-length': '0' },
        scopes: [`repository:${repo}:pull,push`, `repository:${from}:pull`],
        what: `mount of blob ${digest} into ${repo}`,
        ...(signal ? { signal } : {}),
      },
      [201, 202, 401, 403],
    );
    await res.body.dump();
    if (res.statusCode === 201) return 'mounted';
    // A mount is only a shortcut: refused, the blob is uploaded, as containerd and skopeo do. A
    // 401 that is this repository's own shows again on the upload, which then fails.
    if (res.statusCode === 401 || res.statusCode === 403) return 'forbidden';
    const location = header(res.headers, 'location');
    if (location) await this.cancelUpload(this.resolve(location, this.resolve(`/v2/${repo}/blobs/uploads/`).toString()).toString(), [`repository:${repo}:pull,push`], `upload of ${repo}`);
    return 'not-mounted';
  }

  /**
   * Streams a blob into `repo` as it is produced (no temporary file). POST opens an upload; with
   * the digest and size known, one PUT `?digest=` carries the bytes and closes it, as containerd
   * sends a blob (one round trip less than a PATCH and a PUT, and the registry does not save and
   * load its hash state between them); else one chunked PATCH carries them and a PUT names the
   * digest they hashed to. With the digest known the bytes are verified as they pass; a stream
   * verified upstream against the digest and size (`verified`: it errors in place of its end) is
   * sent as it is, unhashed here. Either way the body is complete only once the source has ended
   * cleanly (the PUT's last chunk is held back until then, the PATCH's end with it), so the
   * registry cannot accept bytes that fail their check at the end.
   *
   * A body request that fails destroys `source`, closes the upload, and throws the cause: the
   * bytes' own error (the source broke, or they do not match the digest), else the request's (a
   * reset, a stall, a 5xx: retryable, so the caller can open the source again and send it again).
   */
  async uploadBlob(repo: string, source: Readable, expected: { digest?: Digest; size?: number; verified?: boolean; what: string }, signal?: AbortSignal): Promise<{ digest: Digest; size: number }> {
    const scopes = [`repository:${repo}:pull,push`];
    const what = `upload of ${expected.what} to ${repo}`;
    const start = await this.request(
      { method: 'POST', url: `/v2/${repo}/blobs/uploads/`, headers: { 'content-length': '0' }, scopes, what: `upload to ${repo}`, ...(signal ? { signal } : {}) },
      [202],
    );
    await start.body.dump();
    const opened = header(start.headers, 'location');
    if (!opened) throw new SmartError('REGISTRY', `registry ${this.host} opened an upload without a Location`, { input: repo });
    // A relative Location is relative to the request's URL (RFC 3986), `UUID?_state=…` as `/v2/…` alike.
    let location = this.resolve(opened, this.resolve(`/v2/${repo}/blobs/uploads/`).toString()).toString();
    const verifiedSize = expected.verified && expected.digest ? expected.size : undefined;
    const hash =
      verifiedSize !== undefined
        ? undefined
        : expected.digest
          ? new VerifyStream({ digest: expected.digest, ...(expected.size !== undefined ? { size: expected.size } : {}), what: expected.what })
          : // A layer compressed on its way here: fresh buffers, hashed on the pool (as the file: store does).
            new DigestStream({ offThread: true });
    const chunks = hash ? hashedChunks(source, hash) : (source as AsyncIterable<Buffer>);
    const known = expected.digest !== undefined && expected.size !== undefined ? { digest: expected.digest, size: expected.size } : undefined;
    const url = this.resolve(location);
    if (known) url.searchParams.set('digest', known.digest);
    // Piped into the request as the socket drains: back-pressure reaches the source.
    const body = Readable.from(known ? lastHeldBack(chunks) : chunks, { objectMode: false });
    let sent: Response;
    try {
      sent = await this.request(
        {
          method: known ? 'PUT' : 'PATCH',
          url: url.toString(),
          headers: { 'content-type': 'application/octet-stream', ...(known ? { 'content-length': String(known.size) } : {}) },
          body,
          scopes,
          what,
          ...(signal ? { signal } : {}),
        },
        known ? [201, 204] : [202, 204],
      );
    } catch (e) {
      body.destroy();
      source.destroy(); // whatever produces the bytes (a file, a download, a compressor) stops now
      await this.cancelUpload(location, scopes, 'upload');
      // Abandoning the body aborts the hash too, and that says nothing.
      const bytes = hash ?? source;
      const bytesError = bytes.errored && !isCancellation(bytes.errored) ? bytes.errored : undefined;
      throw bytesError ?? e;
    }
    await sent.body.dump();
    if (known) return known;
    const next = header(sent.headers, 'location');
    if (next) location = this.resolve(next, url.toString()).toString();
    const digest = hash instanceof DigestStream ? hash.digest : expected.digest!;
    const done = this.resolve(location);
    done.searchParams.set('digest', digest);
    const put = await this.request({ method: 'PUT', url: done.toString(), headers: { 'content-length': '0' }, scopes, what, ...(signal ? { signal } : {}) }, [201, 204]);
    await put.body.dump();
    return { digest, size: hash ? hash.size : verifiedSize! };
  }

  /** Closes an upload session; a failure to do so is left unsaid (the registry expires it). */
  private async cancelUpload(location: string, scopes: string[], what: string): Promise<void> {
    await this.request({ method: 'DELETE', url: this.resolve(location).toString(), scopes, what, cleanup: true }, [200, 202, 204, 404]).then(
      (r) => r.body.dump(),
      () => undefined,
    );
  }

  // ------------------------------------------------------------------ listings

  /** A JSON answer; anything else fails naming the request, without echoing what came (JSON.parse would). */
  private json<T>(body: Buffer, what: string): T {
    try {
      return JSON.parse(body.toString('utf8')) as T;
    } catch {
      throw new SmartError('REGISTRY', `registry ${this.host} answered something that is not JSON to GET ${what}`, { input: this.host });
    }
  }

  /** A whole (small) response body; a body that breaks is an error naming the registry and `what`. */
  private async readAll(res: Response, what: string): Promise<Buffer> {
    try {
      return await readBody(res.body);
    } catch (e) {
      throw this.connectionError(e, what);
    }
  }

  async listTags(repo: string): Promise<string[]> {
    try {
      return await this.pages(`/v2/${repo}/tags/list`, [`repository:${repo}:pull`], `tags of ${repo}`, (doc: { tags?: string[] | null }) => doc.tags ?? []);
    } catch (e) {
      // A repository the catalog lists that holds no tag (an interrupted first push leaves its
      // blobs, no manifest): the stock registry answers 404 NAME_UNKNOWN for its tags.
      if (isRegistryError(e) && e.status === 404 && e.codes.includes('NAME_UNKNOWN')) return [];
      throw e;
    }
  }

  async catalog(): Promise<string[]> {
    return this.pages('/v2/_catalog', ['registry:catalog:*'], 'catalog', (doc: { repositories?: string[] | null }) => doc.repositories ?? []);
  }

  /**
   * A paginated list, 1,000 entries a page asked for, the next pages where the `Link` header says.
   * A registry whose page limit is smaller (the stock registry's `catalog.maxentries`) refuses that
   * with PAGINATION_NUMBER_INVALID: asked again without a size, it answers pages of its own size.
   */
  private async pages<T>(path: string, scopes: string[], what: string, entries: (doc: T) => string[]): Promise<string[]> {
    const out: string[] = [];
    const first = `${path}?n=1000`;
    let url: string | undefined = first;
    while (url) {
      let res: Response;
      try {
        res = await this.request({ method: 'GET', url, scopes, what }, [200]);
      } catch (e) {
        if (url === first && isRegistryError(e) && e.codes.includes('PAGINATION_NUMBER_INVALID')) {
          url = path;
          continue;
        }
        throw e;
      }
      out.push(...entries(this.json<T>(await this.readAll(res, what), what)));
      url = nextLink(header(res.headers, 'link'));
    }
    return out;
  }
}

/** Passes `source` through `hash` and yields what comes out, so the hash sees every byte sent. */
async function* hashedChunks(source: Readable, hash: DigestStream | VerifyStream): AsyncGenerator<Buffer> {
  source.on('error', (e) => hash.destroy(e));
  source.pipe(hash);
  for await (const c of hash) yield c as Buffer;
}

/**
 * `chunks` with the last one held back until they end cleanly: a body whose length its request
 * declares is whole only once the bytes have passed their check (a check that fails throws here,
 * and the request is cut one chunk short).
 */
async function* lastHeldBack(chunks: AsyncIterable<Buffer>): AsyncGenerator<Buffer> {
  let held: Buffer | undefined;
  for await (const c of chunks) {
    if (held) yield held;
    held = c;
  }
  if (held) yield held;
}

function nextLink(link: string | undefined): string | undefined {
  const m = link ? /<([^>]+)>\s*;\s*rel="?next"?/.exec(link) : null;
  return m ? m[1] : undefined;
}
