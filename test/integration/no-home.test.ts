/**
 * A user with no home: a container run with a user id of its own (`docker run --user 12345`,
 * OpenShift's random ids) and `$HOME` unset (`env -i` in a CI step). Node's os.homedir() throws
 * then; smart must not. A push or pull runs without a cache directory and says so once; `smart
 * cache`, which keeps its index in one, says what to set; `--cache-dir` or `XDG_CACHE_HOME` gives
 * it one. The commands run as such a user (setpriv, as root or with `sudo -n`; required under CI).
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { layerTar, writeImageOfTars } from '../harness/images.js';
import { run, smartBin, type RunResult } from '../harness/run.js';
import { inCI, isRoot } from '../harness/tools.js';
import { tempDir } from '../harness/tmp.js';

/** A user id the password database does not know, found at run time. */
async function unknownUid(): Promise<number> {
  for (let uid = 54_321; ; uid++) if ((await run('getent', ['passwd', String(uid)])).code !== 0) return uid;
}

describe('a user with no home directory', () => {
  let work: string;
  let image: string;
  let uid = 0;
  let able = false;

  /** Runs smart as `uid`, with no HOME and no XDG_CACHE_HOME, and nothing else but PATH and `env`. */
  const asNobody = (args: string[], env: Record<string, string> = {}): Promise<RunResult> => {
    const command = ['setpriv', `--reuid=${uid}`, `--regid=${uid}`, '--clear-groups', 'env', '-i', `PATH=${process.env.PATH}`, ...Object.entries(env).map(([k, v]) => `${k}=${v}`), process.execPath, smartBin, ...args];
    return isRoot ? run(command[0]!, command.slice(1), { cwd: work }) : run('sudo', ['-n', ...command], { cwd: work });
  };

  beforeAll(async () => {
    work = await tempDir('smart-nohome-');
    // The user the commands run as writes here, and reads the repository (as any user can).
    await fs.chmod(work, 0o777);
    uid = await unknownUid();
    const probe = await (isRoot ? run('setpriv', [`--reuid=${uid}`, '--clear-groups', 'true']) : run('sudo', ['-n', 'setpriv', `--reuid=${uid}`, '--clear-groups', 'true']));
    if (probe.code !== 0) {
      if (inCI) throw new Error(`CI=true but commands cannot run as another user (root or sudo -n, and setpriv): ${probe.stderr}`);
      return;
    }
    able = true;
    image = path.join(work, 'image');
    await writeImageOfTars(image, [await layerTar({ 'etc/hello.txt': 'hello\n' })]);
    await fs.chmod(image, 0o755);
  }, 60_000);

  it('push and pull run without a cache directory and say so once; the image is whole', async (ctx) => {
    if (!able) return ctx.skip();
    const store = path.join(work, 'store');
    const push = await asNobody(['push', `oci:${image}`, `file:${store}#app:1`]);
    expect(push.code, push.stderr).toBe(0);
    const warnings = push.stderr.split('\n').filter((l) => l.startsWith('warning: '));
    expect(warnings).toEqual([
      `warning: no cache directory ($HOME is unset and user ${uid} has no home directory): nothing is kept for the next run; set XDG_CACHE_HOME or pass --cache-dir`,
    ]);
    const pull = await asNobody(['pull', `file:${store}#app:1`, `rootfs:${path.join(work, 'rootfs')}`]);
    expect(pull.code, pull.stderr).toBe(0);
    expect(await fs.readFile(path.join(work, 'rootfs', 'etc', 'hello.txt'), 'utf8')).toBe('hello\n');
    // A registry's credentials and registries.conf are looked for under a home too: none is no crash.
    const registry = await asNobody(['push', `oci:${image}`, 'docker://127.0.0.1:1/app:1']);
    expect(registry.code, registry.stderr).toBe(1);
    expect(registry.stderr).toMatch(/^smart: error \[REGISTRY\]: cannot reach registry 127\.0\.0\.1:1/m);
    expect(registry.stderr).not.toMatch(/\n\s+at /);
  });

  it('smart cache says what to set, and works once given a directory', async (ctx) => {
    if (!able) return ctx.skip();
    const store = path.join(work, 'cache-store');
    expect((await asNobody(['push', `oci:${image}`, `file:${store}#app:1`, '--quiet'])).code).toBe(0);
    const refused = await asNobody(['cache', 'index', `file:${store}`]);
    expect(refused.code, refused.stderr).toBe(2);
    expect(refused.stderr.trim()).toBe(
      `smart: error [USAGE]: smart cache keeps its index in a cache directory, and there is none: $HOME is unset and user ${uid} has no home directory (set XDG_CACHE_HOME or pass --cache-dir)`,
    );
    const given = await asNobody(['cache', 'index', `file:${store}`], { XDG_CACHE_HOME: path.join(work, 'xdg') });
    expect(given.code, given.stderr).toBe(0);
    expect(given.stderr).toMatch(/1 refreshed/);
    const version = await asNobody(['version', '--verbose']);
    expect(version.code, version.stderr).toBe(0);
    expect(version.stdout.toString()).toMatch(/compile cache: off; because no cache directory \(\$HOME is unset/);
  });
});
