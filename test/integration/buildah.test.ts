/**
 * A real builder's image: buildah builds (daemonless, chroot isolation, vfs storage, offline) an
 * image with RUN steps that delete, replace and add files over a busybox base; smart unpacks it
 * to the same tree as umoci does.
 */
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { gzipSync } from 'node:zlib';
import tar from 'tar-stream';
import { describe, expect, it } from 'vitest';
import { writeLayout } from '../harness/images.js';
import { runOk, smart } from '../harness/run.js';
import { haveTools, isRoot } from '../harness/tools.js';
import { describeTree } from '../harness/tree.js';

const sha = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}`;

/** A one-layer OCI layout holding busybox and its sh/ls/mkdir... links, from the machine's busybox-static. */
async function busyboxLayout(dir: string): Promise<void> {
  const busybox = await fs.readFile('/bin/busybox');
  const pack = tar.pack();
  const mtime = new Date(1704067200000);
  for (const d of ['bin/', 'tmp/', 'etc/']) pack.entry({ name: d, type: 'directory', mode: d === 'tmp/' ? 0o1777 : 0o755, mtime });
  pack.entry({ name: 'bin/busybox', mode: 0o755, mtime }, busybox);
  for (const applet of ['sh', 'ls', 'mkdir', 'rm', 'echo', 'cat', 'ln', 'chmod', 'touch', 'mv', 'cp']) {
    pack.entry({ name: `bin/${applet}`, type: 'symlink', linkname: 'busybox', mtime });
  }
  pack.entry({ name: 'etc/passwd', mode: 0o644, mtime }, 'root:x:0:0:root:/root:/bin/sh\n');
  pack.finalize();
  const chunks: Buffer[] = [];
  for await (const c of pack as unknown as AsyncIterable<Buffer>) chunks.push(c);
  const layer = Buffer.concat(chunks);
  const gz = gzipSync(layer);
  const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', config: { Cmd: ['/bin/sh'] }, rootfs: { type: 'layers', diff_ids: [sha(layer)] }, history: [{ created_by: 'ADD busybox /' }] }));
  await writeLayout(dir, [gz], config);
}

describe.skipIf(!haveTools('buildah', 'umoci') || !isRoot || process.arch !== 'x64')('an image built by buildah with RUN steps', () => {
  it('unpacks to the same tree as umoci', async () => {
    // buildah names a base image after its whole path, which must then be lowercase (mkdtemp's is not).
    const work = path.join(os.tmpdir(), `smart-buildah-${randomBytes(6).toString('hex')}`);
    await fs.mkdir(work);
    try {
      await buildAndCompare(work);
    } finally {
      await fs.rm(work, { recursive: true, force: true });
    }
  });
});

async function buildAndCompare(work: string): Promise<void> {
  {
    const base = path.join(work, 'base');
    await busyboxLayout(base);
    const ctx = path.join(work, 'ctx');
    await fs.mkdir(ctx);
    await fs.writeFile(path.join(ctx, 'app.txt'), 'from the context\n');
    await fs.writeFile(
      path.join(ctx, 'Dockerfile'),
      [
        `FROM oci:${base}:latest`,
        'RUN mkdir -p /data/keep /data/drop && echo one > /data/keep/a && echo two > /data/drop/b && echo old > /etc/motd',
        'COPY app.txt /srv/app.txt',
        'RUN rm -r /data/drop && rm /bin/ls && echo new > /etc/motd && ln /srv/app.txt /srv/app-hardlink && mkdir /data/drop',
        'RUN rm -r /data/keep && echo file > /data/keep',
        '',
      ].join('\n'),
    );
    const storage = ['--root', path.join(work, 'root'), '--runroot', path.join(work, 'runroot'), '--storage-driver', 'vfs'];
    await runOk('buildah', [...storage, 'bud', '--isolation', 'chroot', '--layers', '-t', 'localhost/smart-test:1', ctx]);
    const built = path.join(work, 'built');
    await runOk('buildah', [...storage, 'push', 'localhost/smart-test:1', `oci:${built}:latest`]);
    await runOk('buildah', [...storage, 'rmi', '--all', '--force']).catch(() => undefined);

    const rootfs = path.join(work, 'smart-rootfs');
    const r = await smart(['pull', `oci:${built}:latest`, `rootfs:${rootfs}`]);
    expect(r.code, r.stderr).toBe(0);
    const bundle = path.join(work, 'umoci');
    await runOk('umoci', ['unpack', '--image', `${built}:latest`, bundle]);
    const ours = await describeTree(rootfs);
    expect(ours).toEqual(await describeTree(path.join(bundle, 'rootfs')));
    expect(ours['data/keep']).toMatchObject({ type: 'file' });
    expect(ours['data/drop']).toMatchObject({ type: 'dir' });
    expect(ours['bin/ls']).toBeUndefined();
  }
}
