/** The pure image model: digests, references, platforms, manifests, image names. */
import { describe, expect, it } from 'vitest';
import { SmartError } from '../../src/errors.js';
import { parseImageConfig } from '../../src/oci/config.js';
import { parseDigest, sha256Digest } from '../../src/oci/digest.js';
import { parseManifest } from '../../src/oci/manifest.js';
import { MediaType } from '../../src/oci/mediatypes.js';
import { parsePlatform, pickPlatform } from '../../src/oci/platform.js';
import { formatReference, parseReference, parseRepositoryReference } from '../../src/oci/reference.js';
import { parseImageName } from '../../src/transports/all.js';
import { parseChallenge } from '../../src/transports/registry/client.js';
import { configKeys, parseCredentials } from '../../src/transports/registry/credentials.js';

const HEX = 'a'.repeat(64);
const D = `sha256:${HEX}`;

function code(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    return (e as SmartError).code;
  }
  return 'no error';
}

describe('digests', () => {
  it('accept sha256 with 64 lowercase hex digits only', () => {
    expect(parseDigest(D)).toBe(D);
    expect(code(() => parseDigest(`sha256:${'A'.repeat(64)}`))).toBe('INVALID_DIGEST');
    expect(code(() => parseDigest('sha256:abc'))).toBe('INVALID_DIGEST');
    expect(code(() => parseDigest(`sha512:${'a'.repeat(128)}`))).toBe('UNSUPPORTED');
    expect(sha256Digest('')).toBe('sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855');
  });
});

describe('references', () => {
  it('apply Docker defaults', () => {
    expect(parseReference('busybox')).toEqual({ registry: 'docker.io', repository: 'library/busybox', tag: 'latest' });
    expect(parseReference('index.docker.io/foo/bar:1')).toEqual({ registry: 'docker.io', repository: 'foo/bar', tag: '1' });
    expect(parseReference('localhost:5000/a/b@' + D)).toEqual({ registry: 'localhost:5000', repository: 'a/b', digest: D });
    expect(parseReference('ghcr.io/o/r:v1@' + D)).toEqual({ registry: 'ghcr.io', repository: 'o/r', tag: 'v1', digest: D });
    expect(parseReference('127.0.0.1:5000/x')).toEqual({ registry: '127.0.0.1:5000', repository: 'x', tag: 'latest' });
    expect(parseReference('[::1]:65535/x')).toEqual({ registry: '[::1]:65535', repository: 'x', tag: 'latest' });
  });

  it('refuse malformed names, tags and digests', () => {
    for (const bad of ['', 'Upper', 'a//b', 'a/b:', 'a/b:-x', `a@sha256:${'z'.repeat(64)}`, 'a_/b', `${'a'.repeat(256)}`, 'localhost:0/x', '127.0.0.1:65536/x', '[::1]:99999/x']) {
      expect(code(() => parseReference(bad)), bad).toBe('INVALID_REFERENCE');
    }
  });

  it('inside a store have no registry and no library/ prefix', () => {
    expect(parseRepositoryReference('demo/app:1.0')).toEqual({ registry: '', repository: 'demo/app', tag: '1.0' });
    expect(parseRepositoryReference('app')).toEqual({ registry: '', repository: 'app', tag: 'latest' });
    expect(formatReference(parseRepositoryReference(`app@${D}`))).toBe(`app@${D}`);
  });
});

describe('platforms', () => {
  const index = {
    schemaVersion: 2 as const,
    manifests: [
      { mediaType: MediaType.OCI_MANIFEST, digest: parseDigest(`sha256:${'1'.repeat(64)}`), size: 1, platform: { os: 'linux', architecture: 'amd64' } },
      { mediaType: MediaType.OCI_MANIFEST, digest: parseDigest(`sha256:${'2'.repeat(64)}`), size: 1, platform: { os: 'linux', architecture: 'arm', variant: 'v6' } },
      { mediaType: MediaType.OCI_MANIFEST, digest: parseDigest(`sha256:${'3'.repeat(64)}`), size: 1, platform: { os: 'linux', architecture: 'arm', variant: 'v7' } },
      { mediaType: MediaType.OCI_MANIFEST, digest: parseDigest(`sha256:${'4'.repeat(64)}`), size: 1, platform: { os: 'linux', architecture: 'arm64', variant: 'v8' } },
      { mediaType: MediaType.OCI_MANIFEST, digest: parseDigest(`sha256:${'5'.repeat(64)}`), size: 1, platform: { os: 'unknown', architecture: 'unknown' } },
    ],
  };

  it('normalise aliases and default variants', () => {
    expect(parsePlatform('linux/x86_64')).toEqual({ os: 'linux', architecture: 'amd64' });
    expect(parsePlatform('linux/aarch64/v8')).toEqual({ os: 'linux', architecture: 'arm64' });
    expect(parsePlatform('linux/arm')).toEqual({ os: 'linux', architecture: 'arm', variant: 'v7' });
    expect(code(() => parsePlatform('linux'))).toBe('USAGE');
  });

  it('pick the exact variant, and arm64 with or without v8', () => {
    expect(pickPlatform(index, parsePlatform('linux/arm/v6')).digest).toMatch(/2{64}$/);
    expect(pickPlatform(index, parsePlatform('linux/arm')).digest).toMatch(/3{64}$/);
    expect(pickPlatform(index, parsePlatform('linux/arm64')).digest).toMatch(/4{64}$/);
    expect(() => pickPlatform(index, parsePlatform('linux/s390x'))).toThrow(/available: linux\/amd64, linux\/arm\/v6, linux\/arm\/v7, linux\/arm64$/);
  });

  it('take an image whose entry names no platform when none matches, as containerd does; never an index or over a match', () => {
    const bare = (n: string, mediaType: string = MediaType.OCI_MANIFEST) => ({ mediaType, digest: parseDigest(`sha256:${n.repeat(64)}`), size: 1 });
    const mixed = { ...index, manifests: [bare('6', MediaType.OCI_INDEX), ...index.manifests, bare('7'), bare('8')] };
    expect(pickPlatform(mixed, parsePlatform('linux/s390x')).digest).toMatch(/7{64}$/);
    expect(pickPlatform(mixed, parsePlatform('linux/amd64')).digest).toMatch(/1{64}$/);
    expect(() => pickPlatform({ ...index, manifests: [bare('6', MediaType.OCI_INDEX)] }, parsePlatform('linux/amd64'))).toThrow(/available: none/);
  });
});

describe('manifests', () => {
  const desc = { mediaType: MediaType.OCI_CONFIG, digest: D, size: 2 };

  it('keep the bytes and their digest, and infer an OCI type from the fields', () => {
    const bytes = Buffer.from(JSON.stringify({ schemaVersion: 2, config: desc, layers: [] }));
    const m = parseManifest(bytes);
    expect(m.kind).toBe('manifest');
    expect(m.mediaType).toBe(MediaType.OCI_MANIFEST);
    expect(m.digest).toBe(sha256Digest(bytes));
    expect(m.bytes).toBe(bytes);
    expect(parseManifest(Buffer.from(JSON.stringify({ schemaVersion: 2, manifests: [] }))).kind).toBe('index');
  });

  it('refuse what is not a manifest, schema 1, and disagreeing media types', () => {
    expect(code(() => parseManifest(Buffer.from('{')))).toBe('MANIFEST_INVALID');
    expect(code(() => parseManifest(Buffer.from(JSON.stringify({ schemaVersion: 2, layers: [] }))))).toBe('MANIFEST_INVALID');
    expect(code(() => parseManifest(Buffer.from(JSON.stringify({ schemaVersion: 1, fsLayers: [] }))))).toBe('UNSUPPORTED');
    const docker = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MediaType.DOCKER_MANIFEST, config: desc, layers: [] }));
    expect(code(() => parseManifest(docker, MediaType.OCI_MANIFEST))).toBe('MANIFEST_INVALID');
    const badLayer = Buffer.from(JSON.stringify({ schemaVersion: 2, config: desc, layers: [{ ...desc, size: -1 }] }));
    expect(() => parseManifest(badLayer)).toThrow(/layers\[0\]\.size/);
  });
});

describe('image configs', () => {
  const config = (rootfs: unknown) => Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs }));

  it('an image of no layer is read as Docker reads it: diff_ids left out (classic builder) or null (BuildKit) are none', () => {
    // `FROM scratch` + `LABEL`, as `docker build` writes the config of each builder.
    expect(parseImageConfig(config({ type: 'layers' })).rootfs.diff_ids).toEqual([]);
    expect(parseImageConfig(config({ type: 'layers', diff_ids: null })).rootfs.diff_ids).toEqual([]);
    expect(parseImageConfig(config({ type: 'layers', diff_ids: [D] })).rootfs.diff_ids).toEqual([D]);
    expect(code(() => parseImageConfig(config({ type: 'layers', diff_ids: D })))).toBe('MANIFEST_INVALID');
    expect(code(() => parseImageConfig(config(undefined)))).toBe('MANIFEST_INVALID');
    expect(code(() => parseImageConfig(config({ type: 'tarballs', diff_ids: [] })))).toBe('MANIFEST_INVALID');
  });
});

describe('image names', () => {
  it('parse each transport as skopeo does', () => {
    expect(parseImageName('oci:dir')).toMatchObject({ transport: 'oci', dir: 'dir' });
    expect(parseImageName('oci:./a/b:v1')).toMatchObject({ transport: 'oci', dir: './a/b', tag: 'v1' });
    expect(parseImageName('docker-archive:-')).toMatchObject({ transport: 'docker-archive', file: '-', selection: { kind: 'only' } });
    expect(parseImageName('docker-archive:x.tar:localhost:5000/a:b')).toMatchObject({ selection: { kind: 'name', name: 'localhost:5000/a:b' } });
    expect(parseImageName('docker-archive:x.tar:@2')).toMatchObject({ selection: { kind: 'index', index: 2 } });
    // A selector said wrong is named as the user wrote it (not a digest error, not library/Name).
    for (const [sel, why] of [
      ['@-1', '"@-1" is no image position: :@N counts the archive\'s images from 0'],
      ['@x', '"@x" is no image position: :@N counts the archive\'s images from 0'],
      ['@sha256:abc', 'a docker-archive name takes :NAME:TAG or :@N, not a digest'],
      ['Name:Tag', '"Name:Tag" is not NAME:TAG (a name is lower case)'],
    ]) {
      expect(() => parseImageName(`docker-archive:x.tar:${sel}`)).toThrow(`invalid image name "docker-archive:x.tar:${sel}": ${why}`);
    }
    expect(parseImageName('file:/srv/reg#team/app:1')).toMatchObject({ transport: 'file', root: '/srv/reg', ref: { repository: 'team/app', tag: '1' } });
    expect(parseImageName('file:/srv/reg')).toMatchObject({ transport: 'file', root: '/srv/reg' });
    expect(parseImageName('file:/srv/reg').transport === 'file' && 'ref' in parseImageName('file:/srv/reg')).toBe(false);
    expect(code(() => parseImageName('nope'))).toBe('INVALID_REFERENCE');
    expect(code(() => parseImageName('oci:'))).toBe('INVALID_REFERENCE');
    expect(code(() => parseImageName('file:#a'))).toBe('INVALID_REFERENCE');
    expect(parseImageName('docker://busybox')).toMatchObject({ transport: 'docker', ref: { registry: 'docker.io', repository: 'library/busybox', tag: 'latest' } });
    expect(parseImageName('docker://127.0.0.1:5000/a/b@' + D)).toMatchObject({ ref: { registry: '127.0.0.1:5000', repository: 'a/b', digest: D } });
    expect(code(() => parseImageName('docker:busybox'))).toBe('INVALID_REFERENCE');
    expect(parseImageName('s3://my-bucket/reg/root#team/app:1')).toMatchObject({ transport: 's3', bucket: 'my-bucket', root: 'reg/root', ref: { repository: 'team/app', tag: '1' } });
    expect(parseImageName('s3://my-bucket')).toMatchObject({ transport: 's3', bucket: 'my-bucket', root: '' });
    expect(code(() => parseImageName('s3://B#x'))).toBe('INVALID_REFERENCE');
    expect(code(() => parseImageName('s3://bucket/../x#x'))).toBe('INVALID_REFERENCE');
  });
});

describe('registry auth challenges', () => {
  it('parse Bearer and Basic as registries send them', () => {
    expect(parseChallenge('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull"')).toEqual({
      scheme: 'bearer',
      realm: 'https://auth.docker.io/token',
      service: 'registry.docker.io',
    });
    expect(parseChallenge('Basic realm="Registry Realm"')).toEqual({ scheme: 'basic' });
    expect(parseChallenge(undefined)).toEqual({ scheme: 'none' });
  });

  it('find Docker Hub credentials under the v1 index URL', () => {
    expect(configKeys('docker.io')[0]).toBe('https://index.docker.io/v1/');
    expect(configKeys('ghcr.io')).toContain('ghcr.io');
    expect(parseCredentials('u:p:with:colons', '--creds')).toEqual({ username: 'u', password: 'p:with:colons' });
    expect(code(() => parseCredentials('nocolon', '--creds'))).toBe('USAGE');
  });
});
