import { execFileSync } from 'node:child_process';
import { mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { SmartError } from '../../src/errors.js';
import type { ContainerConfig, ImageConfig } from '../../src/oci/config.js';
import {
  DEFAULT_PATH,
  imageAnnotations,
  imageEnv,
  makeRuntimeSpec,
  readFileInRoot,
  resolveImageUser,
  type Runner,
} from '../../src/transports/rootfs/runtime-spec.js';

const PASSWD = [
  'root:x:0:0:root:/root:/bin/sh',
  'daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin',
  '# a comment',
  '',
  'app:x:1000:1000:App:/home/app:/bin/sh',
  'svc:x:1001:1001::/srv:/bin/false',
  'broken:x:notanumber:0::/:/bin/sh',
].join('\n');

const GROUP = [
  'root:x:0:root',
  'daemon:x:1:',
  'wheel:x:10:root,app',
  'app:x:1000:',
  'staff:x:50:app, svc',
  'svc:x:1001:',
  'docker:x:999:svc',
].join('\n');

let tmp: string;
let rootfs: string;

beforeEach(async () => {
  tmp = await mkdtemp(path.join(os.tmpdir(), 'smartlayer-spec-'));
  rootfs = path.join(tmp, 'rootfs');
  await mkdir(path.join(rootfs, 'etc'), { recursive: true });
  await writeFile(path.join(rootfs, 'etc/passwd'), PASSWD);
  await writeFile(path.join(rootfs, 'etc/group'), GROUP);
});

afterEach(async () => {
  await rm(tmp, { recursive: true, force: true });
});

function image(config: ContainerConfig = {}, extra: Partial<ImageConfig> = {}): ImageConfig {
  return { architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [] }, config, ...extra };
}

async function specError(p: Promise<unknown>): Promise<SmartError> {
  const e = await p.then(
    () => {
      throw new Error('expected a failure');
    },
    (err: unknown) => err,
  );
  expect(e).toBeInstanceOf(SmartError);
  return e as SmartError;
}

describe('resolveImageUser', () => {
  it('defaults to root with the groups that list root', async () => {
    expect(await resolveImageUser(undefined, rootfs)).toEqual({ uid: 0, gid: 0, additionalGids: [0, 10] });
    expect(await resolveImageUser('', rootfs)).toEqual({ uid: 0, gid: 0, additionalGids: [0, 10] });
  });

  it('resolves a user name with its primary group and supplementary groups', async () => {
    expect(await resolveImageUser('app', rootfs)).toEqual({ uid: 1000, gid: 1000, additionalGids: [10, 50] });
    expect(await resolveImageUser('svc', rootfs)).toEqual({ uid: 1001, gid: 1001, additionalGids: [50, 999] });
    expect(await resolveImageUser('daemon', rootfs)).toEqual({ uid: 1, gid: 1 });
  });

  it('treats a numeric user as a uid, found in passwd or not', async () => {
    expect(await resolveImageUser('1000', rootfs)).toEqual({ uid: 1000, gid: 1000, additionalGids: [10, 50] });
    expect(await resolveImageUser('4242', rootfs)).toEqual({ uid: 4242, gid: 0 });
  });

  it('takes an explicit group and then adds no supplementary groups', async () => {
    expect(await resolveImageUser('app:staff', rootfs)).toEqual({ uid: 1000, gid: 50 });
    expect(await resolveImageUser('app:77', rootfs)).toEqual({ uid: 1000, gid: 77 });
    expect(await resolveImageUser('1000:50', rootfs)).toEqual({ uid: 1000, gid: 50 });
    expect(await resolveImageUser('4242:4343', rootfs)).toEqual({ uid: 4242, gid: 4343 });
    expect(await resolveImageUser('4242:docker', rootfs)).toEqual({ uid: 4242, gid: 999 });
  });

  it('refuses a user name or group name the image does not define', async () => {
    const e = await specError(resolveImageUser('ghost', rootfs));
    expect(e.code).toBe('MANIFEST_INVALID');
    expect(e.message).toBe('image user "ghost" is not in /etc/passwd of the image');
    const g = await specError(resolveImageUser('app:ghosts', rootfs));
    expect(g.code).toBe('MANIFEST_INVALID');
    expect(g.message).toContain('/etc/group');
    // a malformed passwd line is no user
    expect((await specError(resolveImageUser('broken', rootfs))).code).toBe('MANIFEST_INVALID');
  });

  it('works without /etc/passwd and /etc/group for numeric users only', async () => {
    await rm(path.join(rootfs, 'etc'), { recursive: true });
    expect(await resolveImageUser('', rootfs)).toEqual({ uid: 0, gid: 0 });
    expect(await resolveImageUser('123:456', rootfs)).toEqual({ uid: 123, gid: 456 });
    expect((await specError(resolveImageUser('app', rootfs))).code).toBe('MANIFEST_INVALID');
  });

  it('never reads the host through a symlinked /etc/passwd', async () => {
    const host = path.join(tmp, 'host');
    await mkdir(host);
    await writeFile(path.join(host, 'passwd'), 'hostonly:x:4321:4321::/:/bin/sh\n');
    await writeFile(path.join(host, 'group'), 'hostgroup:x:4321:app\n');

    await rm(path.join(rootfs, 'etc/passwd'));
    await symlink(path.join(host, 'passwd'), path.join(rootfs, 'etc/passwd'));
    await rm(path.join(rootfs, 'etc/group'));
    await symlink('../'.repeat(20) + path.join(host, 'group').slice(1), path.join(rootfs, 'etc/group'));
    expect((await specError(resolveImageUser('hostonly', rootfs))).code).toBe('MANIFEST_INVALID');
    expect(await resolveImageUser('4321', rootfs)).toEqual({ uid: 4321, gid: 0 });
    expect(await resolveImageUser('1000:4321', rootfs)).toEqual({ uid: 1000, gid: 4321 });
    expect((await specError(resolveImageUser('1000:hostgroup', rootfs))).code).toBe('MANIFEST_INVALID');

    // the same link resolves inside the rootfs when the target exists there
    await mkdir(path.join(rootfs, host), { recursive: true });
    await writeFile(path.join(rootfs, host, 'passwd'), 'inner:x:777:778::/:/bin/sh\n');
    expect(await resolveImageUser('inner', rootfs)).toEqual({ uid: 777, gid: 778 });
  });

  it('never reads the host through a symlinked /etc', async () => {
    const host = path.join(tmp, 'hostetc');
    await mkdir(host);
    await writeFile(path.join(host, 'passwd'), 'hostonly:x:4321:4321::/:/bin/sh\n');
    await rm(path.join(rootfs, 'etc'), { recursive: true });
    await symlink(host, path.join(rootfs, 'etc'));
    expect((await specError(resolveImageUser('hostonly', rootfs))).code).toBe('MANIFEST_INVALID');
  });

  it('takes an /etc/passwd that is a symlink loop for no file, as a runtime would (ELOOP), not for a broken layer', async () => {
    await rm(path.join(rootfs, 'etc/passwd'));
    await symlink('passwd', path.join(rootfs, 'etc/passwd'));
    expect(await readFileInRoot(rootfs, 'etc/passwd')).toBeNull();
    expect(await resolveImageUser(undefined, rootfs)).toMatchObject({ uid: 0, gid: 0 });
    expect(await resolveImageUser('0', rootfs)).toMatchObject({ uid: 0, gid: 0 });
    expect((await specError(resolveImageUser('app', rootfs))).message).toBe('image user "app" is not in /etc/passwd of the image');
  });

  it('does not hang on a fifo or read a directory as /etc/passwd', async () => {
    await rm(path.join(rootfs, 'etc/passwd'));
    await mkdir(path.join(rootfs, 'etc/passwd'));
    expect(await readFileInRoot(rootfs, 'etc/passwd')).toBeNull();
    expect(await resolveImageUser('5', rootfs)).toEqual({ uid: 5, gid: 0 });
    await rm(path.join(rootfs, 'etc/group'));
    execFileSync('mkfifo', [path.join(rootfs, 'etc/group')]);
    expect(await readFileInRoot(rootfs, 'etc/group')).toBeNull();
    expect(await resolveImageUser('5:6', rootfs)).toEqual({ uid: 5, gid: 6 });
  });
});

describe('imageEnv', () => {
  it('adds PATH first when the image sets none', () => {
    expect(imageEnv(undefined)).toEqual([DEFAULT_PATH]);
    expect(imageEnv(['A=1', 'B=2'])).toEqual([DEFAULT_PATH, 'A=1', 'B=2']);
  });

  it("keeps the image's PATH and lets a later value win", () => {
    expect(imageEnv(['A=1', 'PATH=/opt/bin', 'A=3', 'E='])).toEqual(['PATH=/opt/bin', 'A=3', 'E=']);
  });

  it('drops entries without "=" (runc refuses them) and reads them as unset', () => {
    expect(imageEnv(['A=1', 'B=2', 'A', 'NOPE', 'C=3'])).toEqual([DEFAULT_PATH, 'B=2', 'C=3']);
  });
});

describe('makeRuntimeSpec', () => {
  it('builds runc spec defaults with the image process', async () => {
    const spec = (await makeRuntimeSpec(
      image({
        Entrypoint: ['/docker-entrypoint.sh'],
        Cmd: ['nginx', '-g', 'daemon off;'],
        Env: ['NGINX_VERSION=1.25'],
        WorkingDir: '/srv/app',
        User: 'app',
      }),
      rootfs,
    )) as Record<string, any>;
    expect(spec.ociVersion).toBe('1.0.2-dev');
    expect(spec.process.terminal).toBe(false);
    expect(spec.process.args).toEqual(['/docker-entrypoint.sh', 'nginx', '-g', 'daemon off;']);
    expect(spec.process.env).toEqual([DEFAULT_PATH, 'NGINX_VERSION=1.25']);
    expect(spec.process.env.some((e: string) => e.startsWith('TERM='))).toBe(false);
    expect(spec.process.cwd).toBe('/srv/app');
    expect(spec.process.user).toEqual({ uid: 1000, gid: 1000, additionalGids: [10, 50] });
    expect(spec.process.capabilities.bounding).toContain('CAP_SETUID');
    expect(spec.process.capabilities.bounding).toHaveLength(14);
    expect(spec.process.noNewPrivileges).toBe(false);
    expect(spec.root).toEqual({ path: 'rootfs', readonly: false });
    expect(spec.hostname).toBe('smartlayer');
    expect(spec.mounts.map((m: { destination: string }) => m.destination)).toEqual([
      '/proc',
      '/dev',
      '/dev/pts',
      '/dev/shm',
      '/dev/mqueue',
      '/sys',
      '/sys/fs/cgroup',
    ]);
    expect(spec.linux.namespaces.map((n: { type: string }) => n.type)).toEqual([
      'pid',
      'network',
      'ipc',
      'uts',
      'mount',
      'cgroup',
    ]);
    expect(spec.linux.maskedPaths).toContain('/proc/kcore');
    expect(spec.linux.readonlyPaths).toContain('/proc/sys');
    expect(JSON.parse(JSON.stringify(spec))).toEqual(spec);
  });

  it('uses Cmd alone, Entrypoint alone, or sh', async () => {
    const args = async (c: ContainerConfig) => ((await makeRuntimeSpec(image(c), rootfs)) as any).process.args;
    expect(await args({ Cmd: ['/bin/true'] })).toEqual(['/bin/true']);
    expect(await args({ Entrypoint: ['/bin/app'], Cmd: null })).toEqual(['/bin/app']);
    expect(await args({})).toEqual(['sh']);
    expect(await args({ Entrypoint: [], Cmd: [] })).toEqual(['sh']);
  });

  it('defaults cwd to / and makes a relative WorkingDir absolute', async () => {
    const cwd = async (c: ContainerConfig) => ((await makeRuntimeSpec(image(c), rootfs)) as any).process.cwd;
    expect(await cwd({})).toBe('/');
    expect(await cwd({ WorkingDir: '' })).toBe('/');
    expect(await cwd({ WorkingDir: 'app/' })).toBe('/app/');
  });

  it('honours rootfsPath and fails for an undefined user', async () => {
    const spec = (await makeRuntimeSpec(image(), rootfs, { rootfsPath: 'fs' })) as any;
    expect(spec.root).toEqual({ path: 'fs', readonly: false });
    expect(spec.process.user).toEqual({ uid: 0, gid: 0, additionalGids: [0, 10] });
    expect((await specError(makeRuntimeSpec(image({ User: 'nobody' }), rootfs))).code).toBe('MANIFEST_INVALID');
  });

  describe('for the user who runs it', () => {
    const everyId = () => true;
    const hostRoot: Runner = { uid: 0, gid: 0, maps: everyId };
    const user: Runner = { uid: 1000, gid: 1001, maps: everyId };
    /** Root of `unshare -r`: uid and gid 0 alone are mapped. */
    const rootOfUnshare: Runner = { uid: 0, gid: 0, maps: (uid, gid) => uid === 0 && gid === 0 };
    /** Root of a rootless podman or Docker: 65,536 ids. */
    const rootOfWideNamespace: Runner = { uid: 0, gid: 0, maps: (uid, gid) => uid < 65_536 && gid < 65_536 };

    async function specFor(runner: Runner, c: ContainerConfig = {}) {
      const warnings: string[] = [];
      const spec = (await makeRuntimeSpec(image(c), rootfs, { runner, onWarning: (m) => warnings.push(m) })) as Record<string, any>;
      return { spec, warnings };
    }

    it("root's spec for root, and for root of a namespace that maps the ids it names", async () => {
      const root = await makeRuntimeSpec(image({ User: 'app' }), rootfs);
      for (const runner of [hostRoot, rootOfWideNamespace]) expect(await specFor(runner, { User: 'app' })).toEqual({ spec: root, warnings: [] });
      expect(root.linux).not.toHaveProperty('uidMappings');
    });

    it('a rootless spec for another user, as runc specconv.ToRootless makes it: a user namespace mapping the runner to root', async () => {
      const root = (await makeRuntimeSpec(image(), rootfs)) as Record<string, any>;
      const { spec, warnings } = await specFor(user);
      expect(warnings).toEqual([]);
      // Root's spec but for these: no other field differs.
      const expected = structuredClone(root);
      // The image's user is root, whose groups (0, 10) are left out: runc refuses any in a rootless container.
      expected.process.user = { uid: 0, gid: 0 };
      expected.linux.uidMappings = [{ containerID: 0, hostID: 1000, size: 1 }];
      expected.linux.gidMappings = [{ containerID: 0, hostID: 1001, size: 1 }];
      // The network and cgroup namespaces stay: the container sees loopback alone, as root's.
      expected.linux.namespaces = [{ type: 'pid' }, { type: 'network' }, { type: 'ipc' }, { type: 'uts' }, { type: 'mount' }, { type: 'cgroup' }, { type: 'user' }];
      delete expected.linux.resources;
      // devpts without gid=5, an id the namespace does not map.
      expected.mounts.find((m: { destination: string }) => m.destination === '/dev/pts').options = ['nosuid', 'noexec', 'newinstance', 'ptmxmode=0666', 'mode=0620'];
      expect(spec).toEqual(expected);
    });

    it('a rootless spec for root of a namespace that lacks an id the spec names, mapping its own root', async () => {
      const { spec, warnings } = await specFor(rootOfUnshare);
      expect(warnings).toEqual([]);
      expect(spec.linux.uidMappings).toEqual([{ containerID: 0, hostID: 0, size: 1 }]);
      expect(spec.linux.namespaces.at(-1)).toEqual({ type: 'user' });
      // An image user past the wide namespace's ids.
      const past = await specFor(rootOfWideNamespace, { User: '70000:70000' });
      expect(past.spec.linux.uidMappings).toEqual([{ containerID: 0, hostID: 0, size: 1 }]);
      expect(past.spec.process.user).toEqual({ uid: 0, gid: 0 });
    });

    it('runs another image user as root of the container, and says so', async () => {
      const { spec, warnings } = await specFor(user, { User: 'app' });
      expect(spec.process.user).toEqual({ uid: 0, gid: 0 });
      expect(warnings).toEqual([
        "config.json runs the image's process as root of its user namespace, not as the image's user 1000:1000, which rootless runc cannot map (it maps uid 1000 alone, to root); pull and run as root to keep the image's user",
      ]);
      expect((await specFor(user, { User: '0:50' })).warnings).toHaveLength(1);
    });
  });

  it('annotates from the config, with org.opencontainers.image labels taking precedence', async () => {
    const cfg = image(
      {
        StopSignal: 'SIGQUIT',
        ExposedPorts: { '80/tcp': {}, '443/tcp': {} },
        Labels: {
          'org.opencontainers.image.os': 'labelled-os',
          'org.opencontainers.image.title': 'demo',
          'org.systemd.property.ExecStartPre': 'evil',
          maintainer: 'someone',
        },
      },
      { created: '2024-01-01T00:00:00Z', author: 'me' },
    );
    expect(imageAnnotations(cfg)).toEqual({
      'org.opencontainers.image.os': 'labelled-os',
      'org.opencontainers.image.architecture': 'amd64',
      'org.opencontainers.image.author': 'me',
      'org.opencontainers.image.created': '2024-01-01T00:00:00Z',
      'org.opencontainers.image.stopSignal': 'SIGQUIT',
      'org.opencontainers.image.exposedPorts': '80/tcp,443/tcp',
      'org.opencontainers.image.title': 'demo',
    });
    const spec = (await makeRuntimeSpec(cfg, rootfs)) as any;
    expect(spec.annotations['org.opencontainers.image.title']).toBe('demo');
  });
});
