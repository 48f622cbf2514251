/**
 * Owners of leftovers, told apart with real processes: this one, a child that runs, the same child
 * once killed, a PID taken by another process, another boot, another machine; and a store's
 * temporary files, which other machines may be writing (another boot is no proof of a dead writer).
 */
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { FsDriver } from '../../src/storage/fs-driver.js';
import { LEFTOVER_MAX_AGE_MS, currentOwner, isStale, ownerState, ownerTag, parseOwnerTag } from '../../src/storage/leftovers.js';

const startOf = (pid: number) => Number(readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ')[19]);

describe('leftover owners', () => {
  it('a tag reads back as the owner it names, and the rest of the name is kept apart', () => {
    const me = currentOwner();
    expect(parseOwnerTag(`${ownerTag()}-0a1b2c3d`)).toEqual({ owner: me, rest: '-0a1b2c3d' });
    expect(parseOwnerTag(ownerTag())).toEqual({ owner: me, rest: '' });
    expect(parseOwnerTag('12345-0a1b2c3d-1111-2222-3333-444455556666')).toBeUndefined(); // a bare PID and a UUID
    expect(parseOwnerTag('not a tag')).toBeUndefined();
  });

  it.skipIf(process.platform !== 'linux')('running, gone once killed, gone when the PID is another process, another boot; unknown on another machine, and of another boot in a shared store', async () => {
    const me = currentOwner();
    expect(ownerState(me)).toBe('running');
    expect(ownerState({ ...me, start: me.start + 1 })).toBe('gone'); // this PID, but not this process
    const child = spawn(process.execPath, ['-e', 'setTimeout(() => undefined, 60_000)'], { stdio: 'ignore' });
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    try {
      const owner = { ...me, pid: child.pid!, start: startOf(child.pid!) };
      expect(ownerState(owner)).toBe('running');
      expect(isStale(owner, 10 * LEFTOVER_MAX_AGE_MS)).toBe(false); // however old: it runs
      expect(ownerState({ ...owner, start: owner.start - 1 })).toBe('gone'); // the PID reused
      const otherBoot = { ...owner, boot: me.boot === '00000000' ? '11111111' : '00000000' };
      expect(ownerState(otherBoot)).toBe('gone');
      // Where other machines write too, another boot may be a twin machine's (same host name, the
      // first PID namespace, a cloned machine id): a live run there is not this machine's before a reboot.
      expect(ownerState(otherBoot, { shared: true })).toBe('unknown');
      expect(isStale(otherBoot, 60_000, { shared: true })).toBe(false);
      expect(isStale(otherBoot, LEFTOVER_MAX_AGE_MS + 1, { shared: true })).toBe(true);
      expect(ownerState(owner, { shared: true })).toBe('running');
      const elsewhere = { ...owner, machine: me.machine === '00000000' ? '11111111' : '00000000' };
      expect(ownerState(elsewhere)).toBe('unknown');
      expect(isStale(elsewhere, 60_000)).toBe(false);
      expect(isStale(elsewhere, LEFTOVER_MAX_AGE_MS + 1)).toBe(true);
      child.kill('SIGKILL');
      await exited;
      // Reaped: the PID is free (or, rarely, already another process's: gone either way).
      expect(ownerState(owner)).toBe('gone');
      expect(isStale(owner, 0)).toBe(true);
      expect(isStale(owner, 0, { shared: true })).toBe(true); // this boot's: told for certain anywhere
    } finally {
      child.kill('SIGKILL');
    }
  });
});

describe("a file: store's temporary files", () => {
  it('of a writer of another boot are left for a day (a twin machine may be writing them); of a writer gone on this boot, removed', async () => {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'smart-leftovers-'));
    try {
      const me = currentOwner();
      const twin = ownerTag({ ...me, boot: me.boot === '00000000' ? '11111111' : '00000000' });
      const ended = spawn(process.execPath, ['-e', '0']);
      await new Promise((resolve) => ended.once('exit', resolve));
      const dead = ownerTag({ ...me, pid: ended.pid!, start: 1 });
      const blob = 'blobs/sha256/ab/abab/data';
      await fs.mkdir(path.join(dir, path.dirname(blob)), { recursive: true });
      for (const owner of [twin, dead]) await fs.writeFile(path.join(dir, `${blob}.tmp-${owner}-0a1b2c3d`), 'partial');
      const cleaned = await new FsDriver(dir).removeStaleTemporaries(path.dirname(blob));
      expect(cleaned.map((c) => path.basename(c.path))).toEqual([`data.tmp-${dead}-0a1b2c3d`]);
      expect(await fs.readdir(path.join(dir, path.dirname(blob)))).toEqual([`data.tmp-${twin}-0a1b2c3d`]);
    } finally {
      await fs.rm(dir, { recursive: true, force: true });
    }
  });
});

describe("a push's sweep of the uploads killed pushes left", () => {
  it('that fails is a warning once the push succeeded (cleaned), and nothing before: a failed push says its own error alone', async () => {
    const { DistributionDestination } = await import('../../src/transports/distribution/adapters.js');
    type Store = ConstructorParameters<typeof DistributionDestination>[0];
    const store = { name: 's3://b/r', removeStaleUploads: () => Promise.reject(new Error('bucket "b" does not exist')), leftoversRemoved: () => [] };
    const warnings: string[] = [];
    const dest = new DistributionDestination(store as unknown as Store, { registry: '', repository: 'team/app', tag: '2' }, { onWarning: (m) => warnings.push(m) });
    dest.prepare();
    await new Promise((resolve) => setImmediate(resolve));
    expect(warnings).toEqual([]);
    expect(await dest.cleaned()).toEqual([]);
    expect(warnings).toEqual([`${dest.name}: could not remove the leftovers of killed pushes: bucket "b" does not exist`]);
  });
});
