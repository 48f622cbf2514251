/**
 * Small OCI layouts made to order, as a builder would have made them: each layer a tar of given
 * files with a history entry, gzip-compressed, deterministic. For tests that need many images
 * sharing layers (the layer trie), without running a builder for each.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { gzipSync } from 'node:zlib';
import tar from 'tar-stream';

export interface LayerSpec {
  /** Path → content; a path ending in `/` is a directory. */
  files: Record<string, string>;
  createdBy: string;
}

export interface ImageSpec {
  layers: LayerSpec[];
  /** History entries that made no layer (ENV, CMD...), inserted after the layer at that index. */
  emptySteps?: { after: number; createdBy: string }[];
  env?: string[];
  workdir?: string;
}

const sha = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}`;
const MTIME = new Date(1704067200000);

export async function layerTar(files: Record<string, string>): Promise<Buffer> {
  const pack = tar.pack();
  const dirs = new Set<string>();
  for (const name of Object.keys(files).sort()) {
    const parts = name.replace(/\/$/, '').split('/');
    for (let i = 1; i < parts.length; i++) {
      const d = `${parts.slice(0, i).join('/')}/`;
      if (!dirs.has(d)) {
        dirs.add(d);
        pack.entry({ name: d, type: 'directory', mode: 0o755, mtime: MTIME });
      }
    }
    if (name.endsWith('/')) {
      if (!dirs.has(name)) pack.entry({ name, type: 'directory', mode: 0o755, mtime: MTIME });
      dirs.add(name);
    } else pack.entry({ name, mode: 0o644, mtime: MTIME }, files[name]!);
  }
  pack.finalize();
  const chunks: Buffer[] = [];
  for await (const c of pack as unknown as AsyncIterable<Buffer>) chunks.push(c);
  return Buffer.concat(chunks);
}

/** Writes an OCI layout at `dir` holding one image of gzip layers `gz` and `config`, tagged `latest`; returns the manifest. */
export async function writeLayout(dir: string, gz: Buffer[], config: Buffer, layerMediaType = 'application/vnd.oci.image.layer.v1.tar+gzip'): Promise<Buffer> {
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: sha(config), size: config.length },
      layers: gz.map((g) => ({ mediaType: layerMediaType, digest: sha(g), size: g.length })),
    }),
  );
  await fs.mkdir(path.join(dir, 'blobs', 'sha256'), { recursive: true });
  for (const b of [...gz, config, manifest]) await fs.writeFile(path.join(dir, 'blobs', 'sha256', sha(b).slice(7)), b);
  await fs.writeFile(path.join(dir, 'oci-layout'), '{"imageLayoutVersion":"1.0.0"}');
  await fs.writeFile(
    path.join(dir, 'index.json'),
    JSON.stringify({
      schemaVersion: 2,
      manifests: [{ mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: sha(manifest), size: manifest.length, annotations: { 'org.opencontainers.image.ref.name': 'latest' } }],
    }),
  );
  return manifest;
}

/**
 * Writes an image of the given layer tars, taken as they are (crafted or damaged ones included), as
 * an OCI layout at `dir` (tag `latest`): each gzip-compressed, its diff id in the config. Returns
 * the layers' blob digests.
 */
export async function writeImageOfTars(dir: string, tars: Buffer[]): Promise<{ layers: { digest: string; diffId: string }[] }> {
  const gz = tars.map((t) => gzipSync(t, { level: 6 }));
  const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', config: {}, rootfs: { type: 'layers', diff_ids: tars.map(sha) }, history: tars.map(() => ({ created_by: 'crafted' })) }));
  await writeLayout(dir, gz, config);
  return { layers: gz.map((g, i) => ({ digest: sha(g), diffId: sha(tars[i]!) })) };
}

/** Writes the image as an OCI layout at `dir` (tag `latest`); returns its manifest digest and layer sizes. */
export async function writeImage(dir: string, spec: ImageSpec): Promise<{ manifest: string; layers: { digest: string; size: number }[]; config: { digest: string; size: number } }> {
  const tars = await Promise.all(spec.layers.map((l) => layerTar(l.files)));
  const gz = tars.map((t) => gzipSync(t, { level: 6 }));
  const history: { created_by: string; empty_layer?: boolean }[] = [];
  spec.layers.forEach((l, i) => {
    history.push({ created_by: l.createdBy });
    for (const e of spec.emptySteps ?? []) if (e.after === i) history.push({ created_by: e.createdBy, empty_layer: true });
  });
  const config = Buffer.from(
    JSON.stringify({
      architecture: 'amd64',
      os: 'linux',
      config: { Env: spec.env ?? ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'], ...(spec.workdir ? { WorkingDir: spec.workdir } : {}) },
      rootfs: { type: 'layers', diff_ids: tars.map(sha) },
      history,
    }),
  );
  const manifest = await writeLayout(dir, gz, config);
  return { manifest: sha(manifest), layers: gz.map((g) => ({ digest: sha(g), size: g.length })), config: { digest: sha(config), size: config.length } };
}

/**
 * A one-layer OCI layout holding busybox and links to its applets, from the machine's
 * busybox-static (`/bin/busybox`): a tiny base image real builders can RUN on, made offline.
 * `container` is its config's `config` (the process a runtime starts).
 */
export async function busyboxLayout(
  dir: string,
  applets = ['sh', 'ls', 'mkdir', 'rm', 'echo', 'cat', 'ln', 'chmod', 'touch', 'mv', 'cp'],
  container: Record<string, unknown> = { Cmd: ['/bin/sh'] },
): Promise<void> {
  const busybox = await fs.readFile('/bin/busybox');
  const pack = tar.pack();
  const mtime = new Date(1704067200000);
  for (const d of ['bin/', 'tmp/', 'etc/']) pack.entry({ name: d, type: 'directory', mode: d === 'tmp/' ? 0o1777 : 0o755, mtime });
  pack.entry({ name: 'bin/busybox', mode: 0o755, mtime }, busybox);
  for (const applet of applets) pack.entry({ name: `bin/${applet}`, type: 'symlink', linkname: 'busybox', mtime });
  pack.entry({ name: 'etc/passwd', mode: 0o644, mtime }, 'root:x:0:0:root:/root:/bin/sh\n');
  pack.finalize();
  const chunks: Buffer[] = [];
  for await (const c of pack as unknown as AsyncIterable<Buffer>) chunks.push(c);
  const layer = Buffer.concat(chunks);
  const gz = gzipSync(layer);
  const config = Buffer.from(
    JSON.stringify({ architecture: 'amd64', os: 'linux', config: container, rootfs: { type: 'layers', diff_ids: [sha(layer)] }, history: [{ created_by: 'ADD busybox /' }] }),
  );
  await writeLayout(dir, [gz], config);
}
