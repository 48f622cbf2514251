/**
 * The registry client as a library, against the stock registry behind a fault-injecting proxy:
 * a byte range broken mid-body is resumed from the byte reached (the one resumable-body helper
 * of blob reads), and an error answer becomes a RegistryError that keeps the status, every error
 * code the registry listed, the method and the URL with its secrets redacted; and a stall is the
 * registry's silence only, never a producer or a reader of ours that is slow. A Location that is not
 * an http(s) URL is refused by name.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { parseDigest } from '../../src/oci/digest.js';
import { RegistryClient, RegistryError } from '../../src/transports/registry/client.js';
import { fixtures } from '../harness/fixtures.js';
import { startProxy, type RunningProxy } from '../harness/proxy.js';
import { startRegistry, type RunningRegistry } from '../harness/registry.js';
import { smart } from '../harness/run.js';
import { haveTools } from '../harness/tools.js';
import { tempDir } from '../harness/tmp.js';

describe.skipIf(!haveTools('docker-registry'))('the registry client', () => {
  let registry: RegistryClient;
  let upstream: RunningRegistry;
  let proxy: RunningProxy;
  const told: string[] = [];

  beforeAll(async () => {
    const work = await tempDir();
    upstream = await startRegistry({ configDir: work });
    proxy = await startProxy({ target: upstream.url });
    const r = await smart(['push', `oci:${fixtures().paths.ociBasic}:latest`, `docker://${upstream.host}/client/basic:v1`]);
    expect(r.code, r.stderr).toBe(0);
  });

  afterAll(async () => {
    await registry?.close();
    await proxy?.stop();
    await upstream?.stop();
  });

  beforeEach(async () => {
    await registry?.close();
    registry = new RegistryClient({ host: proxy.host, retryDelayMs: 10, onRetry: (m) => told.push(m) });
    told.length = 0;
    proxy.setFaults(undefined);
  });

  /** The largest layer of the basic fixture, and its bytes. */
  const bigLayer = async () => {
    const fx = fixtures();
    const layer = [...fx.basic.layers].sort((a, b) => b.size - a.size)[0]!;
    const bytes = await fs.readFile(path.join(fx.paths.ociBasic, 'blobs', 'sha256', layer.digest.slice('sha256:'.length)));
    return { digest: parseDigest(layer.digest), bytes };
  };

  it('resumes a byte range broken mid-body from the byte reached, and says so', async () => {
    const { digest, bytes } = await bigLayer();
    expect(bytes.length).toBeGreaterThan(300);
    const ranges: (string | undefined)[] = [];
    proxy.setFaults((req, n) => {
      if (req.method !== 'GET' || !req.path.endsWith(digest)) return undefined;
      ranges.push(req.headers.range);
      return n === 1 ? { kind: 'reset-mid-body', afterBytes: 100 } : undefined;
    });
    const start = 10;
    const end = bytes.length - 6;
    const part = await registry.getBlobRange('client/basic', digest, start, end);
    expect(Buffer.concat(part).equals(bytes.subarray(start, end + 1))).toBe(true);
    expect(ranges).toEqual([`bytes=${start}-${end}`, `bytes=${start + 100}-${end}`]);
    expect(told).toEqual([expect.stringMatching(/ registry 127\.0\.0\.1:\d+: .*\(blob sha256:[0-9a-f]{64} of client\/basic\); resuming from byte 110$/)]);
  });

  it('reads a whole blob across a broken connection, from the byte reached', async () => {
    const { digest, bytes } = await bigLayer();
    const ranges: (string | undefined)[] = [];
    proxy.setFaults((req, n) => {
      if (req.method !== 'GET' || !req.path.endsWith(digest)) return undefined;
      ranges.push(req.headers.range);
      return n === 1 ? { kind: 'reset-mid-body', afterBytes: 200 } : undefined;
    });
    const chunks: Buffer[] = [];
    for await (const c of registry.openBlob('client/basic', digest)) chunks.push(c as Buffer);
    expect(Buffer.concat(chunks).equals(bytes)).toBe(true);
    expect(ranges).toEqual([undefined, 'bytes=200-']);
    expect(told).toEqual([expect.stringMatching(/; resuming from byte 200$/)]);
  });

  it('keeps the status, every error code, the method and the redacted URL of an error answer', async () => {
    const { digest } = await bigLayer();
    const secret = 'sig-0123456789abcdef';
    const redirect = `/elsewhere/blob?X-Amz-Signature=${secret}&part=1`;
    const body = JSON.stringify({ errors: [{ code: 'DENIED', message: 'not yours' }, { code: 'UNAUTHORIZED', message: 'signature expired' }] });
    proxy.setFaults((req) => {
      if (req.method === 'GET' && req.path.endsWith(digest)) return { kind: 'status', status: 307, headers: { location: `http://${proxy.host}${redirect}` } };
      if (req.path === '/elsewhere/blob') return { kind: 'status', status: 403, body };
      return undefined;
    });
    let error: unknown;
    try {
      for await (const c of registry.openBlob('client/basic', digest)) void c;
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(RegistryError);
    const e = error as RegistryError;
    expect(e.code).toBe('REGISTRY');
    expect(e.status).toBe(403);
    expect(e.codes).toEqual(['DENIED', 'UNAUTHORIZED']);
    expect(e.method).toBe('GET');
    expect(e.url).toBe(`http://${proxy.host}/elsewhere/blob?X-Amz-Signature=[redacted]&part=1`);
    expect(e.retryable).toBe(false);
    expect(e.message).toMatch(/^registry 127\.0\.0\.1:\d+ answered 403 DENIED: not yours; UNAUTHORIZED: signature expired to GET blob sha256:/);
    expect(JSON.stringify({ message: e.message, url: e.url, details: e.details })).not.toContain(secret);
  });

  it('takes for a stall the registry falling silent, not a slow producer or reader of ours', async () => {
    const slow = new RegistryClient({ host: proxy.host, retryDelayMs: 10, stallTimeoutMs: 300, onRetry: (m) => told.push(m) });
    try {
      // 8 MiB: more than the socket's and the answer's buffers hold, so the connection waits on the reader.
      const bytes = Buffer.alloc(8 << 20);
      for (let i = 0; i < bytes.length; i += 4) bytes.writeUInt32LE((i * 2654435761) >>> 0, i);
      const digest = `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
      // The producer falls silent for three stall periods in the middle of the upload.
      async function* paced(): AsyncGenerator<Buffer> {
        yield bytes.subarray(0, 1 << 20);
        await sleep(900);
        yield bytes.subarray(1 << 20);
      }
      expect(await slow.uploadBlob('client/slow', Readable.from(paced()), { what: 'a paced blob' })).toEqual({ digest, size: bytes.length });
      // The reader takes nothing for three stall periods after its first chunk.
      const chunks: Buffer[] = [];
      for await (const c of slow.openBlob('client/slow', parseDigest(digest))) {
        if (chunks.push(c as Buffer) === 1) await sleep(900);
      }
      expect(Buffer.concat(chunks).equals(bytes)).toBe(true);
      expect(told).toEqual([]);
      // The registry silent mid-body, with the reader waiting: a stall, and the read resumes after it.
      proxy.setFaults((req, n) => (req.method === 'GET' && req.path.endsWith(digest) && n === 1 ? { kind: 'stall-mid-body', afterBytes: 1 << 20 } : undefined));
      const again: Buffer[] = [];
      for await (const c of slow.openBlob('client/slow', parseDigest(digest))) again.push(c as Buffer);
      expect(Buffer.concat(again).equals(bytes)).toBe(true);
      expect(told).toEqual([expect.stringMatching(/stalled: no data for .*; resuming from byte \d+$/)]);
    } finally {
      await slow.close();
    }
  });

  it('marks a 5xx answer retryable once its retries are spent, with its status and code', async () => {
    const body = JSON.stringify({ errors: [{ code: 'UNAVAILABLE', message: 'maintenance' }] });
    proxy.setFaults((req) => (req.method === 'GET' && req.path.includes('/manifests/') ? { kind: 'status', status: 503, body } : undefined));
    const e = await registry.getManifest('client/basic', 'v1').then(
      () => undefined,
      (x: unknown) => x,
    );
    expect(e).toBeInstanceOf(RegistryError);
    expect(e).toMatchObject({ status: 503, codes: ['UNAVAILABLE'], method: 'GET', retryable: true });
    expect(told).toHaveLength(4);
    expect(told[0]).toMatch(/^manifest client\/basic:v1: registry 127\.0\.0\.1:\d+ answered 503; retrying in 0\.0 s$/);
  });

  // A blob redirect or an upload's Location that names another scheme, or no URL at all, was
  // followed as plain HTTP to port 80, or failed as an internal "Invalid URL".
  it.each([
    ['ftp://127.0.0.1/blob?X-Amz-Signature=sig-0123456789abcdef', 'a ftp: Location, not http(s): ftp://127.0.0.1/blob?X-Amz-Signature=[redacted]'],
    ['file:///etc/passwd', 'a file: Location, not http(s): file:///etc/passwd'],
    ['http://[bad', 'a Location that is not a URL: http://[bad'],
  ])('a blob redirected to %j: one line, exit 1, nothing written', async (location, said) => {
    proxy.setFaults((req) => (req.method === 'GET' && req.path.includes('/blobs/') ? { kind: 'status', status: 307, headers: { location } } : undefined));
    const dest = path.join(await tempDir(), 'out');
    // A cache of its own: the blobs an earlier pull kept would be read in place of fetching them.
    const r = await smart(['pull', `docker://${proxy.host}/client/basic:v1`, `oci:${dest}`, '--cache-dir', await tempDir()]);
    expect(r.code).toBe(1);
    const lines = r.stderr.trim().split('\n');
    expect(lines.at(-1)).toBe(`smart: error [REGISTRY]: registry ${proxy.host} answered ${said}`);
    expect(r.stderr).not.toContain('sig-0123456789abcdef');
    await expect(fs.stat(path.join(dest, 'index.json'))).rejects.toThrow();
  });

  it('an upload whose Location names another scheme: one line, exit 1, no tag', async () => {
    proxy.setFaults((req) => (req.method === 'POST' && req.path.includes('/blobs/uploads/') ? { kind: 'status', status: 202, headers: { location: 'file:///tmp/upload' } } : undefined));
    const r = await smart(['push', `oci:${fixtures().paths.ociBasic}:latest`, `docker://${proxy.host}/client/other:v1`]);
    expect(r.code).toBe(1);
    expect(r.stderr.trim().split('\n').at(-1)).toBe(`smart: error [REGISTRY]: registry ${proxy.host} answered a file: Location, not http(s): file:///tmp/upload`);
    proxy.setFaults(undefined);
    const tag = await fetch(`${upstream.url}/v2/client/other/manifests/v1`, { method: 'HEAD' });
    expect(tag.status).toBe(404);
  });
});
