/**
 * A real builder's image: buildah builds (daemonless, chroot isolation, vfs storage, offline) an
 * image with RUN steps that delete, replace and add files over a busybox base; smart unpacks it
 * to the same tree as umoci does.
 */
import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { busyboxLayout } from '../harness/images.js';
import { runOk, smart } from '../harness/run.js';
import { haveTools, isRoot } from '../harness/tools.js';
import { describeTree } from '../harness/tree.js';

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
