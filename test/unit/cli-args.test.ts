/**
 * The fast path of the command line (push/pull parsed without commander) must give exactly what
 * commander gives, or decline: every command line here is parsed both ways and compared.
 */
import { describe, expect, it } from 'vitest';
import type { Command } from 'commander';
import { parseTransferArgs } from '../../src/cli/options.js';
import { buildProgram } from '../../src/cli/program.js';

/** What commander hands the push/pull action, or undefined when it refuses the command line. */
async function viaCommander(args: string[]): Promise<{ mode: string; source: string; destination: string; flags: unknown } | undefined> {
  const program = buildProgram();
  let got: { mode: string; source: string; destination: string; flags: unknown } | undefined;
  const quiet = (c: Command): void => {
    c.configureOutput({ writeOut: () => undefined, writeErr: () => undefined });
    c.commands.forEach(quiet);
  };
  quiet(program);
  for (const mode of ['push', 'pull', 'copy']) {
    program.commands
      .find((c) => c.name() === mode)!
      .action(function (this: Command, source: string, destination: string) {
        got = { mode, source, destination, flags: { ...this.opts() } };
      });
  }
  try {
    await program.parseAsync(['node', 'smart', ...args]);
  } catch {
    return undefined;
  }
  return got;
}

const SRC = 'docker-archive:/tmp/img.tar';
const DST = 'file:/srv/registry#team/app:1.0';

// Command lines the fast path must take.
const taken: string[][] = [
  ['push', SRC, DST],
  ['pull', DST, 'oci:/tmp/layout:tag'],
  ['push', '-q', SRC, DST],
  ['push', SRC, DST, '--json', '--quiet', '--debug'],
  ['push', SRC, '--jobs', '4', DST],
  ['push', SRC, DST, '--jobs=8', '--platform', 'linux/arm64/v8', '--all-platforms'],
  ['push', SRC, DST, '--progress', 'json', '--compression', 'zstd', '--compression-level', '3'],
  ['push', SRC, DST, '--progress=none', '--cache-dir', '/tmp/c', '--redis', 'redis://h:1/2'],
  ['push', SRC, DST, '--creds', 'u:p', '--src-creds', 'a:b', '--dest-creds=c:d'],
  ['push', SRC, DST, '--insecure-registry', 'h:5000', '--insecure-registry', 'g', '--cert-dir', '/c', '--registry-mirror', 'm'],
  ['push', SRC, DST, '--stall-timeout', '5', '--timeout', '60', '--s3-endpoint', 'http://s3', '--s3-region', 'eu'],
  ['push', SRC, DST, '--dockerfile', 'Dockerfile', '--context', '.', '--target', 'build', '--build-arg', 'A=1', '--build-arg', 'B=2'],
  ['push', SRC, DST, '--jobs', '2', '--jobs', '3'],
  ['pull', DST, 'rootfs:/tmp/r', '--layer-store', '/tmp/ls', '--link'],
  ['pull', DST, 'bundle:/b', '--force'],
  ['pull', DST, 'rootfs:/r', '--keep-layers'],
  ['pull', DST, 'bundle:/b', '--no-keep-layers'],
  ['pull', DST, 'bundle:/b', '--keep-layers', '--no-keep-layers'],
  ['push', '', DST],
  ['push', SRC, DST, '--platform-mismatch', 'warn', '--digestfile', '/tmp/d', '--authfile', '/tmp/auth.json'],
  ['push', SRC, DST, '--creds-file', '/tmp/c', '--username', 'u', '--password-stdin'],
  ['copy', SRC, DST],
  ['copy', DST, 'rootfs:/tmp/r', '--link', '--compression-level', '3', '--tag-cache-ttl', '5', '-q'],
];

// Command lines it must leave to commander (which then accepts or rejects them).
const declined: string[][] = [
  [],
  ['--help'],
  ['push', '--help'],
  ['push', SRC],
  ['push', SRC, DST, 'extra'],
  ['push', SRC, DST, '--jobs', '0'],
  ['push', SRC, DST, '--jobs', 'x'],
  ['push', SRC, DST, '--jobs'],
  ['push', SRC, DST, '--progress', 'loud'],
  ['push', SRC, DST, '--json=1'],
  ['push', SRC, DST, '--no-such-flag'],
  ['push', SRC, DST, '-x'],
  ['push', SRC, DST, '-qV'],
  ['push', SRC, DST, '--layer-store', '/x'],
  ['push', SRC, DST, '--force'],
  ['push', SRC, DST, '--keep-layers'],
  ['pull', SRC, DST, '--compression', 'gzip'],
  ['pull', DST, 'bundle:/b', '--prune'],
  ['pull', DST, 'bundle:/b', '--prune', '3'],
  ['push', '--', SRC, DST],
  ['push', '-', DST],
  ['push', SRC, DST, '--platform', '--json'],
  ['--json', 'push', SRC, DST],
  ['cache', 'index', DST],
  ['push', SRC, DST, '--platform-mismatch', 'ignore'],
  ['copy', SRC, DST, '--prune'],
  ['completion', 'bash'],
];

describe('parseTransferArgs', () => {
  it.each(taken)('takes %j exactly as commander does', async (...args) => {
    const fast = parseTransferArgs(args);
    expect(fast).toBeDefined();
    expect(fast).toEqual(await viaCommander(args));
  });

  it.each(declined)('leaves %j to commander', (...args) => {
    expect(parseTransferArgs(args)).toBeUndefined();
  });
});
