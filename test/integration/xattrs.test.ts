/**
 * Extended attributes in layers: a file capability (`setcap cap_net_raw+ep`, as ping and
 * newuidmap carry in Fedora's images) and a user attribute, written into the layer by GNU tar
 * `--xattrs`. A root filesystem or bundle smart pulls has them as umoci's unpacking has them
 * (getcap reads the capability), cold and warm from the layer store (copied, or --link); a user
 * who may not set a capability gets the rest of the tree and one warning, as umoci's rootless
 * unpacking. Needs root (setcap), setpriv and the native addon (Node has no call for xattrs).
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { nativeBinding } from '../../src/pipeline/native.js';
import { writeImageOfTars } from '../harness/images.js';
import { run, runOk, smart, smartBin } from '../harness/run.js';
import { haveTools, inCI, isRoot } from '../harness/tools.js';
import { tempDir } from '../harness/tmp.js';
import { xattrsOf } from '../harness/xattrs.js';

describe('extended attributes and file capabilities', () => {
  let work: string;
  let image: string;
  /** What umoci's unpacking gives: getcap's line for busybox, and the note's attributes. */
  let oracle: { cap: string; note: Record<string, Buffer> };
  const ready = isRoot && haveTools('umoci', 'tar', 'setcap', 'getcap', 'setpriv', 'runc', 'busybox') && nativeBinding()?.setXattr !== undefined;

  const skipUnlessReady = (ctx: { skip: () => void }) => {
    if (ready) return false;
    if (inCI) throw new Error('CI=true but this needs root, umoci, tar, setcap, getcap, setpriv, runc, busybox and the native addon');
    ctx.skip();
    return true;
  };

  /** getcap's capability of `file` ('' when it has none). */
  const capOf = async (file: string) => (await runOk('getcap', [file])).stdout.toString().trim().split(/\s+/).slice(1).join(' ');

  beforeAll(async () => {
    work = await tempDir('smart-xattrs-');
    if (!ready) return;
    const tree = path.join(work, 'tree');
    mkdirSync(path.join(tree, 'bin'), { recursive: true });
    mkdirSync(path.join(tree, 'etc'));
    // busybox (static), so that runc can run it in the pulled bundle.
    const busybox = (await runOk('sh', ['-c', 'command -v busybox'])).stdout.toString().trim();
    await fs.copyFile(busybox, path.join(tree, 'bin', 'busybox'));
    await runOk('setcap', ['cap_net_raw+ep', path.join(tree, 'bin', 'busybox')]);
    // Read-only, as many files in images are: a user attribute needs write permission to be set.
    writeFileSync(path.join(tree, 'etc', 'note'), 'note\n', { mode: 0o444 });
    // Not UTF-8, as a capability's value is not: the bytes must come through as they are.
    expect(nativeBinding()!.setXattr!(Buffer.from(path.join(tree, 'etc', 'note')), Buffer.from('user.note'), Buffer.from([0x01, 0xff, 0x00, 0x7f]))).toBe(0);
    const layer = path.join(work, 'layer.tar');
    await runOk('tar', ['--xattrs', '--xattrs-include=*', '--format=posix', '--sort=name', '--mtime=@1700000000', '--owner=0', '--group=0', '--numeric-owner', '-C', tree, '-cf', layer, '.']);
    image = path.join(work, 'image');
    await writeImageOfTars(image, [await fs.readFile(layer)]);
    const bundle = path.join(work, 'umoci');
    await runOk('umoci', ['unpack', '--image', `${image}:latest`, bundle]);
    oracle = { cap: await capOf(path.join(bundle, 'rootfs', 'bin', 'busybox')), note: await xattrsOf(path.join(bundle, 'rootfs', 'etc', 'note')) };
  });

  it('umoci unpacks the capability and the attribute (the oracle is what it should be)', (ctx) => {
    if (skipUnlessReady(ctx)) return;
    expect(oracle.cap).toBe('cap_net_raw=ep');
    expect(oracle.note).toEqual({ 'user.note': Buffer.from([0x01, 0xff, 0x00, 0x7f]) });
  });

  it('rootfs: and bundle:, cold and then warm from the layer store (copied or --link), carry them as umoci does', async (ctx) => {
    if (skipUnlessReady(ctx)) return;
    const cacheHome = path.join(work, 'cache');
    const pulls: [string, string[]][] = [
      ['rootfs', ['--keep-layers']],
      ['bundle', []],
      ['rootfs', ['--link']],
      ['rootfs', ['--no-keep-layers']],
    ];
    for (const [i, [kind, flags]] of pulls.entries()) {
      const dest = path.join(work, `out-${i}`);
      const r = await smart(['pull', ...flags, `oci:${image}`, `${kind}:${dest}`], { cacheHome });
      expect(r.code, r.stderr).toBe(0);
      expect(r.stderr).not.toMatch(/warning/i);
      const root = kind === 'bundle' ? path.join(dest, 'rootfs') : dest;
      expect(await capOf(path.join(root, 'bin', 'busybox')), `${kind} ${flags.join(' ')}`).toBe(oracle.cap);
      expect(await xattrsOf(path.join(root, 'etc', 'note')), `${kind} ${flags.join(' ')}`).toEqual(oracle.note);
    }
  });

  it('runc runs the bundle, and a process of an unprivileged user started from the file has its capability', async (ctx) => {
    if (skipUnlessReady(ctx)) return;
    const bundle = path.join(work, 'runc-bundle');
    const pull = await smart(['pull', `oci:${image}`, `bundle:${bundle}`], { cacheHome: path.join(work, 'cache-runc') });
    expect(pull.code, pull.stderr).toBe(0);
    // The image has no command of its own: the process is busybox reading its own capabilities, as nobody.
    const configFile = path.join(bundle, 'config.json');
    const config = JSON.parse(await fs.readFile(configFile, 'utf8')) as { process: Record<string, unknown> };
    config.process = { ...config.process, args: ['/bin/busybox', 'cat', '/proc/self/status'], cwd: '/', user: { uid: 65534, gid: 65534 } };
    await fs.writeFile(configFile, JSON.stringify(config));
    const name = `smart-xattrs-${process.pid}-${Date.now()}`;
    const state = path.join(work, 'runc-state');
    const r = await run('runc', ['--root', state, 'run', '--bundle', bundle, name]);
    await run('runc', ['--root', state, 'delete', '--force', name]);
    expect(r.code, r.stderr).toBe(0);
    const capEff = /^CapEff:\s*([0-9a-f]+)$/m.exec(r.stdout.toString())?.[1];
    // CAP_NET_RAW is capability 13; nothing else is effective for uid 65534.
    expect(capEff).toBe((1 << 13).toString(16).padStart(16, '0'));
  });

  it('a user who may not set a capability gets the rest, and one warning that says why', async (ctx) => {
    if (skipUnlessReady(ctx)) return;
    const home = path.join(work, 'user');
    await fs.mkdir(home);
    await fs.chown(home, 65534, 65534);
    await run('chmod', ['-R', 'a+rX', work]);
    const dest = path.join(home, 'tree');
    const r = await run('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', 'env', '-i', `PATH=${process.env.PATH}`, `HOME=${home}`, `XDG_CACHE_HOME=${home}/cache`, process.execPath, smartBin, 'pull', `oci:${image}:latest`, `rootfs:${dest}`]);
    expect(r.code, r.stderr).toBe(0);
    const warnings = r.stderr.split('\n').filter((l) => l.startsWith('warning: '));
    expect(warnings).toEqual([expect.stringMatching(/^warning: layer sha256:[0-9a-f]{12} of oci:.*: 1 extended attribute\(s\) not set: security\.capability: EPERM \(not permitted to this user\)$/)]);
    expect(await capOf(path.join(dest, 'bin', 'busybox'))).toBe('');
    expect(await xattrsOf(path.join(dest, 'etc', 'note'))).toEqual(oracle.note);
    expect((await fs.stat(path.join(dest, 'etc', 'note'))).mode & 0o7777).toBe(0o444);
    // Warm, from the layer store that pull filled: its copy of the file has the attribute too.
    const warm = path.join(home, 'warm');
    const again = await run('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', 'env', '-i', `PATH=${process.env.PATH}`, `HOME=${home}`, `XDG_CACHE_HOME=${home}/cache`, process.execPath, smartBin, 'pull', `oci:${image}:latest`, `rootfs:${warm}`]);
    expect(again.code, again.stderr).toBe(0);
    expect(again.stderr.split('\n').filter((l) => l.startsWith('warning: '))).toEqual(warnings);
    expect(await xattrsOf(path.join(warm, 'etc', 'note'))).toEqual(oracle.note);
  });
});
