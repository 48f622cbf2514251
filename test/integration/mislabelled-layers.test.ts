/**
 * Layers whose media type misstates their compression (a gzip blob typed as a plain tar, a plain tar
 * typed as gzip, gzip typed as zstd), in a layout made by hand with GNU tar, gzip and zstd: read by
 * their first bytes wherever they are unpacked (a tree, a docker save: checked against the config's
 * diff ids), as containerd reads them; copied into a store and the stock registry as they are, the
 * manifest byte for byte, as skopeo then reads it from the registry.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { gzipSync } from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { runOk, smart } from '../harness/run.js';
import { startRegistry } from '../harness/registry.js';
import { tempDir } from '../harness/tmp.js';
import { haveTools } from '../harness/tools.js';

const TAR = 'application/vnd.oci.image.layer.v1.tar';
const sha = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}`;

/** A one-layer layout at `dir` (tag `x`): a tar of etc/hello, its blob encoded as `bytes` says, typed `mediaType`. */
async function layout(dir: string, work: string, mediaType: string, bytes: 'plain' | 'gzip' | 'zstd'): Promise<{ manifest: string; blob: string }> {
  const tree = path.join(work, 'tree');
  await fs.mkdir(path.join(tree, 'etc'), { recursive: true });
  await fs.writeFile(path.join(tree, 'etc/hello'), 'hi\n');
  const tarFile = path.join(work, 'layer.tar');
  await runOk('tar', ['-C', tree, '--owner=0', '--group=0', '--mtime=@0', '-cf', tarFile, 'etc']);
  const tar = await fs.readFile(tarFile);
  const blob = bytes === 'gzip' ? gzipSync(tar) : bytes === 'zstd' ? (await runOk('zstd', ['-q', '-c', tarFile])).stdout : tar;
  await fs.mkdir(path.join(dir, 'blobs/sha256'), { recursive: true });
  const put = async (b: Buffer, type: string) => {
    await fs.writeFile(path.join(dir, 'blobs/sha256', sha(b).slice(7)), b);
    return { mediaType: type, digest: sha(b), size: b.length };
  };
  const config = await put(Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', config: {}, rootfs: { type: 'layers', diff_ids: [sha(tar)] } })), 'application/vnd.oci.image.config.v1+json');
  const layer = await put(blob, mediaType);
  const manifest = await put(Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.manifest.v1+json', config, layers: [layer] })), 'application/vnd.oci.image.manifest.v1+json');
  await fs.writeFile(path.join(dir, 'index.json'), JSON.stringify({ schemaVersion: 2, manifests: [{ ...manifest, annotations: { 'org.opencontainers.image.ref.name': 'x' } }] }));
  await fs.writeFile(path.join(dir, 'oci-layout'), '{"imageLayoutVersion":"1.0.0"}');
  return { manifest: manifest.digest, blob: layer.digest };
}

async function ok(args: string[]): Promise<{ manifestDigest: string; converted: boolean }> {
  const r = await smart([...args, '--json']);
  expect(r.code, `${args.join(' ')}: ${r.stderr}`).toBe(0);
  return JSON.parse(r.stdout.toString()) as { manifestDigest: string; converted: boolean };
}

describe('layers whose media type misstates their compression', () => {
  it.skipIf(!haveTools('zstd', 'skopeo', 'docker-registry'))('are unpacked by their bytes, and copied into a store and a registry as they are', async () => {
    const work = await tempDir();
    const registry = await startRegistry({ configDir: work });
    try {
      for (const [mediaType, bytes] of [
        [TAR, 'gzip'],
        [TAR, 'zstd'],
        [`${TAR}+gzip`, 'plain'],
        [`${TAR}+zstd`, 'gzip'],
      ] as const) {
        const name = `${mediaType.slice(TAR.length) || '+none'}-over-${bytes}`.slice(1);
        const at = path.join(work, name);
        await fs.mkdir(at);
        const dir = path.join(at, 'layout');
        const made = await layout(dir, at, mediaType, bytes);
        // Unpacked: the tree, and a docker save (its layer checked against the diff id again as smart reads it back).
        await ok(['pull', `oci:${dir}:x`, `rootfs:${path.join(at, 'root')}`]);
        expect(await fs.readFile(path.join(at, 'root/etc/hello'), 'utf8'), name).toBe('hi\n');
        await ok(['pull', `oci:${dir}:x`, `docker-archive:${path.join(at, 'saved.tar')}`]);
        await ok(['pull', `docker-archive:${path.join(at, 'saved.tar')}`, `rootfs:${path.join(at, 'from-save')}`]);
        expect(await fs.readFile(path.join(at, 'from-save/etc/hello'), 'utf8'), name).toBe('hi\n');
        // Copied as they are: the manifest byte for byte, the blob not compressed again.
        const stored = await ok(['push', `oci:${dir}:x`, `file:${path.join(at, 'store')}#app:1`]);
        expect([stored.manifestDigest, stored.converted], name).toEqual([made.manifest, false]);
        await ok(['pull', `file:${path.join(at, 'store')}#app:1`, `rootfs:${path.join(at, 'from-store')}`]);
        expect(await fs.readFile(path.join(at, 'from-store/etc/hello'), 'utf8'), name).toBe('hi\n');
        const pushed = await ok(['push', `oci:${dir}:x`, `docker://${registry.host}/${name}:1`]);
        expect([pushed.manifestDigest, pushed.converted], name).toEqual([made.manifest, false]);
        // The registry serves them as they were: skopeo reads the manifest, and the blob is the layout's.
        const raw = (await runOk('skopeo', ['inspect', '--raw', '--tls-verify=false', `docker://${registry.host}/${name}:1`])).stdout;
        expect(sha(raw), name).toBe(made.manifest);
        const served = Buffer.from(await (await fetch(`http://${registry.host}/v2/${name}/blobs/${made.blob}`)).arrayBuffer());
        expect(served.equals(await fs.readFile(path.join(dir, 'blobs/sha256', made.blob.slice(7)))), name).toBe(true);
      }
    } finally {
      await registry.stop();
    }
  });
});
