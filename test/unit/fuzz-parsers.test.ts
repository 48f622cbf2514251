/**
 * Property-based tests of every parser of untrusted input that works on text or JSON: image
 * references and names, manifests, indexes, configs, docker-save manifest.json, platforms,
 * registries.conf, Dockerfiles and .dockerignore. Each input gives a SmartError or a correct
 * result (checked where the parser's contract says what that is), never another exception, and
 * no call takes longer than CALL_MS. Inputs mix grammar fragments with junk so that the parsers
 * go deep. The seed is printed on failure; SMART_FUZZ_SEED replays it (test/harness/fuzz.ts).
 */
import { createHash } from 'node:crypto';
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { SmartError } from '../../src/errors.js';
import { parseImageConfig } from '../../src/oci/config.js';
import { isDigest, parseDigest } from '../../src/oci/digest.js';
import { parseDescriptor, parseManifest } from '../../src/oci/manifest.js';
import { MediaType } from '../../src/oci/mediatypes.js';
import { parsePlatform, pickPlatform } from '../../src/oci/platform.js';
import { formatReference, isValidRepository, isValidTag, parseReference, parseRepositoryReference } from '../../src/oci/reference.js';
import { parseArchiveManifest, selectArchiveEntry } from '../../src/transports/docker-archive/manifest-json.js';
import { parseImageName } from '../../src/transports/all.js';
import {
  parseDockerMirror,
  parseRegistriesConf,
  parseToml,
  pullSources,
  pushDestination,
  simpleTomlDocument,
  type TomlDocument,
  type TomlTable,
} from '../../src/transports/registry/registries-conf.js';
import { collectCopyEntries, createMatcher, indexContext, parseDockerignore } from '../../src/dockerfile/context.js';
import { expandWord, parseDockerfile, parseWords } from '../../src/dockerfile/parser.js';
import { normalizeCreatedBy, normalizeInstruction } from '../../src/dockerfile/history.js';
import { imageAnnotations, makeRuntimeSpec } from '../../src/transports/rootfs/runtime-spec.js';
import { FUZZ_SCALE, anyText, fuzzParams, pieces, total, totalAsync } from '../harness/fuzz.js';
import { tempDir } from '../harness/tmp.js';

const hex = (n: number) => fc.string({ unit: fc.constantFrom(...'0123456789abcdef'), minLength: n, maxLength: n });
const digestLike = fc.oneof(
  hex(64).map((h) => `sha256:${h}`),
  hex(128).map((h) => `sha512:${h}`),
  fc.constantFrom('sha256:../../../../etc/passwd', 'sha256:', 'sha256:ABCDEF', `sha256:${'a'.repeat(63)}`, `sha256:${'a'.repeat(65)}`, 'blake3:abc', 'sha256:a/b', 'sha256:%2e%2e', `sha256:${'a'.repeat(64)}\n`),
  anyText(80),
);

describe('image references and names', () => {
  const refPart = fc.oneof(
    fc.constantFrom('docker.io/', 'localhost:5000/', 'index.docker.io/', '[::1]:5000/', 'registry.example.com/', 'Upper.Host/', 'library/', 'a/', 'a.b/'),
    fc.constantFrom('busybox', 'team/app', 'a__b', 'a--b', 'a..b', 'A', '-x', 'x-', '.', '..', '/', '//'),
    fc.constantFrom(':latest', ':1.0', ':-bad', ':.bad', `:${'t'.repeat(129)}`, ':', '@'),
    digestLike.map((d) => `@${d}`),
    anyText(10),
  );
  const reference = fc.oneof(pieces(refPart, 6), anyText());

  it('parseReference: a SmartError, or a reference that formats and parses back to itself', () => {
    fc.assert(
      fc.property(reference, (s) => {
        const r = total(() => parseReference(s));
        if (r instanceof SmartError) {
          expect(r.code).toBe('INVALID_REFERENCE');
          return;
        }
        expect(isValidRepository(r.repository)).toBe(true);
        if (r.tag !== undefined) expect(isValidTag(r.tag)).toBe(true);
        if (r.digest !== undefined) expect(isDigest(r.digest)).toBe(true);
        expect(parseReference(formatReference(r))).toEqual(r);
      }),
      fuzzParams(600),
    );
  });

  it('parseRepositoryReference and parseImageName: a SmartError or a typed name', () => {
    const transport = fc.constantFrom('oci:', 'oci-archive:', 'docker-archive:', 'file:', 's3://', 'docker://', 'rootfs:', 'bundle:', 'ftp:', '', ':', 's3:', 'docker:');
    const rest = pieces(fc.oneof(refPart, fc.constantFrom('#', '/srv/reg', '-', ':@1', ':@x', 'bucket', '/../', '#demo/app:v1'), anyText(8)), 8);
    fc.assert(
      fc.property(fc.tuple(transport, rest).map(([t, r]) => t + r), reference, (name, repo) => {
        const n = total(() => parseImageName(name));
        if (n instanceof SmartError) expect(n.exitCode).toBe(2);
        else expect(n.raw).toBe(name);
        const r = total(() => parseRepositoryReference(repo));
        if (!(r instanceof SmartError)) expect(isValidRepository(r.repository)).toBe(true);
      }),
      fuzzParams(600),
    );
  });

  it('parsePlatform and parseDigest: a SmartError or a valid value', () => {
    fc.assert(
      fc.property(pieces(fc.oneof(fc.constantFrom('linux', 'amd64', 'arm64', 'v8', '/', 'ARM', 'x86_64', 'armhf'), anyText(6)), 5), digestLike, (p, d) => {
        const platform = total(() => parsePlatform(p));
        if (!(platform instanceof SmartError)) expect(platform.os).toMatch(/^[a-z0-9_.-]+$/);
        const digest = total(() => parseDigest(d));
        if (!(digest instanceof SmartError)) expect(digest).toMatch(/^sha256:[a-f0-9]{64}$/);
      }),
      fuzzParams(400),
    );
  });
});

/** JSON of any shape, and JSON shaped almost like the real thing. */
const jsonish = fc.jsonValue({ maxDepth: 6 });
const weird = fc.oneof(jsonish, fc.constantFrom(-1, 1.5, 2 ** 53, Number.MAX_SAFE_INTEGER, '1', null, true, [], {}), anyText(30));
const descriptorish = fc.record(
  {
    mediaType: fc.oneof(fc.constantFrom(MediaType.OCI_LAYER_GZIP, MediaType.OCI_MANIFEST, MediaType.OCI_CONFIG, MediaType.DOCKER_LAYER_GZIP, ''), weird),
    digest: fc.oneof(digestLike, weird),
    size: fc.oneof(fc.nat(), fc.integer(), weird),
    urls: fc.oneof(fc.array(fc.string()), weird),
    annotations: fc.oneof(fc.dictionary(fc.string(), fc.string()), weird),
    platform: fc.oneof(fc.record({ os: fc.string(), architecture: fc.string() }), weird),
  },
  { requiredKeys: [] },
);
const manifestish = fc.record(
  {
    schemaVersion: fc.oneof(fc.constant(2), fc.constant(1), weird),
    mediaType: fc.oneof(fc.constantFrom(MediaType.OCI_MANIFEST, MediaType.OCI_INDEX, MediaType.DOCKER_MANIFEST, MediaType.DOCKER_MANIFEST_LIST, MediaType.DOCKER_MANIFEST_V1), weird),
    config: fc.oneof(descriptorish, weird),
    layers: fc.oneof(fc.array(descriptorish, { maxLength: 4 }), weird),
    manifests: fc.oneof(fc.array(descriptorish, { maxLength: 4 }), weird),
    subject: fc.oneof(descriptorish, weird),
    annotations: fc.oneof(fc.dictionary(fc.string(), fc.string()), weird),
  },
  { requiredKeys: [] },
);
/** Bytes: JSON text, JSON text cut short, or deep nesting. */
const jsonBytes = (shaped: fc.Arbitrary<unknown>) =>
  fc.oneof(
    shaped.map((v) => Buffer.from(JSON.stringify(v) ?? 'null')),
    fc.tuple(shaped, fc.nat()).map(([v, n]) => {
      const b = Buffer.from(JSON.stringify(v) ?? 'null');
      return b.subarray(0, n % (b.length + 1));
    }),
    fc.integer({ min: 1, max: 5000 }).map((d) => Buffer.from(`${'['.repeat(d)}${']'.repeat(d)}`)),
    fc.uint8Array({ maxLength: 300 }).map((a) => Buffer.from(a)),
  );

describe('manifests, indexes, configs', () => {
  it('parseManifest: a SmartError, or a manifest of verified digests and sizes whose digest is its bytes', () => {
    fc.assert(
      fc.property(jsonBytes(manifestish), fc.option(fc.constantFrom(MediaType.OCI_MANIFEST, MediaType.OCI_INDEX, MediaType.DOCKER_MANIFEST, 'text/plain')), (bytes, declared) => {
        const m = total(() => parseManifest(bytes, declared ?? undefined, 'fuzz'));
        if (m instanceof SmartError) return;
        expect(m.digest).toBe(`sha256:${createHash('sha256').update(bytes).digest('hex')}`);
        const descriptors = m.kind === 'index' ? m.index.manifests : [m.manifest.config, ...m.manifest.layers];
        for (const d of descriptors) {
          // Digests name paths in every store: nothing but sha256 and 64 hex digits gets through.
          expect(d.digest).toMatch(/^sha256:[a-f0-9]{64}$/);
          expect(Number.isSafeInteger(d.size) && d.size >= 0).toBe(true);
          expect(typeof d.mediaType).toBe('string');
        }
        if (m.kind === 'index') total(() => pickPlatform(m.index, { os: 'linux', architecture: 'amd64' }, 'fuzz'));
      }),
      fuzzParams(800),
    );
  });

  it('parseDescriptor: a SmartError or a valid descriptor', () => {
    fc.assert(
      fc.property(fc.oneof(descriptorish, weird), (v) => {
        const d = total(() => parseDescriptor(v, 'd'));
        if (!(d instanceof SmartError)) expect(isDigest(d.digest)).toBe(true);
      }),
      fuzzParams(400),
    );
  });

  it('parseImageConfig: a SmartError, or a config with valid diff ids and fields of their types', async () => {
    const configish = fc.record(
      {
        architecture: fc.oneof(fc.constant('amd64'), weird),
        os: fc.oneof(fc.constant('linux'), weird),
        rootfs: fc.oneof(fc.record({ type: fc.oneof(fc.constant('layers'), weird), diff_ids: fc.oneof(fc.array(digestLike, { maxLength: 3 }), weird) }), weird),
        config: fc.oneof(fc.record({ Env: fc.array(fc.string()), Cmd: fc.oneof(fc.array(fc.string()), weird) }, { requiredKeys: [] }), weird),
        history: fc.oneof(fc.array(fc.record({ created_by: weird, empty_layer: weird }, { requiredKeys: [] }), { maxLength: 3 }), weird),
      },
      { requiredKeys: [] },
    );
    const valid = '"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}';
    await fc.assert(
      fc.asyncProperty(jsonBytes(configish), async (bytes) => {
        const c = total(() => parseImageConfig(bytes, 'fuzz'));
        if (c instanceof SmartError) return;
        expect(typeof c.os).toBe('string');
        for (const d of c.rootfs.diff_ids) expect(isDigest(d)).toBe(true);
        // What later code does with a config (history steps, a bundle's process): no throw either.
        for (const h of c.history ?? []) if (!h.empty_layer) total(() => normalizeCreatedBy(h.created_by ?? ''));
        total(() => imageAnnotations(c));
        await totalAsync(() => makeRuntimeSpec(c, '/nonexistent-rootfs'));
        JSON.stringify(c);
      }),
      // Fields of the wrong type went through and broke their readers.
      fuzzParams(600, [
        [Buffer.from(`{${valid},"history":-1}`)],
        [Buffer.from(`{${valid},"history":[null]}`)],
        [Buffer.from(`{${valid},"config":{"Cmd":"sh","Entrypoint":5}}`)],
        [Buffer.from(`{${valid},"config":{"WorkingDir":["/"],"Env":[1]}}`)],
      ]),
    );
  });

  it('parseArchiveManifest and selectArchiveEntry: a SmartError or entries of strings', () => {
    const entry = fc.record(
      {
        Config: fc.oneof(fc.constantFrom('config.json', 'blobs/sha256/abc', '../x'), weird),
        RepoTags: fc.oneof(fc.array(fc.oneof(fc.constantFrom('busybox:latest', 'a/b:c', 'docker.io/library/busybox:1'), weird), { maxLength: 3 }), weird),
        Layers: fc.oneof(fc.array(fc.oneof(fc.constantFrom('layer.tar', 'blobs/sha256/def'), weird), { maxLength: 3 }), weird),
      },
      { requiredKeys: [] },
    );
    const selection = fc.oneof(
      fc.constant({ kind: 'only' as const }),
      fc.nat(5).map((index) => ({ kind: 'index' as const, index })),
      fc.oneof(fc.constantFrom('busybox:latest', 'busybox', 'x:y'), anyText(20)).map((name) => ({ kind: 'name' as const, name })),
    );
    fc.assert(
      fc.property(jsonBytes(fc.oneof(fc.array(entry, { maxLength: 4 }), weird)), selection, (bytes, sel) => {
        const entries = total(() => parseArchiveManifest(bytes, 'docker-archive:fuzz'));
        if (entries instanceof SmartError) return;
        for (const e of entries) {
          expect(typeof e.Config).toBe('string');
          expect(e.Layers.every((l) => typeof l === 'string')).toBe(true);
          expect((e.RepoTags ?? []).every((t) => typeof t === 'string')).toBe(true);
        }
        total(() => selectArchiveEntry(entries, sel, 'docker-archive:fuzz'));
      }),
      fuzzParams(600),
    );
  });
});

describe('registries.conf', () => {
  const toml = pieces(
    fc.oneof(
      fc.constantFrom(
        '\n',
        '[[registry]]\n',
        '[[registry.mirror]]\n',
        '[aliases]\n',
        '[registries.search]\n',
        '[registries.insecure]\n',
        '[registries.block]\n',
        'prefix = ',
        'location = ',
        'insecure = ',
        'blocked = ',
        'mirror-by-digest-only = ',
        'pull-from-mirror = ',
        'unqualified-search-registries = ',
        'short-name-mode = ',
        'registries = ',
        'credential-helpers = ',
        '"docker.io"',
        '"*.example.com"',
        '"localhost:5000/team"',
        '"quay.io/a@sha256:' + 'a'.repeat(64) + '"',
        "'literal'",
        '"""multi\nline"""',
        "'''raw'''",
        '"esc \\u00e9 \\U0001F600 \\x"',
        'true',
        'false',
        '42',
        '-0x1F',
        '1e400',
        '[ "a", "b", ]',
        '[[1,2],[3]]',
        '{ a = 1, b = "x" }',
        '# comment\n',
        'a.b.c = 1\n',
        '"quoted key" = 1\n',
        ' = ',
        '[',
        ']',
        '"',
        '\\',
        '=',
        '.',
      ),
      anyText(6),
    ),
    30,
  );
  const ref = fc.constantFrom('docker.io/library/busybox:latest', 'localhost:5000/team/app@sha256:' + 'b'.repeat(64), 'quay.io/a/b:c');

  it('parseRegistriesConf: a SmartError, or a configuration whose pull and push endpoints resolve', () => {
    fc.assert(
      fc.property(toml, ref, (text, r) => {
        const conf = total(() => parseRegistriesConf(text, 'registries.conf'));
        if (conf instanceof SmartError) {
          expect(conf.code).toBe('USAGE');
          return;
        }
        const reference = parseReference(r);
        total(() => pullSources(conf, reference));
        total(() => pushDestination(conf, reference));
      }),
      // Deep nesting overflowed the stack of the recursive parser.
      fuzzParams(800, [[`a = ${'['.repeat(100_000)}`, 'docker.io/library/busybox:latest'], [`a = ${'{b='.repeat(100_000)}`, 'quay.io/a/b:c']]),
    );
  });

  // The plain files read without smol-toml must read exactly as smol-toml reads them: values and
  // lines. Lines built the way such files are written, from pieces at the edges of what the simple
  // reader takes (escapes, control characters, CR, BOM, dotted, repeated and clashing keys and
  // tables, other value types), so that many texts are taken by it and many just miss.
  const ws = fc.constantFrom('', ' ', '  ', '\t');
  const oddWs = fc.constantFrom('\u00a0', '\x0b', '\r');
  const key = fc.constantFrom('a', 'b-c_1', 'aliases', 'x', 'registries', '"a"', '"a b"', '""', '"k.x"', '"é"', '"x"', '1');
  const oddKey = fc.constantFrom('__proto__', '"__proto__"', "'lit'", 'a.b', 'é', '"a\\"', '"\x01"', '');
  const value = fc.constantFrom('"v"', '""', '"é 😀"', '"tab\there"', '"docker.io/library/busybox"', '"#"', '"="', '"[x]"');
  const oddValue = fc.constantFrom('"\\"', '"\\u00e9"', '"\x00"', '"\x1f"', '"\x7f"', '"a"b"', '"""m"""', "'lit'", '1', 'true', '["a"]', '{ a = "b" }', '"v', 'v"', '');
  const comment = fc.constantFrom('', '#', '# c', '#\t', '# "a" = "b"', '#[x]');
  const oddComment = fc.constantFrom('#\x01', '#\x7f', 'x', '#\r');
  const odd = <T,>(plain: fc.Arbitrary<T>, other: fc.Arbitrary<T>) => fc.oneof({ arbitrary: plain, weight: 12 }, { arbitrary: other, weight: 1 });
  const line = fc.oneof(
    fc.tuple(odd(ws, oddWs), odd(comment, oddComment)).map(([w, c]) => w + c),
    fc
      .tuple(odd(ws, oddWs), odd(fc.constant('['), fc.constantFrom('[[', '')), ws, odd(key, oddKey), ws, odd(fc.constant(']'), fc.constantFrom(']]', '')), ws, odd(comment, oddComment))
      .map((p) => p.join('')),
    { arbitrary: fc.tuple(odd(ws, oddWs), odd(key, oddKey), ws, odd(fc.constant('='), fc.constantFrom('', '==')), ws, odd(value, oddValue), ws, odd(comment, oddComment)).map((p) => p.join('')), weight: 4 },
    { arbitrary: anyText(6), weight: 1 },
  );
  const plainText = fc
    .tuple(fc.constantFrom('', '\ufeff'), fc.array(line, { maxLength: 12 }), fc.constantFrom('\n', '\r\n', '\r'), fc.constantFrom('', '\n', '\r\n', '\r'))
    .map(([bom, lines, eol, last]) => bom + lines.join(eol) + last);

  it('simpleTomlDocument: a document only where smol-toml reads the same values, on the same lines', () => {
    let withKeys = 0;
    fc.assert(
      fc.property(plainText, (text) => {
        const simple = simpleTomlDocument(text);
        if (simple === undefined) return;
        if (Object.keys(simple.root).length > 0) withKeys++;
        const full = parseToml(text, 'f.conf');
        expect(JSON.stringify(simple.root)).toBe(JSON.stringify(full.root));
        const tables = (doc: TomlDocument) => [doc.root, ...Object.values(doc.root).filter((v): v is TomlTable => typeof v === 'object' && !Array.isArray(v))];
        const lines = (doc: TomlDocument) => tables(doc).map((t) => [doc.lineOf(t), ...Object.keys(t).map((k) => doc.lineOf(t, k))]);
        expect(lines(simple)).toEqual(lines(full));
      }),
      fuzzParams(3000, [['\ufeff# c\r\n[aliases]\r\n  "a" = "b" # x\r\nc = "d"\n']]),
    );
    // The generator must give the simple reader documents with keys often enough for the comparison
    // to mean something (~5% of the texts).
    expect(withKeys).toBeGreaterThan(30 * FUZZ_SCALE);
  });

  it('parseDockerMirror: a SmartError or a host', () => {
    fc.assert(
      fc.property(pieces(fc.oneof(fc.constantFrom('http://', 'https://', 'mirror.gcr.io', ':5000', '/v2/', '[::1]'), anyText(6)), 5), (s) => {
        total(() => parseDockerMirror(s));
      }),
      fuzzParams(300),
    );
  });
});

describe('Dockerfiles and .dockerignore', () => {
  const word = fc.oneof(
    fc.constantFrom('busybox', 'alpine:3.19', '$X', '${X:-d}', '${X:+y}', '${X', '$', '"a b"', "'c'", '\\', '`', '.', '/app', '*.js', '[', ']', '{', '}', '--from=build', '--chown=1:1', '--mount=type=cache,target=/x', '--platform=$BUILDPLATFORM', '--link', '<<EOF', '<<-EOT', '&&', '|'),
    anyText(6),
  );
  const line = fc
    .tuple(
      fc.constantFrom('FROM', 'from', 'RUN', 'COPY', 'ADD', 'ENV', 'ARG', 'LABEL', 'WORKDIR', 'USER', 'CMD', 'ENTRYPOINT', 'EXPOSE', 'VOLUME', 'SHELL', 'ONBUILD', 'HEALTHCHECK', 'STOPSIGNAL', 'MAINTAINER', '# escape=`', '# syntax=x', '#', 'BOGUS', ''),
      fc.oneof(pieces(fc.tuple(fc.constant(' '), word).map(([a, b]) => a + b), 6), fc.constantFrom(' ["sh", "-c", "x"]', ' [', ' ["a"', ' ["\\u0000"]', ' a=b c="d e"', ' x=', ' AS build', ' NONE'), anyText(20)),
      fc.constantFrom('\n', '\\\n', '\r\n', '`\n', '\nEOF\n', '\nEOT\n', ''),
    )
    .map(([k, rest, end]) => `${k}${rest}${end}`);
  const dockerfile = fc.array(line, { maxLength: 12 }).map((l) => l.join(''));

  it('parseDockerfile: a SmartError, or stages whose instructions normalise', () => {
    fc.assert(
      fc.property(dockerfile, fc.dictionary(fc.constantFrom('X', 'BASE', 'TARGETPLATFORM'), fc.string({ maxLength: 10 })), (text, buildArgs) => {
        const df = total(() => parseDockerfile(text, 'Dockerfile', { buildArgs }));
        if (df instanceof SmartError) {
          expect(df.code).toBe('USAGE');
          return;
        }
        for (const instr of df.instructions) total(() => normalizeInstruction(instr));
      }),
      // A no-break space after the name of a legacy `LABEL name value` crashed the parser; deeply
      // nested substitutions overflowed the stack.
      fuzzParams(800, [['FROM x\nLABEL a\u00a0 b\n', {}], [`FROM ${'${a:-'.repeat(50_000)}x`, {}]]),
    );
  });

  it('image history: every created_by string gives a step or nothing, quickly', () => {
    const part = fc.oneof(
      fc.constantFrom('/bin/sh -c ', '#(nop) ', ' # buildkit', '|2 A=1 B=2 ', 'RUN ', 'COPY ', 'CMD ', 'ENV ', 'EXPOSE ', 'ADD file:0123abcd in / ', '--mount=type=bind ', '["a" "b"]', '[a b]', 'map[80/tcp:{}]', '"\\UFFFFFFFF"', ' ', '\t', '\n', '\\', '"', "'"),
      anyText(8),
    );
    fc.assert(
      fc.property(pieces(part, 16), (s) => {
        const step = total(() => normalizeCreatedBy(s));
        if (step && !(step instanceof SmartError)) expect(typeof step.instruction).toBe('string');
      }),
      // A long line without `#(nop)` took time quadratic in its length.
      fuzzParams(800, [[`a${' '.repeat(100_000)}b`]]),
    );
  });

  it('parseWords and expandWord: a SmartError or words', () => {
    fc.assert(
      fc.property(pieces(word, 8), fc.constantFrom('\\' as const, '`' as const), (s, escape) => {
        total(() => parseWords(s, escape));
        total(() => expandWord(s, { escape, lookup: (n) => (n === 'X' ? 'x y' : undefined) }));
      }),
      fuzzParams(500),
    );
  });

  /** Docker's way, as this toolkit did it before: the pattern as a backtracking RegExp (slow on some inputs). */
  function dockerRegExp(pattern: string): RegExp | undefined {
    let re = '^';
    let pos = 0;
    let literal = true;
    for (let i = 0; pos < pattern.length; i++) {
      const ch = pattern[pos++]!;
      if (ch === '*') {
        literal = false;
        if (pattern[pos] === '*') {
          pos++;
          if (pattern[pos] === '/') pos++;
          re += pos >= pattern.length ? '[\\s\\S]*' : '([\\s\\S]*/)?';
          if (i === 0 || pos >= pattern.length) return undefined; // the suffix and prefix forms: not compared
        } else re += '[^/]*';
      } else if (ch === '?') {
        re += '[^/]';
        literal = false;
      } else if ('.+()|{}$'.includes(ch)) re += `\\${ch}`;
      else if (ch === '\\') {
        literal = false;
        re += pos < pattern.length ? `\\${pattern[pos++]!}` : '\\\\';
      } else if (ch === '[' || ch === ']') {
        literal = false;
        re += ch;
      } else re += ch;
    }
    return literal ? undefined : new RegExp(`${re}$`);
  }

  it('.dockerignore patterns match as Docker matches them, in linear time', () => {
    const pattern = pieces(fc.constantFrom('a', 'b', '/', '*', '**/', '?', '[a-b]', '[^a]', '[\\]]', '.', '\\a', '^', '$', '+', '(', ']'), 8);
    const path = pieces(fc.constantFrom('a', 'b', '/', '.', '$', '^', '+', ']', '('), 10);
    fc.assert(
      fc.property(pattern, fc.array(path, { maxLength: 6 }), (p, paths) => {
        const m = total(() => createMatcher([p]));
        if (m instanceof SmartError || m.rules.length === 0) return;
        const reference = dockerRegExp(m.rules[0]!.pattern);
        if (!reference) return;
        for (const x of paths) expect(m.rules[0]!.matches(x), `${m.rules[0]!.pattern} ~ ${x}`).toBe(reference.test(x));
      }),
      fuzzParams(1000),
    );
    // Exponential for a backtracking RegExp (seconds at 30 characters), linear here.
    const slow = createMatcher([`${'a*'.repeat(16)}c`]);
    total(() => slow.excluded('a'.repeat(36))); // a backtracking RegExp took 5 s at 34
    total(() => createMatcher([`${'a*'.repeat(40)}c`]).excluded('a'.repeat(4000)));
  });

  it('COPY sources: a SmartError, or the context entries they name', async () => {
    const dir = await tempDir();
    for (const f of ['a.js', 'b.js', 'src/x.ts', 'src/deep/y.ts', '[odd].txt', 'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa']) {
      await mkdir(path.join(dir, path.dirname(f)), { recursive: true });
      await writeFile(path.join(dir, f), f);
    }
    const matcher = createMatcher([]);
    const index = await indexContext(dir, matcher);
    const source = pieces(fc.constantFrom('*', '?', '[', ']', '[a-z]', '[^a]', '\\', 'a', '.js', 'src', '/', '..', '**', 'deep', `${'a*'.repeat(12)}b`), 6);
    await fc.assert(
      fc.asyncProperty(source, async (src) => {
        const entries = await totalAsync(() => collectCopyEntries(dir, [src], matcher, { index }));
        if (!(entries instanceof SmartError)) for (const e of entries) expect(e.source.startsWith('..')).toBe(false);
      }),
      // A malformed wildcard threw a plain Error.
      fuzzParams(300, [['['], ['src/[a-'], ['\\']]),
    );
  });

  it('.dockerignore: a SmartError, or a matcher that answers every path quickly', () => {
    const pattern = pieces(fc.oneof(fc.constantFrom('*', '**', '?', '/', '!', '[a-z]', '[^x]', '[', ']', '\\', '.', '..', 'a', 'b', 'node_modules', '#', '\n', ' '), anyText(3)), 10);
    const paths = fc.array(pieces(fc.constantFrom('a', 'b', 'a/', 'node_modules/', '.', '..', '/', 'x.js', 'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa'), 10), { maxLength: 5 });
    fc.assert(
      fc.property(fc.array(pattern, { maxLength: 6 }).map((l) => l.join('\n')), paths, (text, ps) => {
        const lines = total(() => parseDockerignore(text));
        if (lines instanceof SmartError) return;
        const m = total(() => createMatcher(lines));
        if (m instanceof SmartError) {
          expect(m.code).toBe('USAGE');
          return;
        }
        for (const p of ps) {
          total(() => m.excluded(p));
          total(() => m.sent(p));
          total(() => m.mayIncludeInside(p));
        }
      }),
      fuzzParams(800),
    );
  });
});
