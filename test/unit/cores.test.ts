/** The cores pools are sized by: the affinity mask bounded by a cgroup CPU quota, read from a /proc and /sys of the test's making. */
import fs from 'node:fs/promises';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { readCores } from '../../src/pipeline/cores.js';
import { tempDir } from '../harness/tmp.js';

/** A machine: /proc/self's `cgroup` and `mountinfo`, and files under the root, all written as given. */
async function machine(files: Record<string, string>): Promise<{ proc: string; root: string }> {
  const root = await tempDir('smart-cores-');
  for (const [name, text] of Object.entries(files)) {
    await fs.mkdir(path.dirname(path.join(root, name)), { recursive: true });
    await fs.writeFile(path.join(root, name), text);
  }
  return { proc: path.join(root, 'proc', 'self'), root };
}

const V2_MOUNT = '30 25 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate\n';
const V1_MOUNT = (root: string, point = '/sys/fs/cgroup/cpu,cpuacct') => `33 30 0:29 ${root} ${point} rw,nosuid shared:9 - cgroup cgroup rw,cpu,cpuacct\n`;

describe('readCores', () => {
  it('v2: the smallest quota from the process cgroup up, rounded down; "max" is none', async () => {
    const m = await machine({
      'proc/self/cgroup': '0::/kubepods/pod1/ctr\n',
      'proc/self/mountinfo': V2_MOUNT,
      'sys/fs/cgroup/cpu.max': 'max 100000\n',
      'sys/fs/cgroup/kubepods/cpu.max': 'max 100000\n',
      'sys/fs/cgroup/kubepods/pod1/cpu.max': '250000 100000\n',
      'sys/fs/cgroup/kubepods/pod1/ctr/cpu.max': 'max 100000\n',
    });
    expect(readCores(m.proc, 64, m.root)).toEqual({ count: 2, affinity: 64, quota: 2.5 });
  });

  it('v1 in a container: the mount shows the container its own cgroup (mount root = its path)', async () => {
    const m = await machine({
      'proc/self/cgroup': '12:cpu,cpuacct:/docker/abc\n11:memory:/docker/abc\n0::/\n',
      'proc/self/mountinfo': V1_MOUNT('/docker/abc'),
      'sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us': '400000\n',
      'sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us': '100000\n',
    });
    expect(readCores(m.proc, 32, m.root)).toEqual({ count: 4, affinity: 32, quota: 4 });
  });

  it('v1 on a host: -1 is no quota; a parent with one bounds its children', async () => {
    const m = await machine({
      'proc/self/cgroup': '3:cpu,cpuacct:/ci/job7\n',
      'proc/self/mountinfo': V1_MOUNT('/'),
      'sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us': '-1\n',
      'sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us': '100000\n',
      'sys/fs/cgroup/cpu,cpuacct/ci/cpu.cfs_quota_us': '300000\n',
      'sys/fs/cgroup/cpu,cpuacct/ci/cpu.cfs_period_us': '100000\n',
      'sys/fs/cgroup/cpu,cpuacct/ci/job7/cpu.cfs_quota_us': '-1\n',
      'sys/fs/cgroup/cpu,cpuacct/ci/job7/cpu.cfs_period_us': '100000\n',
    });
    expect(readCores(m.proc, 16, m.root)).toEqual({ count: 3, affinity: 16, quota: 3 });
  });

  it('never more than the affinity mask, never less than one', async () => {
    const big = await machine({ 'proc/self/cgroup': '0::/\n', 'proc/self/mountinfo': V2_MOUNT, 'sys/fs/cgroup/cpu.max': '800000 100000\n' });
    expect(readCores(big.proc, 2, big.root)).toEqual({ count: 2, affinity: 2, quota: 8 });
    const small = await machine({ 'proc/self/cgroup': '0::/\n', 'proc/self/mountinfo': V2_MOUNT, 'sys/fs/cgroup/cpu.max': '50000 100000\n' });
    expect(readCores(small.proc, 8, small.root)).toEqual({ count: 1, affinity: 8, quota: 0.5 });
  });

  it('hybrid (v1 cpu and v2 mounted): the smaller of the two', async () => {
    const m = await machine({
      'proc/self/cgroup': '4:cpu:/a\n0::/a\n',
      'proc/self/mountinfo': V2_MOUNT.replace('/sys/fs/cgroup ', '/sys/fs/cgroup/unified ') + V1_MOUNT('/', '/sys/fs/cgroup/cpu').replace('rw,cpu,cpuacct', 'rw,cpu'),
      'sys/fs/cgroup/unified/a/cpu.max': '600000 100000\n',
      'sys/fs/cgroup/cpu/a/cpu.cfs_quota_us': '200000\n',
      'sys/fs/cgroup/cpu/a/cpu.cfs_period_us': '100000\n',
    });
    expect(readCores(m.proc, 8, m.root)).toEqual({ count: 2, affinity: 8, quota: 2 });
  });

  it('nothing readable, garbage, or a cgroup outside the mount: the affinity mask alone', async () => {
    expect(readCores('/nonexistent/proc', 6)).toEqual({ count: 6, affinity: 6 });
    const garbage = await machine({ 'proc/self/cgroup': 'what\n0::/\n', 'proc/self/mountinfo': 'not a mount line\n' + V2_MOUNT, 'sys/fs/cgroup/cpu.max': 'lots 0\n' });
    expect(readCores(garbage.proc, 6, garbage.root)).toEqual({ count: 6, affinity: 6 });
    const outside = await machine({
      'proc/self/cgroup': '3:cpu:/other\n',
      'proc/self/mountinfo': V1_MOUNT('/docker/abc', '/sys/fs/cgroup/cpu'),
      'sys/fs/cgroup/cpu/cpu.cfs_quota_us': '100000\n',
      'sys/fs/cgroup/cpu/cpu.cfs_period_us': '100000\n',
    });
    expect(readCores(outside.proc, 6, outside.root)).toEqual({ count: 6, affinity: 6 });
  });

  it('a mount point with a space, as mountinfo escapes it', async () => {
    const m = await machine({
      'proc/self/cgroup': '0::/\n',
      'proc/self/mountinfo': V2_MOUNT.replace(' /sys/fs/cgroup ', ' /sys/fs/my\\040cgroup '),
      'sys/fs/my cgroup/cpu.max': '100000 100000\n',
    });
    expect(readCores(m.proc, 4, m.root)).toEqual({ count: 1, affinity: 4, quota: 1 });
  });
});
