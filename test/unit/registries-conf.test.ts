/** registries.conf: the TOML subset, the v2 model (and v1 converted), the files read, and pull/push endpoints. */
import fs from 'node:fs/promises';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { SmartError } from '../../src/errors.js';
import { parseReference } from '../../src/oci/reference.js';
import {
  emptyRegistriesConf,
  loadRegistriesConf,
  parseRegistriesConf,
  parseToml,
  pullSources,
  pushDestination,
  type PullSource,
  type RegistriesConf,
  type TomlTable,
} from '../../src/transports/registry/registries-conf.js';
import { tempDir } from '../harness/tmp.js';

const D = `sha256:${'a'.repeat(64)}`;

function thrown(fn: () => unknown): SmartError {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(SmartError);
    return e as SmartError;
  }
  throw new Error('expected an error');
}

async function rejected(p: Promise<unknown>): Promise<SmartError> {
  try {
    await p;
  } catch (e) {
    expect(e).toBeInstanceOf(SmartError);
    return e as SmartError;
  }
  throw new Error('expected a rejection');
}

/** `host/repo` of each source, `!` marking insecure and `~` mirrors: compact to compare. */
function show(sources: PullSource[]): string[] {
  return sources.map((s) => `${s.mirror ? '~' : ''}${s.registry}/${s.repository}${s.insecure ? '!' : ''}`);
}

const conf = (text: string): RegistriesConf => parseRegistriesConf(text, 'test.conf');

describe('the TOML subset', () => {
  it('reads comments, strings, booleans, integers, arrays, tables and arrays of tables', () => {
    const { root } = parseToml(
      [
        '# a comment',
        'title = "a \\"quoted\\" \\u00e9\\tstring" # trailing comment',
        "path = 'C:\\no\\escapes'",
        'yes = true',
        'no = false',
        'n = 1_000',
        'hex = 0xff',
        'neg = -7',
        'list = [',
        '  "one",   # first',
        "  'two',",
        '',
        '  # a comment line inside',
        ']',
        'nested = [[1, 2], ["x"], []]',
        '"quoted key" = 1',
        'dotted.key = "d"',
        '',
        '[table]',
        'k = "v"',
        '[table.sub]',
        'k = 2',
        '',
        '[[items]]',
        'name = "first"',
        '[[items]]',
        'name = "second"',
        'inline = { a = 1, b = "two" }',
        'ml = """',
        'line one',
        'line \\',
        '   two"""',
      ].join('\n'),
      'f.toml',
    );
    expect(JSON.parse(JSON.stringify(root))).toEqual({
      title: 'a "quoted" é\tstring',
      path: 'C:\\no\\escapes',
      yes: true,
      no: false,
      n: 1000,
      hex: 255,
      neg: -7,
      list: ['one', 'two'],
      nested: [[1, 2], ['x'], []],
      'quoted key': 1,
      dotted: { key: 'd' },
      table: { k: 'v', sub: { k: 2 } },
      items: [{ name: 'first' }, { name: 'second', inline: { a: 1, b: 'two' }, ml: 'line one\nline two' }],
    });
  });

  it('accepts CRLF line ends, a BOM and a file without a final newline', () => {
    const { root } = parseToml('\ufeffa = 1\r\n[t]\r\nb = "x"', 'f');
    expect(JSON.parse(JSON.stringify(root))).toEqual({ a: 1, t: { b: 'x' } });
  });

  it('remembers the line of every key and table header', () => {
    const doc = parseToml('a = 1\n\n[[r]]\nx = [\n 1,\n]\ny = 2\n', 'f');
    const r = (doc.root['r'] as Record<string, unknown>[])[0]! as never;
    expect(doc.lineOf(doc.root, 'a')).toBe(1);
    expect(doc.lineOf(r)).toBe(3);
    expect(doc.lineOf(r, 'x')).toBe(4);
    expect(doc.lineOf(r, 'y')).toBe(7);
  });

  it('finds the lines past multi-line strings, in inline tables, and of quoted and dotted keys', () => {
    const doc = parseToml(
      [
        'text = """',
        '[not.a.table]',
        'b = \\"""',
        '""""',
        "raw = '''x = 1",
        "''''",
        '"k\\u00e9y" = 1',
        "'dotted.key' = 2",
        'site.name = "x"',
        '[ "t.1" . sub ]',
        'inline = [',
        '  { a = 1 },',
        '  # a comment',
        '  { b = { c = [1, 2] } },',
        ']',
      ].join('\n'),
      'f.toml',
    );
    const t = (v: unknown) => v as TomlTable;
    expect(doc.lineOf(doc.root, 'raw')).toBe(5);
    expect(doc.lineOf(doc.root, 'kéy')).toBe(7);
    expect(doc.lineOf(doc.root, 'dotted.key')).toBe(8);
    expect(doc.lineOf(t(doc.root['site']), 'name')).toBe(9);
    const sub = t(t(doc.root['t.1'])['sub']);
    expect(doc.lineOf(sub)).toBe(10);
    const inline = sub['inline'] as TomlTable[];
    expect(doc.lineOf(inline[0]!, 'a')).toBe(12);
    expect(doc.lineOf(inline[1]!)).toBe(14);
    expect(doc.lineOf(t(inline[1]!['b']), 'c')).toBe(14);
    expect(JSON.parse(JSON.stringify(doc.root))).toMatchObject({ text: '[not.a.table]\nb = """\n"', raw: "x = 1\n'" });
  });

  it.each([
    ['a = 1\nb = \n', 2, 'invalid value'],
    ['a = 1\n\nb = "unterminated\n', 3, 'control characters are not allowed in strings'],
    ['a = 1\na = 2\n', 2, 'trying to redefine an already defined table or value (at "a")'],
    ['[t]\nx = 1\n[t]\n', 3, 'trying to redefine an already defined table or value (at "t")'],
    ['x = yes\n', 1, 'invalid value (at "yes")'],
    ['x = [\n "a"\n "b"\n]\n', 3, 'expected comma or end of structure'],
    ['x = [\n "a",\n', 3, 'invalid value'],
    ['x = "a" "b"\n', 1, 'each key-value declaration must be followed by an end-of-line'],
    ['\n\n[t\n', 3, 'illegal character in key'],
    ['x = "bad \\q escape"\n', 1, 'unrecognised escape sequence (at "\\\\q")'],
    ['d = 1979-05-27\n', 1, 'dates and times are not supported ("1979-05-27")'],
    ['d = [1, 2]\ne = [\n  "x",\n  1979-05-27 07:32:00Z,\n]\n', 4, 'dates and times are not supported ("1979-05-27 07:32:00Z")'],
    ['= 1\n', 1, 'unexpected end of key'],
    ['a = 1\n[a]\n', 2, 'trying to redefine an already defined table or value'],
    ['[a]\n[[a]]\n', 2, 'trying to redefine an already defined table or value'],
    ['x = 99999999999999999999\n', 1, 'integer value cannot be represented losslessly'],
    [`x = ${'['.repeat(65)}${']'.repeat(65)}\n`, 1, 'excessively nested'],
  ])('refuses %j with the line number', (text, line, message) => {
    const e = thrown(() => parseToml(text, '/etc/x.conf'));
    expect(e.code).toBe('USAGE');
    expect(e.message).toContain(`/etc/x.conf:${line}: `);
    expect(e.message).toContain(message);
  });
});

describe('the registries.conf v2 model', () => {
  it('reads the documented settings', () => {
    const c = conf(`
unqualified-search-registries = ["registry.fedoraproject.org", "docker.io",]
short-name-mode = "enforcing"

[aliases]
"fedora" = "registry.fedoraproject.org/fedora"

[[registry]]
prefix = "docker.io/library"
location = "internal.example.com/dockerhub"
insecure = true
mirror-by-digest-only = false

[[registry.mirror]]
location = "mirror-1.example.com/hub/"
pull-from-mirror = "digest-only"

[[registry.mirror]]
location = "mirror-2.example.com:5000"
insecure = true

[[registry]]
location = "quay.io"
blocked = true
`);
    expect(c.unqualifiedSearchRegistries).toEqual(['registry.fedoraproject.org', 'docker.io']);
    expect(c.shortNameMode).toBe('enforcing');
    expect(c.aliases).toEqual({ fedora: 'registry.fedoraproject.org/fedora' });
    expect(c.registries).toEqual([
      {
        prefix: 'docker.io/library',
        location: 'internal.example.com/dockerhub',
        insecure: true,
        blocked: false,
        mirrorByDigestOnly: false,
        mirrors: [
          { location: 'mirror-1.example.com/hub', insecure: false, pullFromMirror: 'digest-only' },
          { location: 'mirror-2.example.com:5000', insecure: true, pullFromMirror: 'all' },
        ],
        file: 'test.conf',
        line: 8,
      },
      { prefix: 'quay.io', location: 'quay.io', insecure: false, blocked: true, mirrorByDigestOnly: false, mirrors: [], file: 'test.conf', line: 22 },
    ]);
    expect(c.files).toEqual(['test.conf']);
    expect(c.warnings).toEqual([]);
  });

  it('gives the [[registry.mirror]] to the last [[registry]] before it', () => {
    const c = conf('[[registry]]\nlocation = "a.example.com"\n[[registry.mirror]]\nlocation = "m1.example.com"\n[[registry]]\nlocation = "b.example.com"\n[[registry.mirror]]\nlocation = "m2.example.com"\n[[registry.mirror]]\nlocation = "m3.example.com"\n');
    expect(c.registries.map((r) => [r.prefix, r.mirrors.map((m) => m.location)])).toEqual([
      ['a.example.com', ['m1.example.com']],
      ['b.example.com', ['m2.example.com', 'm3.example.com']],
    ]);
  });

  it('accepts the inline-table spelling of registries and mirrors', () => {
    const c = conf('registry = [\n  { location = "a.example.com", mirror = [{ location = "m.example.com" }] },\n]\n');
    expect(c.registries[0]).toMatchObject({ prefix: 'a.example.com', mirrors: [{ location: 'm.example.com', pullFromMirror: 'all' }] });
  });

  it('warns about unknown keys and keeps the first of duplicate prefixes, as containers/image does', () => {
    const c = conf('colour = "blue"\n[[registry]]\nlocation = "a.example.com"\nspeed = 9\n[[registry]]\nlocation = "a.example.com"\ninsecure = false\n');
    expect(c.registries).toHaveLength(1);
    expect(c.warnings).toEqual([
      'test.conf:4: unknown key "speed" in [[registry]] ignored',
      'test.conf:5: [[registry]] with prefix "a.example.com" already defined on line 2; this one is ignored',
      'test.conf:1: unknown key "colour" ignored',
    ]);
  });

  it.each([
    ['[[registry]]\ninsecure = true\n', 1, 'needs a "location" or a "prefix"'],
    ['[[registry]]\nprefix = "example.com/foo"\n', 2, 'needs a "location"'],
    ['[[registry]]\nlocation = "https://example.com"\n', 2, 'URL schemes are not supported'],
    ['[[registry]]\nlocation = "example"\n', 2, 'must start with a registry host'],
    ['[[registry]]\nlocation = "a.example.com:70000/team"\n', 2, 'location "a.example.com:70000/team": port 70000 is not 1-65535'],
    ['[[registry]]\nlocation = "example.com/UPPER"\n', 2, 'invalid repository path'],
    ['[[registry]]\nprefix = "*.example.com/foo"\nlocation = "x.example.com"\n', 2, 'wildcard prefix must be of the form *.example.com'],
    ['[[registry]]\nlocation = "a.example.com"\ninsecure = "yes"\n', 3, '"insecure" must be true or false'],
    ['[[registry]]\nlocation = "a.example.com"\n\n[[registry.mirror]]\ninsecure = true\n', 4, 'needs a "location"'],
    ['[[registry]]\nlocation = "a.example.com"\n[[registry.mirror]]\nlocation = "m.example.com"\npull-from-mirror = "sometimes"\n', 5, 'invalid pull-from-mirror "sometimes"'],
    ['[[registry]]\nlocation = "a.example.com"\nmirror-by-digest-only = true\n[[registry.mirror]]\nlocation = "m.example.com"\npull-from-mirror = "tag-only"\n', 6, 'cannot be set when its [[registry]]'],
    ['[[registry]]\nlocation = "a.example.com"\npull-from-mirror = "all"\n', 3, 'belongs in a [[registry.mirror]]'],
    ['short-name-mode = "strict"\n', 1, 'invalid short-name-mode'],
    ['unqualified-search-registries = "docker.io"\n', 1, 'must be an array of strings'],
    ['[registry]\nlocation = "a.example.com"\n', 1, 'must be an array of tables'],
    ['[[registry]]\nlocation = "a.example.com"\n[[registry]]\nprefix = "a.example.com/x"\nlocation = "a.example.com"\ninsecure = true\n', 3, 'conflicting "insecure"'],
    ['unqualified-search-registries = ["docker.io"]\n[registries.search]\nregistries = ["quay.io"]\n', 1, 'mixing the v1 format'],
  ])('refuses %j at the right line', (text, line, message) => {
    const e = thrown(() => conf(text));
    expect(e.code).toBe('USAGE');
    expect(e.message).toContain(`test.conf:${line}: `);
    expect(e.message).toContain(message);
  });
});

describe('the v1 format', () => {
  it('is converted to v2: search → unqualified-search-registries, insecure and block → [[registry]]', () => {
    const c = conf(`
[registries.search]
registries = ['registry.access.redhat.com', 'docker.io']

[registries.insecure]
registries = ['localhost:5000', 'blocked-and-insecure.example.com']

[registries.block]
registries = ['blocked-and-insecure.example.com', 'evil.example.com/']
`);
    expect(c.unqualifiedSearchRegistries).toEqual(['registry.access.redhat.com', 'docker.io']);
    expect(c.registries.map(({ prefix, location, insecure, blocked, mirrors }) => ({ prefix, location, insecure, blocked, mirrors }))).toEqual([
      { prefix: 'blocked-and-insecure.example.com', location: 'blocked-and-insecure.example.com', insecure: true, blocked: true, mirrors: [] },
      { prefix: 'evil.example.com', location: 'evil.example.com', insecure: false, blocked: true, mirrors: [] },
      { prefix: 'localhost:5000', location: 'localhost:5000', insecure: true, blocked: false, mirrors: [] },
    ]);
    expect(show(pullSources(c, parseReference('localhost:5000/app:1')))).toEqual(['localhost:5000/app!']);
    expect(thrown(() => pullSources(c, parseReference('evil.example.com/x'))).message).toBe('registry evil.example.com is blocked by test.conf');
  });
});

describe('the files read', () => {
  async function write(file: string, text: string): Promise<string> {
    await fs.mkdir(path.dirname(file), { recursive: true });
    await fs.writeFile(file, text);
    return file;
  }
  const reg = (location: string, extra = '') => `[[registry]]\nlocation = "${location}"\n${extra}`;

  async function layout() {
    const root = await tempDir('smart-regconf-');
    const home = path.join(root, 'home');
    const system = path.join(root, 'etc', 'containers', 'registries.conf');
    await fs.mkdir(home, { recursive: true });
    return { root, home, system, userFile: path.join(home, '.config', 'containers', 'registries.conf'), userDir: path.join(home, '.config', 'containers', 'registries.conf.d') };
  }

  it('reads nothing and gives an empty configuration when no file exists', async () => {
    const { home, system } = await layout();
    const c = await loadRegistriesConf({ env: { HOME: home }, systemPath: system });
    expect(c).toEqual(emptyRegistriesConf());
  });

  it('reads the system file, then its drop-ins in name order, then the user drop-ins; later ones win by prefix', async () => {
    const { home, system, userDir } = await layout();
    await write(system, 'unqualified-search-registries = ["docker.io"]\n' + reg('a.example.com') + reg('b.example.com'));
    const sysDir = path.join(path.dirname(system), 'registries.conf.d');
    await write(path.join(sysDir, '20-b.conf'), reg('b.example.com', 'insecure = true\n'));
    await write(path.join(sysDir, '10-a.conf'), 'unqualified-search-registries = ["quay.io"]\n' + reg('a.example.com', 'blocked = true\n'));
    await write(path.join(sysDir, 'ignored.txt'), 'not = toml = at all');
    await fs.mkdir(path.join(sysDir, 'sub.conf'));
    await write(path.join(userDir, '00-user.conf'), reg('c.example.com'));
    const c = await loadRegistriesConf({ env: { HOME: home }, systemPath: system });
    expect(c.files).toEqual([system, path.join(sysDir, '10-a.conf'), path.join(sysDir, '20-b.conf'), path.join(userDir, '00-user.conf')]);
    expect(c.unqualifiedSearchRegistries).toEqual(['quay.io']);
    expect(c.registries.map((r) => `${r.prefix}${r.blocked ? ' blocked' : ''}${r.insecure ? ' insecure' : ''} (${path.basename(r.file)})`)).toEqual([
      'a.example.com blocked (10-a.conf)',
      'b.example.com insecure (20-b.conf)',
      'c.example.com (00-user.conf)',
    ]);
  });

  it('prefers $HOME/.config/containers/registries.conf to the system file, with the user drop-ins only', async () => {
    const { home, system, userFile, userDir } = await layout();
    await write(system, reg('system.example.com'));
    await write(path.join(path.dirname(system), 'registries.conf.d', 'x.conf'), reg('system-dropin.example.com'));
    await write(userFile, reg('user.example.com'));
    await write(path.join(userDir, 'x.conf'), reg('user-dropin.example.com'));
    const c = await loadRegistriesConf({ env: { HOME: home }, systemPath: system });
    expect(c.files).toEqual([userFile, path.join(userDir, 'x.conf')]);
    expect(c.registries.map((r) => r.prefix)).toEqual(['user.example.com', 'user-dropin.example.com']);
  });

  it('reads $CONTAINERS_REGISTRIES_CONF alone (and the registries.conf.d next to it) when set', async () => {
    const { root, home, system, userFile, userDir } = await layout();
    await write(system, reg('system.example.com'));
    await write(userFile, reg('user.example.com'));
    await write(path.join(userDir, 'x.conf'), reg('user-dropin.example.com'));
    const custom = await write(path.join(root, 'custom', 'my.conf'), reg('custom.example.com'));
    await write(path.join(root, 'custom', 'registries.conf.d', 'y.conf'), reg('custom-dropin.example.com'));
    const c = await loadRegistriesConf({ env: { HOME: home, CONTAINERS_REGISTRIES_CONF: custom }, systemPath: system });
    expect(c.registries.map((r) => r.prefix)).toEqual(['custom.example.com', 'custom-dropin.example.com']);
    // The path option wins over the environment.
    const other = await write(path.join(root, 'other.conf'), reg('other.example.com'));
    const o = await loadRegistriesConf({ path: other, env: { HOME: home, CONTAINERS_REGISTRIES_CONF: custom }, systemPath: system });
    expect(o.registries.map((r) => r.prefix)).toEqual(['other.example.com']);
  });

  it('refuses a file named explicitly that does not exist, and errors in any file with its name and line', async () => {
    const { root, home, system } = await layout();
    const missing = path.join(root, 'nope.conf');
    const e = await rejected(loadRegistriesConf({ env: { HOME: home, CONTAINERS_REGISTRIES_CONF: missing }, systemPath: system }));
    expect(e.code).toBe('USAGE');
    expect(e.message).toBe(`${missing}: no such file (named by CONTAINERS_REGISTRIES_CONF)`);

    await write(system, reg('ok.example.com'));
    const bad = await write(path.join(path.dirname(system), 'registries.conf.d', 'bad.conf'), '[[registry]]\nlocation = "ok.example.com"\ninsecure = maybe\n');
    const e2 = await rejected(loadRegistriesConf({ env: { HOME: home }, systemPath: system }));
    expect(e2.message).toContain(`${bad}:3: invalid value (at "maybe")`);
  });

  it('reads the plain files containers-common ships (comments, [aliases]) as it reads any file, lines included', async () => {
    const { home, system } = await layout();
    const sysDir = path.join(path.dirname(system), 'registries.conf.d');
    // The first two take the reader without smol-toml (toml-document.ts); the third, with an escape
    // in a string, goes to smol-toml.
    await write(system, '# unqualified-search-registries = ["example.com"]\n\nshort-name-mode = "permissive"\ncolour = "red" # unknown\n');
    const aliases = await write(path.join(sysDir, '000-shortnames.conf'), '[aliases]\r\n  # almalinux\r\n  "almalinux" = "docker.io/library/almalinux"\r\n  fedora = "registry.fedoraproject.org/fedora"\r\n');
    await write(path.join(sysDir, '010-more.conf'), '[aliases]\n"busybox" = "docker.io/library/busybox" # from Docker Hub\nalpine = "docker.io/library/alp\\u0069ne"\n');
    const c = await loadRegistriesConf({ env: { HOME: home }, systemPath: system });
    expect(c.shortNameMode).toBe('permissive');
    expect(c.aliases).toEqual({
      almalinux: 'docker.io/library/almalinux',
      fedora: 'registry.fedoraproject.org/fedora',
      busybox: 'docker.io/library/busybox',
      alpine: 'docker.io/library/alpine',
    });
    expect(c.warnings).toEqual([`${system}:4: unknown key "colour" ignored`]);
    // A plain file can still be wrong, and is told so on its line.
    await write(aliases, '# shortnames\n[aliases]\n"x" = "y"\n[registries]\n');
    const e = await rejected(loadRegistriesConf({ env: { HOME: home }, systemPath: system }));
    expect(e.message).toBe(`${aliases}:4: a drop-in file must use the v2 format ([[registry]]), not [registries.*]`);
  });

  it('refuses the v1 format in a drop-in file', async () => {
    const { home, system } = await layout();
    const v1 = await write(path.join(path.dirname(system), 'registries.conf.d', 'v1.conf'), '\n[registries.insecure]\nregistries = ["x.example.com"]\n');
    const e = await rejected(loadRegistriesConf({ env: { HOME: home }, systemPath: system }));
    expect(e.message).toBe(`${v1}:2: a drop-in file must use the v2 format ([[registry]]), not [registries.*]`);
  });
});

describe('pull sources', () => {
  it('are the reference itself without a configuration', () => {
    expect(pullSources(emptyRegistriesConf(), parseReference('ghcr.io/o/app:1'))).toEqual([{ registry: 'ghcr.io', repository: 'o/app', insecure: false, mirror: false }]);
  });

  it('rewrite the prefix to the location (docker.io short names included)', () => {
    const c = conf('[[registry]]\nprefix = "docker.io/library"\nlocation = "internal.example.com/dockerhub"\n');
    expect(show(pullSources(c, parseReference('busybox')))).toEqual(['internal.example.com/dockerhub/busybox']);
    expect(show(pullSources(c, parseReference('docker.io/library/busybox:1.36')))).toEqual(['internal.example.com/dockerhub/busybox']);
    // Other Docker Hub namespaces do not match docker.io/library, nor does a longer name that only starts alike.
    expect(show(pullSources(c, parseReference('someone/tool')))).toEqual(['docker.io/someone/tool']);
    expect(show(pullSources(c, parseReference('docker.io/library-extra/x')))).toEqual(['docker.io/library-extra/x']);
  });

  it('take the longest matching prefix', () => {
    const c = conf(`
[[registry]]
prefix = "example.com"
location = "a.example.net"
[[registry]]
prefix = "example.com/team"
location = "b.example.net/t"
[[registry]]
prefix = "example.com/team/app:stable"
location = "c.example.net/pinned"
`);
    expect(show(pullSources(c, parseReference('example.com/other/x')))).toEqual(['a.example.net/other/x']);
    expect(show(pullSources(c, parseReference('example.com/team/app:1')))).toEqual(['b.example.net/t/app']);
    expect(show(pullSources(c, parseReference('example.com/team/app:stable')))).toEqual(['c.example.net/pinned']);
    // A bare host is not a prefix of the same host on another port.
    expect(show(pullSources(c, parseReference('example.com:5000/x')))).toEqual(['example.com:5000/x']);
  });

  it('try the mirrors in order, then the location', () => {
    const c = conf(`
[[registry]]
prefix = "quay.io/team"
location = "quay.io/team"
[[registry.mirror]]
location = "mirror-a.example.com/quay-team"
[[registry.mirror]]
location = "mirror-b.example.com:5000/q"
insecure = true
`);
    const s = pullSources(c, parseReference('quay.io/team/app:1'));
    expect(s).toEqual([
      { registry: 'mirror-a.example.com', repository: 'quay-team/app', insecure: false, mirror: true },
      { registry: 'mirror-b.example.com:5000', repository: 'q/app', insecure: true, mirror: true },
      { registry: 'quay.io', repository: 'team/app', insecure: false, mirror: false },
    ]);
  });

  it('skip digest-only mirrors for pulls by tag, and tag-only mirrors for pulls by digest', () => {
    const c = conf(`
[[registry]]
location = "docker.io"
[[registry.mirror]]
location = "by-digest.example.com"
pull-from-mirror = "digest-only"
[[registry.mirror]]
location = "by-tag.example.com"
pull-from-mirror = "tag-only"
[[registry.mirror]]
location = "always.example.com"

[[registry]]
location = "quay.io"
mirror-by-digest-only = true
[[registry.mirror]]
location = "quay-mirror.example.com"
`);
    expect(show(pullSources(c, parseReference('busybox:1')))).toEqual(['~by-tag.example.com/library/busybox', '~always.example.com/library/busybox', 'docker.io/library/busybox']);
    expect(show(pullSources(c, parseReference(`busybox@${D}`)))).toEqual(['~by-digest.example.com/library/busybox', '~always.example.com/library/busybox', 'docker.io/library/busybox']);
    expect(show(pullSources(c, parseReference('quay.io/a/b:1')))).toEqual(['quay.io/a/b']);
    expect(show(pullSources(c, parseReference(`quay.io/a/b@${D}`)))).toEqual(['~quay-mirror.example.com/a/b', 'quay.io/a/b']);
    // A tag and a digest: the digest is what is pulled.
    expect(show(pullSources(c, parseReference(`quay.io/a/b:1@${D}`)))).toEqual(['~quay-mirror.example.com/a/b', 'quay.io/a/b']);
  });

  it('match *.example.com wildcard prefixes without rewriting the reference, mirrors rewritten after the host', () => {
    const c = conf(`
[[registry]]
prefix = "*.example.com"
insecure = true
[[registry.mirror]]
location = "cache.local:5000/ex"

[[registry]]
prefix = "special.example.com"
location = "special.example.com"
`);
    expect(show(pullSources(c, parseReference('a.b.example.com/team/app:1')))).toEqual(['~cache.local:5000/ex/team/app', 'a.b.example.com/team/app!']);
    expect(show(pullSources(c, parseReference('a.example.com:8443/app:1')))).toEqual(['~cache.local:5000/ex/app', 'a.example.com:8443/app!']);
    // An exact host beats the wildcard; the bare domain and look-alikes are not matched.
    expect(show(pullSources(c, parseReference('special.example.com/app')))).toEqual(['special.example.com/app']);
    expect(show(pullSources(c, parseReference('example.com/app')))).toEqual(['example.com/app']);
    expect(show(pullSources(c, parseReference('a.example.com.evil.net/app')))).toEqual(['a.example.com.evil.net/app']);
  });

  it('put --registry-mirror mirrors first for Docker Hub only, with the same repository path', () => {
    const hub = { dockerHub: ['mirror.gcr.io', 'https://hub-cache.example.com:5000/', 'http://plain.example.com'] };
    expect(pullSources(emptyRegistriesConf(), parseReference('busybox'), hub)).toEqual([
      { registry: 'mirror.gcr.io', repository: 'library/busybox', insecure: false, mirror: true },
      { registry: 'hub-cache.example.com:5000', repository: 'library/busybox', insecure: false, mirror: true },
      { registry: 'plain.example.com', repository: 'library/busybox', insecure: true, mirror: true },
      { registry: 'docker.io', repository: 'library/busybox', insecure: false, mirror: false },
    ]);
    expect(show(pullSources(emptyRegistriesConf(), parseReference('quay.io/a/b'), hub))).toEqual(['quay.io/a/b']);
    // With a configuration: the flag's mirrors, then the configured ones, then the (rewritten) location.
    const c = conf('[[registry]]\nprefix = "docker.io/library"\nlocation = "internal.example.com/hub"\n[[registry.mirror]]\nlocation = "conf-mirror.example.com/lib"\n');
    expect(show(pullSources(c, parseReference('busybox:1'), { dockerHub: ['mirror.gcr.io'] }))).toEqual([
      '~mirror.gcr.io/library/busybox',
      '~conf-mirror.example.com/lib/busybox',
      'internal.example.com/hub/busybox',
    ]);
    expect(thrown(() => pullSources(emptyRegistriesConf(), parseReference('busybox'), { dockerHub: ['https://m.example.com/v2/'] })).message).toContain('invalid registry mirror');
  });

  it('take insecure from the entry of a mirror host, and leave out endpoints on blocked hosts', () => {
    const c = conf(`
[[registry]]
location = "localhost:5000"
insecure = true
[[registry]]
location = "dead.example.com"
blocked = true
[[registry]]
location = "docker.io"
[[registry.mirror]]
location = "dead.example.com"
[[registry.mirror]]
location = "localhost:5000"
`);
    expect(show(pullSources(c, parseReference('busybox')))).toEqual(['~localhost:5000/library/busybox!', 'docker.io/library/busybox']);
  });

  it('refuse a blocked registry, naming the file', () => {
    const c = parseRegistriesConf('[[registry]]\nprefix = "docker.io/library/evil"\nlocation = "docker.io/library/evil"\nblocked = true\n', '/etc/containers/registries.conf');
    const e = thrown(() => pullSources(c, parseReference('evil:latest')));
    expect(e.code).toBe('USAGE');
    expect(e.message).toBe('registry docker.io/library/evil is blocked by /etc/containers/registries.conf');
    expect(e.input).toBe('docker.io/library/evil:latest');
    expect(show(pullSources(c, parseReference('good')))).toEqual(['docker.io/library/good']);
    expect(thrown(() => pushDestination(c, parseReference('evil'))).message).toContain('is blocked by');
  });

  it('normalise a rewrite to Docker Hub as Docker does', () => {
    const c = conf('[[registry]]\nprefix = "old.example.com/mirror"\nlocation = "docker.io"\n');
    expect(show(pullSources(c, parseReference('old.example.com/mirror/busybox:1')))).toEqual(['docker.io/library/busybox']);
  });
});

describe('push destinations', () => {
  it('apply the location rewrite and never a mirror', () => {
    const c = conf('[[registry]]\nprefix = "docker.io/library"\nlocation = "internal.example.com/dockerhub"\ninsecure = true\n[[registry.mirror]]\nlocation = "m.example.com"\n');
    expect(pushDestination(c, parseReference('busybox:1'))).toEqual({ registry: 'internal.example.com', repository: 'dockerhub/busybox', insecure: true });
    expect(pushDestination(c, parseReference('ghcr.io/o/app:1'))).toEqual({ registry: 'ghcr.io', repository: 'o/app', insecure: false });
  });
});
