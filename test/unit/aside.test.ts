/**
 * What killed runs leave where they write (an archive's temporary file and staging layout, a
 * layout's blob being written), removed by the next run into the same place; never what a live run
 * writes, nor what is not ours.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs/promises';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import type { BlobDestination } from '../../src/oci/image.js';
import { hostPlatform } from '../../src/oci/platform.js';
import { copy } from '../../src/ops/copy.js';
import { sweepAside } from '../../src/storage/aside.js';
import { currentOwner, ownerTag } from '../../src/storage/leftovers.js';
import { openDestination, openSource, parseImageName } from '../../src/transports/all.js';
import type { OpenContext } from '../../src/transports/transport.js';
import { fixtures } from '../harness/fixtures.js';
import { tempDir } from '../harness/tmp.js';

const ctx: OpenContext = { stdin: process.stdin, stdout: process.stdout };
const dead = () => `${ownerTag({ ...currentOwner(), boot: 'ffffffff' })}-0a1b2c3d`; // an earlier boot's run
const live = () => `${ownerTag()}-0a1b2c3d`;
/** The tag of a run of this boot that has ended. */
async function endedRun(): Promise<string> {
  const child = spawn(process.execPath, ['-e', '0']);
  await new Promise((resolve) => child.once('exit', resolve));
  return `${ownerTag({ ...currentOwner(), pid: child.pid!, start: 1 })}-0a1b2c3d`;
}
const uuid = '6f1d2c3b-0000-4000-8000-000000000000';
const twoDaysAgo = new Date(Date.now() - 2 * 24 * 3600 * 1000);

async function touch(file: string, when?: Date): Promise<void> {
  await fs.writeFile(file, 'x');
  if (when) await fs.utimes(file, when, when);
}

describe('leftovers beside a file', () => {
  it("removes a dead run's names, and earlier versions' once a day old; keeps a live run's, fresh untagged ones and names not of this kind", async () => {
    const dir = await tempDir('smart-aside-');
    const gone: [string, Date?][] = [[`.x.tar.smart-${dead()}.tmp`], [`.x.tar.smart-${dead()}`], [`.x.tar.smart-${uuid}.tmp`, twoDaysAgo], [`x.tar.smart-${uuid}.tmp`, twoDaysAgo]];
    const kept: [string, Date?][] = [
      [`.x.tar.smart-${live()}.tmp`],
      [`.x.tar.smart-${uuid}`], // untagged but fresh: an earlier version may still be writing it
      [`.x.tar.smart-new-${dead()}`], // a root filesystem's, swept by its own writer
      ['.x.tar.smart-pull.json'],
      ['.x.tar.smart-lock'],
      ['x.tar'],
      [`y.tar.smart-${uuid}.tmp`, twoDaysAgo], // another file's
    ];
    for (const [name, when] of [...gone, ...kept]) await touch(path.join(dir, name), when);
    const cleaned = await sweepAside(path.join(dir, 'x.tar'));
    expect(cleaned.map((c) => path.basename(c.path)).sort()).toEqual(gone.map(([n]) => n).sort());
    expect((await fs.readdir(dir)).sort()).toEqual(kept.map(([n]) => n).sort());
  });

  it('a pull into docker-archive:, oci-archive: and oci: removes what a killed pull into it left, and says so', async () => {
    const fx = fixtures();
    const dir = await tempDir('smart-aside-');
    const pull = async (name: string) => {
      const dest = (await openDestination(parseImageName(name), ctx)) as BlobDestination;
      const summary = await copy(await openSource(parseImageName(`oci:${fx.paths.ociBasic}:latest`), ctx), dest, { platform: hostPlatform(), jobs: 2 });
      // A whole-image writer reports it in its details, a blob destination when asked (as `smart pull --json` does).
      return (summary.details?.['cleaned'] ?? (await dest.cleaned?.())) as { path: string; bytes: number }[] | undefined;
    };

    const archive = path.join(dir, 'a.tar');
    await touch(path.join(dir, `.a.tar.smart-${dead()}.tmp`));
    expect(await pull(`docker-archive:${archive}`)).toEqual([{ path: path.join(dir, `.a.tar.smart-${dead()}.tmp`), bytes: 1 }]);

    const ociArchive = path.join(dir, 'o.tar');
    await fs.mkdir(path.join(dir, `.o.tar.smart-${dead()}`));
    await touch(path.join(dir, `.o.tar.smart-${dead()}`, 'oci-layout'));
    expect(await pull(`oci-archive:${ociArchive}`)).toEqual([{ path: path.join(dir, `.o.tar.smart-${dead()}`), bytes: 1 }]);

    // A layout, which other machines may write too: an earlier boot's run may be a twin machine's
    // live one (see leftovers.ts), and stays for a day; one gone on this boot goes.
    const layout = path.join(dir, 'layout');
    await pull(`oci:${layout}:one`);
    const ended = await endedRun();
    const left = [`.smart-tmp-${ended}`, `index.json.tmp-${ended}`, `blobs/sha256/${'a'.repeat(64)}.tmp-${ended}`];
    const running = [`.smart-tmp-${live()}`, `.smart-tmp-${dead()}`, `blobs/sha256/${'b'.repeat(64)}.tmp-${dead()}`];
    for (const name of [...left, ...running]) await touch(path.join(layout, name));
    expect((await pull(`oci:${layout}:two`))!.map((c) => path.relative(layout, c.path)).sort()).toEqual([...left].sort());
    for (const name of running) await fs.rm(path.join(layout, name));
    expect((await fs.readdir(dir)).sort()).toEqual(['a.tar', 'layout', 'o.tar']);
    expect((await fs.readdir(layout)).sort()).toEqual(['blobs', 'index.json', 'oci-layout']);
  });
});

