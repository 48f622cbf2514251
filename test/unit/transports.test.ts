/**
 * The transport map is the one list of transports: the README's table and the CLI's help list
 * exactly its transports, with its forms and help lines, in its order; a mistyped transport is
 * answered with the nearest one.
 */
import fs from 'node:fs';
import os from 'node:os';
import { PassThrough } from 'node:stream';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { EXIT_HELP } from '../../src/cli/options.js';
import { isSmartError } from '../../src/errors.js';
import { openDestination, parseImageName, transportHelp, transportPrefixes, TRANSPORTS } from '../../src/transports/all.js';
import { copyMode, storedReference } from '../../src/ops/transfer.js';
import { fromStdin, toStdout } from '../../src/cli/transfer.js';
import type { Digest } from '../../src/oci/digest.js';
import { repoRoot } from '../harness/run.js';

/** The rows of the README table that lists image names: the first cell (unquoted, unescaped) and the second. */
function readmeTransportRows(): { form: string; what: string }[] {
  const lines = fs.readFileSync(path.join(repoRoot, 'README.md'), 'utf8').split('\n');
  const start = lines.findIndex((l) => /^\| image name/.test(l));
  expect(start).toBeGreaterThan(0);
  const rows: { form: string; what: string }[] = [];
  for (const line of lines.slice(start + 2)) {
    if (!line.startsWith('|')) break;
    const cells = line.split(/(?<!\\)\|/).slice(1, -1).map((c) => c.trim());
    rows.push({ form: cells[0]!.replace(/^`|`$/g, '').replace(/\\\|/g, '|'), what: cells[1]! });
  }
  return rows;
}

/** The "Image names" section of the CLI's help: one transport a line, its form then its help. */
function helpTransportLines(): { form: string; help: string }[] {
  const section = EXIT_HELP.split('\n\n')[0]!.split('\n').filter((l) => /^ {2}\S/.test(l));
  return section.map((l) => {
    const m = /^ {2}(\S+)\s+(.*)$/.exec(l)!;
    return { form: m[1]!, help: m[2]! };
  });
}

function usageError(name: string): { message: string; hint: string } {
  try {
    parseImageName(name);
  } catch (e) {
    if (isSmartError(e)) return { message: e.message, hint: e.hint ?? '' };
    throw e;
  }
  throw new Error(`${name} parsed`);
}

describe('the transport map', () => {
  it('is what the README table lists, form for form, in order', () => {
    expect(readmeTransportRows().map((r) => r.form)).toEqual(TRANSPORTS.map((t) => t.form));
  });

  it('is what the CLI help lists, form and help line for each, in order', () => {
    expect(helpTransportLines()).toEqual(transportHelp());
  });

  it('parses a name of every transport, whose form names it', () => {
    const examples: Record<string, string> = {
      oci: 'oci:/tmp/layout:v1',
      'oci-archive': 'oci-archive:img.tar',
      'docker-archive': 'docker-archive:-',
      docker: 'docker://127.0.0.1:5000/team/app:1',
      file: 'file:/srv/registry#team/app:1',
      s3: 's3://bucket/root#team/app:1',
      rootfs: 'rootfs:./out',
      bundle: 'bundle:./out',
    };
    for (const t of TRANSPORTS) {
      expect(t.form.startsWith(`${t.name}:`)).toBe(true);
      expect(parseImageName(examples[t.name]!).transport).toBe(t.name);
    }
  });

  it('answers an unknown transport with every form, and the nearest transport when one is near', () => {
    const unknown = usageError('ftp:thing');
    expect(unknown.message).toMatch(/unknown transport "ftp"/);
    expect(unknown.hint).not.toMatch(/did you mean/);
    for (const t of TRANSPORTS) expect(unknown.hint).toContain(t.form);
    expect(usageError('ocii:dir').hint).toMatch(/^did you mean "oci:"\?/);
    expect(usageError('OCI:dir').hint).toMatch(/^did you mean "oci:"\?/);
    expect(usageError('docker-achive:img.tar').hint).toMatch(/^did you mean "docker-archive:"\?/);
    expect(usageError('bundel:./out').hint).toMatch(/^did you mean "bundle:"\?/);
    expect(usageError('s4://bucket#a/b').hint).toMatch(/^did you mean "s3:"\?/);
    expect(usageError('no-colon-here').message).toMatch(/no transport/);
  });

  it('refuses a docker:// name that is a registry host alone, not Docker Hub image named after it', () => {
    // Docker reads registry.internal:5000 as library/registry.internal, tag 5000, on Docker Hub,
    // where no such image is: the registry meant would never be asked, and --creds would go to Docker Hub.
    for (const [name, host] of [
      ['docker://registry.internal:5000', 'registry.internal:5000'],
      ['docker://127.0.0.1:6201', '127.0.0.1:6201'],
      ['docker://localhost', 'localhost'],
      ['docker://ghcr.io@sha256:' + 'a'.repeat(64), 'ghcr.io'],
    ]) {
      expect(() => parseImageName(name!)).toThrow(`invalid image name "${name}": it names a registry (${host}) but no repository`);
    }
    expect(parseImageName('docker://busybox:1.36')).toMatchObject({ ref: { registry: 'docker.io', repository: 'library/busybox', tag: '1.36' } });
    expect(parseImageName('docker://localhost:5000/app')).toMatchObject({ ref: { registry: 'localhost:5000', repository: 'app' } });
  });

  it('refuses a file: name with "#" twice unless the root before the last one is a directory that exists', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'smart-hash-'));
    try {
      const typo = `file:${dir}/store#app:1#x`;
      expect(() => parseImageName(typo)).toThrow(`invalid image name "${typo}": "#" twice, and the store root before the last one (${dir}/store#app:1) does not exist`);
      fs.mkdirSync(path.join(dir, 'with#hash'));
      expect(parseImageName(`file:${dir}/with#hash#team/app:1`)).toMatchObject({ root: `${dir}/with#hash`, ref: { repository: 'team/app', tag: '1' } });
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('reads oci-archive:- from stdin and writes it to stdout; ./- names a file "-"', async () => {
    expect(parseImageName('oci-archive:-')).toMatchObject({ transport: 'oci-archive', file: '-' });
    expect(parseImageName('oci-archive:-:v1')).toMatchObject({ transport: 'oci-archive', file: '-', tag: 'v1' });
    const stdout = new PassThrough();
    const chunks: Buffer[] = [];
    stdout.on('data', (c: Buffer) => chunks.push(c));
    const written = new Promise<Buffer>((resolve) => stdout.on('end', () => resolve(Buffer.concat(chunks))));
    const dest = await openDestination(parseImageName('oci-archive:-'), { stdin: process.stdin, stdout });
    if (!('abort' in dest)) throw new Error('not a blob destination');
    await dest.abort();
    stdout.end();
    // What it had begun (the oci-layout member), and no file named "-".
    expect((await written).subarray(0, 10).toString()).toBe('oci-layout');
    expect(fs.existsSync('-')).toBe(false);
    expect(parseImageName('oci-archive:./-')).toMatchObject({ transport: 'oci-archive', file: './-' });
  });

  it("gives shell completion every transport's prefix, and says which are followed by a path", () => {
    const prefixes = transportPrefixes();
    expect(prefixes.map((p) => p.prefix)).toEqual(['oci:', 'oci-archive:', 'docker-archive:', 'docker://', 'file:', 's3://', 'rootfs:', 'bundle:']);
    expect(prefixes.filter((p) => p.takesPath).map((p) => p.prefix)).toEqual(['oci:', 'oci-archive:', 'docker-archive:', 'file:', 'rootfs:', 'bundle:']);
  });

  it('knows stdin and stdout names in the CLI exactly as the map does', () => {
    for (const { prefix } of transportPrefixes()) {
      const t = TRANSPORTS.find((x) => prefix.startsWith(`${x.name}:`))!;
      for (const raw of [`${prefix}-`, `${prefix}-:app:1`, `${prefix}./x`]) {
        let name: ReturnType<typeof parseImageName> | undefined;
        try {
          name = parseImageName(raw);
        } catch {
          name = undefined;
        }
        const stdio = name !== undefined && (t.isStdio as ((n: typeof name) => boolean) | undefined)?.(name) === true;
        expect(toStdout(raw), raw).toBe(stdio && t.capabilities.writesStdout === true);
        expect(fromStdin(raw), raw).toBe(stdio && t.capabilities.readsStdin === true);
      }
    }
  });

  it("answers a push's stored reference and a copy's mode from the transport, not from the name's spelling", () => {
    const d = `sha256:${'ab'.repeat(32)}` as Digest;
    expect(storedReference('docker://127.0.0.1:5000/team/app:1', d)).toBe(`127.0.0.1:5000/team/app@${d}`);
    expect(storedReference('file:/srv/registry#team/app:1', d)).toBe(`file:/srv/registry#team/app@${d}`);
    expect(storedReference('s3://bucket/root#team/app:1', d)).toBe(`s3://bucket/root#team/app@${d}`);
    expect(storedReference('oci:/tmp/layout:v1', d)).toBeUndefined();
    expect(storedReference('docker-archive:-', d)).toBeUndefined();
    for (const name of ['docker://127.0.0.1:5000/team/app:1', 'file:/srv/registry#team/app:1', 's3://bucket#team/app']) expect(copyMode(name)).toBe('push');
    for (const name of ['oci:/tmp/layout', 'oci-archive:img.tar', 'docker-archive:-', 'rootfs:./out', 'bundle:./out']) expect(copyMode(name)).toBe('pull');
  });
});
