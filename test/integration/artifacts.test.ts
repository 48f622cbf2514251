/**
 * What is not a plain container image, beside skopeo and the stock registry:
 * - artifacts (a manifest whose config is not an image config, or whose layers are not layers: an
 *   SBOM, a Helm chart, a cosign-style signature) are copied as they are into a registry, a
 *   `file:` store and a layout, byte for byte as skopeo copies them; unpacking one is refused in
 *   one line, leaving nothing;
 * - a manifest rewritten on the way (its uncompressed layer gzipped) keeps `subject` and
 *   `artifactType`, so a signature still names what it signs;
 * - an index entry that names no platform (optional in the image spec) is the image a pull takes
 *   when nothing else matches, as containerd takes it.
 */
import { createHash } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startRegistry, type RunningRegistry } from '../harness/registry.js';
import { runOk, smart } from '../harness/run.js';
import { haveTools, inCI } from '../harness/tools.js';
import { tempDir } from '../harness/tmp.js';
import { describeTree, listAll } from '../harness/tree.js';

const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');

interface Desc {
  mediaType: string;
  digest: string;
  size: number;
  annotations?: Record<string, string>;
  platform?: { os: string; architecture: string };
}

/** A layout under construction: blobs written as they are given, `index.json` at the end. */
class Layout {
  private readonly entries: Desc[] = [];
  constructor(readonly dir: string) {}

  async init(): Promise<this> {
    await fs.mkdir(path.join(this.dir, 'blobs', 'sha256'), { recursive: true });
    await fs.writeFile(path.join(this.dir, 'oci-layout'), '{"imageLayoutVersion":"1.0.0"}');
    return this;
  }

  async blob(bytes: Buffer | string, mediaType: string): Promise<Desc> {
    const b = Buffer.from(bytes);
    const hex = sha256(b);
    await fs.writeFile(path.join(this.dir, 'blobs', 'sha256', hex), b);
    return { mediaType, digest: `sha256:${hex}`, size: b.length };
  }

  async manifest(doc: object, tag?: string): Promise<Desc> {
    const mediaType = (doc as { mediaType?: string }).mediaType ?? 'application/vnd.oci.image.manifest.v1+json';
    const d = await this.blob(JSON.stringify(doc), mediaType);
    if (tag) this.entries.push({ ...d, annotations: { 'org.opencontainers.image.ref.name': tag } });
    return d;
  }

  async close(): Promise<void> {
    await fs.writeFile(path.join(this.dir, 'index.json'), JSON.stringify({ schemaVersion: 2, manifests: this.entries }));
  }
}

const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
const OCI_CONFIG = 'application/vnd.oci.image.config.v1+json';

/** An uncompressed layer of one file. */
function oneFileTar(dir: string, name: string, content: string): Buffer {
  execFileSync('sh', ['-c', `mkdir -p "$1" && printf %s "$2" > "$1/$3"`, 'sh', dir, content, name]);
  return execFileSync('tar', ['-C', dir, '--sort=name', '--mtime=@1700000000', '--owner=0', '--group=0', '--numeric-owner', '-cf', '-', name]);
}

describe('artifacts, subjects and entries without a platform', () => {
  const ready = haveTools('docker-registry', 'skopeo', 'umoci', 'tar');
  let work: string;
  let registry: RunningRegistry;
  let layout: Layout;
  let imageTar: Buffer;

  beforeAll(async () => {
    if (!ready) return;
    work = await tempDir('smart-artifacts-');
    await fs.mkdir(path.join(work, 'registry'));
    registry = await startRegistry(path.join(work, 'registry'), work);
    layout = await new Layout(path.join(work, 'src')).init();
    const empty = await layout.blob('{}', 'application/vnd.oci.empty.v1+json');
    // An SBOM as the OCI 1.1 guidance makes one: the empty config, an artifactType.
    await layout.manifest(
      { schemaVersion: 2, mediaType: OCI_MANIFEST, artifactType: 'application/vnd.example.sbom+json', config: empty, layers: [await layout.blob('{"sbom":1}', 'application/vnd.example.sbom+json')] },
      'sbom',
    );
    // A Helm chart: its own config type.
    await layout.manifest(
      {
        schemaVersion: 2,
        mediaType: OCI_MANIFEST,
        config: await layout.blob('{"name":"chart","version":"1.0.0"}', 'application/vnd.cncf.helm.config.v1+json'),
        layers: [await layout.blob('not really a chart', 'application/vnd.cncf.helm.chart.content.v1.tar+gzip')],
      },
      'chart',
    );
    // A signature as cosign writes one: an image config, a layer that is no tar.
    imageTar = oneFileTar(path.join(work, 'tree'), 'hello', 'hello\n');
    const config = await layout.blob(
      JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [`sha256:${sha256(imageTar)}`] } }),
      OCI_CONFIG,
    );
    await layout.manifest(
      { schemaVersion: 2, mediaType: OCI_MANIFEST, config, layers: [await layout.blob('{"critical":{}}', 'application/vnd.dev.cosign.simplesigning.v1+json')] },
      'signature',
    );
    // An image with an uncompressed layer, and a manifest about it (a subject), which a push
    // into a registry rewrites: its layer is gzipped on the way.
    const layer = await layout.blob(imageTar, 'application/vnd.oci.image.layer.v1.tar');
    const image = await layout.manifest({ schemaVersion: 2, mediaType: OCI_MANIFEST, config, layers: [layer] }, 'image');
    await layout.manifest(
      { schemaVersion: 2, mediaType: OCI_MANIFEST, artifactType: 'application/vnd.example.attestation', config, layers: [layer], subject: image, annotations: { kept: 'yes' } },
      'about',
    );
    // An index whose only image names no platform.
    await layout.manifest({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.index.v1+json', manifests: [{ ...image }] }, 'bare');
    await layout.close();
  });

  afterAll(async () => {
    await registry?.stop();
  });

  const skipUnlessReady = (ctx: { skip: () => void }) => {
    if (ready) return false;
    if (inCI) throw new Error('CI=true but docker-registry, skopeo, umoci or tar is missing');
    ctx.skip();
    return true;
  };

  const rawOf = async (ref: string) => (await runOk('skopeo', ['inspect', '--raw', '--tls-verify=false', ref])).stdout.toString();

  for (const tag of ['sbom', 'chart', 'signature']) {
    it(`${tag}: pushed into the registry, into a file: store it serves and pulled into a layout, byte for byte as skopeo copies it`, async (ctx) => {
      if (skipUnlessReady(ctx)) return;
      const source = `oci:${layout.dir}:${tag}`;
      const want = await rawOf(source);
      await runOk('skopeo', ['--insecure-policy', 'copy', '-q', '--dest-tls-verify=false', source, `docker://${registry.host}/skopeo/${tag}:1`]);
      expect(await rawOf(`docker://${registry.host}/skopeo/${tag}:1`)).toBe(want);

      const pushed = await smart(['push', '-q', source, `docker://${registry.host}/smart/${tag}:1`]);
      expect(pushed.code, pushed.stderr).toBe(0);
      expect(await rawOf(`docker://${registry.host}/smart/${tag}:1`)).toBe(want);
      // Into the registry's own storage, served at once.
      const stored = await smart(['push', '-q', source, `file:${registry.root}#stored/${tag}:1`]);
      expect(stored.code, stored.stderr).toBe(0);
      expect(await rawOf(`docker://${registry.host}/stored/${tag}:1`)).toBe(want);
      // Every blob too, as skopeo reads them back.
      const back = path.join(work, `back-${tag}`);
      await runOk('skopeo', ['--insecure-policy', 'copy', '-q', '--src-tls-verify=false', `docker://${registry.host}/stored/${tag}:1`, `oci:${back}:x`]);
      expect(await rawOf(`oci:${back}:x`)).toBe(want);

      const pulled = await smart(['pull', '-q', `docker://${registry.host}/smart/${tag}:1`, `oci:${work}/pulled-${tag}:x`]);
      expect(pulled.code, pulled.stderr).toBe(0);
      expect(await rawOf(`oci:${work}/pulled-${tag}:x`)).toBe(want);
      const again = await smart(['pull', '--json', `docker://${registry.host}/smart/${tag}:1`, `oci:${work}/pulled-${tag}:x`]);
      expect(again.code, again.stderr).toBe(0);
    });
  }

  it('an artifact is not unpacked: one line, exit 1, nothing at the destination', async (ctx) => {
    if (skipUnlessReady(ctx)) return;
    for (const [tag, dest] of [
      ['sbom', `rootfs:${work}/no-rootfs`],
      ['chart', `bundle:${work}/no-bundle`],
      ['signature', `docker-archive:${work}/no.tar`],
    ] as const) {
      const r = await smart(['pull', `oci:${layout.dir}:${tag}`, dest]);
      expect(r.code, dest).toBe(1);
      const lines = r.stderr.toString().trim().split('\n');
      expect(lines, dest).toHaveLength(1);
      expect(lines[0]).toMatch(/^smart: error \[UNSUPPORTED\]: oci:.* is not a container image but an artifact \(".+"\): it can be copied into a registry, a store or a layout, not unpacked or converted$/);
      expect(await listAll(work).then((all) => all.filter((p) => /^no[-.]/.test(p))), dest).toEqual([]);
    }
  });

  it('a manifest whose layer is gzipped on the way keeps its subject, artifactType and annotations', async (ctx) => {
    if (skipUnlessReady(ctx)) return;
    const source = JSON.parse(await rawOf(`oci:${layout.dir}:about`)) as { subject: Desc; artifactType: string; annotations: Record<string, string> };
    for (const dest of [`docker://${registry.host}/smart/about:1`, `file:${registry.root}#stored/about:1`]) {
      const r = await smart(['push', '-q', `oci:${layout.dir}:about`, dest]);
      expect(r.code, r.stderr).toBe(0);
      const name = dest.startsWith('file:') ? 'stored/about' : 'smart/about';
      const got = JSON.parse(await rawOf(`docker://${registry.host}/${name}:1`)) as { layers: Desc[]; subject: Desc; artifactType: string; annotations: Record<string, string> };
      expect(got.layers[0]!.mediaType, dest).toBe('application/vnd.oci.image.layer.v1.tar+gzip');
      expect(got.subject, dest).toEqual(source.subject);
      expect(got.artifactType, dest).toBe(source.artifactType);
      expect(got.annotations, dest).toEqual(source.annotations);
    }
    // skopeo reads the rewritten image whole.
    const out = path.join(work, 'about-skopeo');
    await runOk('skopeo', ['--insecure-policy', 'copy', '-q', '--src-tls-verify=false', `docker://${registry.host}/smart/about:1`, `oci:${out}:x`]);
  });

  it('an index entry without a platform is the image a pull takes: umoci\'s tree', async (ctx) => {
    if (skipUnlessReady(ctx)) return;
    const umoci = path.join(work, 'bare-umoci');
    await runOk('umoci', ['unpack', '--image', `${layout.dir}:bare`, umoci]);
    const r = await smart(['pull', `oci:${layout.dir}:bare`, `rootfs:${work}/bare`]);
    expect(r.code, r.stderr).toBe(0);
    expect(await describeTree(path.join(work, 'bare'))).toEqual(await describeTree(path.join(umoci, 'rootfs')));
    // Its config names the platform: asked for another, the pull says so (as for any image).
    const other = await smart(['pull', '--platform', 'linux/arm64', `oci:${layout.dir}:bare`, `rootfs:${work}/bare-arm`]);
    expect(other.stderr).toMatch(/is a linux\/amd64 image, not linux\/arm64/);
  });
});
