/**
 * Fault soak: many push and pull rounds, each under a random plan of faults, against the stock
 * registry behind the fault proxy, against S3 (s3rver) behind it, and with the shared Redis frozen
 * (SIGSTOP), killed and started again mid-run. Faults: connections reset before an answer and
 * mid-body, 5xx and 429 answers, bodies cut short, stalled or corrupted, uploads broken or stalled
 * mid-request, slow answers and slow-loris bodies.
 *
 * Every round must end within its bound, either successfully with a result that verifies (skopeo
 * reads what was pushed, with the digest expected; what was pulled is byte for byte the image; a
 * store checks consistent) or with exit 1 and one clear error line, leaving no tag that names
 * anything but the right image and no destination half-written. Never a hang, never a success
 * with bad data. The seed (SMART_SOAK_SEED to replay) decides every plan; it is printed with any
 * failure, and the record of the rounds is printed at the end. `SMART_SOAK=full` (npm run soak)
 * runs more rounds.
 */
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { GetObjectCommand } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { StoreCheckReport } from '../../src/ops/store-check.js';
import { writeImage, type ImageSpec } from '../harness/images.js';
import { blobFiles } from '../harness/layout.js';
import { startProxy, type Fault, type ProxiedRequest, type RunningProxy } from '../harness/proxy.js';
import { startRedis, type RunningRedis } from '../harness/redis.js';
import { startRegistry, type RunningRegistry } from '../harness/registry.js';
import { run, smart } from '../harness/run.js';
import { startS3, type RunningS3 } from '../harness/s3.js';
import { FULL_SCALE, hash32, oneErrorLine, runSmart, seeded, soakSeed, startSmart, type Random, type SmartRun } from '../harness/soak.js';
import { haveTools } from '../harness/tools.js';
import { tempDir } from '../harness/tmp.js';

const ROUNDS = FULL_SCALE ? { registry: 60, s3: 30, redis: 20 } : { registry: 10, s3: 5, redis: 4 };
/** Each run's own --timeout; the hard bound past which it is said to hang. */
const TIMEOUT_S = 40;
const BOUND_MS = 70_000;
/** A test's own limit: rounds run one after another. */
const TEST_TIMEOUT_MS = FULL_SCALE ? 3_600_000 : 600_000;

const seed = soakSeed();
const rng = seeded(seed);
const sha = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}`;

interface RoundRecord {
  area: 'registry' | 's3' | 'redis';
  round: number;
  op: string;
  plan: string;
  /** Requests the proxy faulted, by kind; or the Redis events. */
  injected: string[];
  outcome: 'ok' | 'failed cleanly' | 'VIOLATION';
  seconds: number;
  error?: string;
}

const records: RoundRecord[] = [];
const violations: string[] = [];

function violation(r: RoundRecord, why: string): void {
  r.outcome = 'VIOLATION';
  violations.push(`${r.area} round ${r.round} (${r.op}; ${r.plan}): ${why}`);
}

/** Two images of a random 600 KiB layer (larger than socket buffers: a stalled upload blocks its sender) and a small one. */
function imageSpecs(): ImageSpec[] {
  return [0, 1].map((i) => ({
    layers: [
      { files: { [`data/big${i}.bin`]: randomBytes(600 * 1024).toString('latin1') }, createdBy: `ADD big${i}.bin /data/` },
      { files: { [`etc/soak${i}.conf`]: `image=${i}\n` }, createdBy: `COPY soak${i}.conf /etc/` },
    ],
  }));
}

interface SoakImage {
  spec: ImageSpec;
  layout: string;
  archive: string;
  /** The manifest digest of a push of the layout (kept byte for byte) and of the archive (compressed on the way). */
  ociDigest: string;
  archiveDigest: string;
}

// ---- fault plans -------------------------------------------------------------------------------

type Matcher = (req: ProxiedRequest) => boolean;

interface Rule {
  what: string;
  matches: Matcher;
  fault: Fault;
  /** Chance that a matching request is faulted (decided by a hash of the request: replayable). */
  p: number;
  /** At most this many faulted requests (undefined: no limit, the command is meant to give up). */
  budget?: number;
}

const isBlobGet: Matcher = (q) => q.method === 'GET' && /\/blobs\/sha256:[0-9a-f]{64}$/.test(q.path);
const isManifest: Matcher = (q) => q.path.includes('/manifests/');
const isUploadData: Matcher = (q) => (q.method === 'PATCH' || q.method === 'PUT') && q.path.includes('/blobs/uploads/');
const isUploadStart: Matcher = (q) => q.method === 'POST' && q.path.includes('/blobs/uploads/');
const any: Matcher = () => true;

const S3_ERROR = (code: string) => `<?xml version="1.0" encoding="UTF-8"?><Error><Code>${code}</Code><Message>injected</Message><RequestId>soak</RequestId></Error>`;
const isS3Data: Matcher = (q) => q.method === 'GET' && /\/blobs\/sha256\/[0-9a-f]{2}\/[0-9a-f]{64}\/data$/.test(q.path);
const isS3Put: Matcher = (q) => q.method === 'PUT';
const isS3List: Matcher = (q) => q.method === 'GET' && q.url.includes('list-type=2');

type Choice = { for: 'push' | 'pull' | 'both'; make: (r: Random) => Omit<Rule, 'p' | 'budget'> };

/** One to `most` rules among the `choices` that concern `op` (a push sends no blob GET, a pull no upload). */
function plan(r: Random, choices: Choice[], op: string, most: number): Rule[] {
  const side = op.startsWith('push') ? 'push' : 'pull';
  const usable = choices.filter((c) => c.for === 'both' || c.for === side);
  return Array.from({ length: r.between(1, most) }, () => {
    const base = r.pick(usable).make(r);
    // Mostly a few faults, which retries outlive; sometimes without limit, which they must give up on cleanly.
    const persistent = r.chance(0.15);
    return { ...base, p: r.pick([0.3, 0.6, 1]), ...(persistent ? {} : { budget: r.between(1, 3) }) };
  });
}

const REGISTRY_FAULTS: Choice[] = [
  { for: 'both', make: () => ({ what: 'reset', matches: any, fault: { kind: 'reset' } }) },
  { for: 'both', make: (r) => ({ what: `${[500, 502, 503][r.int(3)]}`, matches: any, fault: { kind: 'status', status: [500, 502, 503][r.int(3)]! } }) },
  { for: 'both', make: () => ({ what: '429', matches: any, fault: { kind: 'status', status: 429, headers: { 'retry-after': '1' } } }) },
  { for: 'both', make: (r) => ({ what: 'slow answers', matches: any, fault: { kind: 'delay', ms: r.between(300, 1500) } }) },
  { for: 'pull', make: (r) => ({ what: 'blob reset mid-body', matches: isBlobGet, fault: { kind: 'reset-mid-body', afterBytes: r.between(0, 400_000) } }) },
  { for: 'pull', make: (r) => ({ what: 'blob stalled mid-body', matches: isBlobGet, fault: { kind: 'stall-mid-body', afterBytes: r.between(0, 400_000) } }) },
  { for: 'pull', make: (r) => ({ what: 'blob corrupted', matches: isBlobGet, fault: { kind: 'corrupt-body', offset: r.between(0, 600_000) } }) },
  { for: 'pull', make: (r) => ({ what: 'manifest corrupted', matches: (q) => isManifest(q) && q.method === 'GET', fault: { kind: 'corrupt-body', offset: r.between(0, 400) } }) },
  { for: 'pull', make: (r) => ({ what: 'manifest cut short', matches: (q) => isManifest(q) && q.method === 'GET', fault: { kind: 'reset-mid-body', afterBytes: r.between(0, 300) } }) },
  { for: 'pull', make: () => ({ what: 'slow-loris body', matches: (q) => isBlobGet(q) || (isManifest(q) && q.method === 'GET'), fault: { kind: 'slow-body', bytes: 2048, everyMs: 100 } }) },
  { for: 'push', make: (r) => ({ what: 'upload reset mid-request', matches: isUploadData, fault: { kind: 'reset-mid-request', afterBytes: r.between(0, 300_000) } }) },
  { for: 'push', make: (r) => ({ what: 'upload stalled mid-request', matches: isUploadData, fault: { kind: 'stall-mid-request', afterBytes: r.between(0, 200_000) } }) },
  { for: 'push', make: () => ({ what: 'upload start 503', matches: isUploadStart, fault: { kind: 'status', status: 503 } }) },
  { for: 'push', make: () => ({ what: 'manifest PUT reset', matches: (q) => isManifest(q) && q.method === 'PUT', fault: { kind: 'reset' } }) },
];

const s3Status = (code: number, name: string): Fault => ({ kind: 'status', status: code, headers: { 'content-type': 'application/xml' }, body: S3_ERROR(name) });
const S3_FAULTS: Choice[] = [
  { for: 'both', make: () => ({ what: 'reset', matches: any, fault: { kind: 'reset' } }) },
  { for: 'both', make: () => ({ what: '500 InternalError', matches: any, fault: s3Status(500, 'InternalError') }) },
  { for: 'both', make: () => ({ what: '503 SlowDown', matches: any, fault: s3Status(503, 'SlowDown') }) },
  { for: 'both', make: (r) => ({ what: 'slow answers', matches: any, fault: { kind: 'delay', ms: r.between(300, 1500) } }) },
  { for: 'push', make: () => ({ what: 'list 503', matches: isS3List, fault: s3Status(503, 'SlowDown') }) },
  { for: 'pull', make: (r) => ({ what: 'blob reset mid-body', matches: isS3Data, fault: { kind: 'reset-mid-body', afterBytes: r.between(0, 400_000) } }) },
  { for: 'pull', make: (r) => ({ what: 'blob stalled mid-body', matches: isS3Data, fault: { kind: 'stall-mid-body', afterBytes: r.between(0, 400_000) } }) },
  { for: 'pull', make: (r) => ({ what: 'blob corrupted', matches: isS3Data, fault: { kind: 'corrupt-body', offset: r.between(0, 600_000) } }) },
  { for: 'pull', make: () => ({ what: 'slow-loris body', matches: isS3Data, fault: { kind: 'slow-body', bytes: 2048, everyMs: 100 } }) },
  { for: 'push', make: (r) => ({ what: 'put reset mid-request', matches: isS3Put, fault: { kind: 'reset-mid-request', afterBytes: r.between(0, 300_000) } }) },
  { for: 'push', make: (r) => ({ what: 'put stalled mid-request', matches: isS3Put, fault: { kind: 'stall-mid-request', afterBytes: r.between(0, 200_000) } }) },
];

/** The proxy's fault function for `rules`: each request decided by a hash of the seed, round, rule and request. */
function applyPlan(proxy: RunningProxy, round: number, rules: Rule[]): void {
  const used = rules.map(() => 0);
  proxy.stats.clear();
  proxy.setFaults((req, n) => {
    for (let i = 0; i < rules.length; i++) {
      const rule = rules[i]!;
      if (!rule.matches(req)) continue;
      if (rule.budget !== undefined && used[i]! >= rule.budget) continue;
      if (hash32(seed, round, i, req.method, req.path, n) / 0x100000000 >= rule.p) continue;
      used[i]!++;
      return rule.fault;
    }
    return undefined;
  });
}

const describePlan = (rules: Rule[]) => rules.map((r) => `${r.what} p=${r.p}${r.budget === undefined ? ' always' : ` ×${r.budget}`}`).join(', ');

function injected(proxy: RunningProxy): string[] {
  return proxy.stats.requests.filter((q) => q.fault).map((q) => `${q.fault} ${q.method}`);
}

/** A run's end, as the rules have it: within the bound, and on failure exit 1 with one clear line. */
function judgeEnd(rec: RoundRecord, r: SmartRun, timeoutS: number): boolean {
  rec.seconds = Number((r.ms / 1000).toFixed(1));
  if (r.hung) {
    violation(rec, `hung: killed after ${BOUND_MS / 1000} s (its --timeout was ${timeoutS} s)`);
    return false;
  }
  if (r.code === 0) {
    rec.outcome = 'ok';
    return true;
  }
  const line = oneErrorLine(r.stderr);
  if (r.code !== 1) violation(rec, `exit ${r.code} (signal ${r.signal}): ${r.stderr.slice(-500)}`);
  else if (!line.ok) violation(rec, `not one clear error line (${line.why}): ${r.stderr.slice(-800)}`);
  else {
    rec.outcome = 'failed cleanly';
    rec.error = line.line.slice(0, 240);
  }
  return false;
}

/** Files an image's layers hold, as a root filesystem must hold them. */
async function treeMatches(dir: string, spec: ImageSpec): Promise<string | undefined> {
  for (const layer of spec.layers) {
    for (const [file, content] of Object.entries(layer.files)) {
      const got = await fs.readFile(path.join(dir, file)).catch(() => undefined);
      if (!got?.equals(Buffer.from(content))) return `${file} ${got ? 'differs' : 'is missing'}`;
    }
  }
  return undefined;
}

/** An OCI layout written by a pull: every blob of the source's, byte for byte, and the tag in index.json. */
async function layoutMatches(out: string, source: string, tag: string): Promise<string | undefined> {
  const want = await blobFiles(source);
  const got = await blobFiles(out).catch(() => new Map<string, Buffer>());
  for (const [hex, bytes] of want) if (!got.get(hex)?.equals(bytes)) return `blob ${hex.slice(0, 12)} ${got.has(hex) ? 'differs' : 'is missing'}`;
  const index = JSON.parse(await fs.readFile(path.join(out, 'index.json'), 'utf8')) as { manifests: { annotations?: Record<string, string> }[] };
  return index.manifests.some((m) => m.annotations?.['org.opencontainers.image.ref.name'] === tag) ? undefined : 'the tag is not in index.json';
}

/** After a failed pull into an OCI layout: no tag in index.json (blobs may be there; nothing names them). */
async function layoutUntagged(out: string, tag: string): Promise<boolean> {
  const text = await fs.readFile(path.join(out, 'index.json'), 'utf8').catch(() => undefined);
  if (text === undefined) return true;
  return !(JSON.parse(text) as { manifests: { annotations?: Record<string, string> }[] }).manifests.some((m) => m.annotations?.['org.opencontainers.image.ref.name'] === tag);
}

describe.skipIf(!haveTools('docker-registry', 'skopeo', 'redis-server'))(`fault soak (${FULL_SCALE ? 'full' : 'CI'} scale, seed ${seed})`, () => {
  let work: string;
  let images: SoakImage[];

  beforeAll(async () => {
    work = await tempDir('smart-soak-');
    images = [];
    for (const [i, spec] of imageSpecs().entries()) {
      const layout = path.join(work, `image${i}`);
      const made = await writeImage(layout, spec);
      const archive = path.join(work, `image${i}.tar`);
      const r = await smart(['pull', `oci:${layout}:latest`, `docker-archive:${archive}:soak/image${i}:latest`]);
      expect(r.code, r.stderr).toBe(0);
      // The archive's digest once compressed: what every push of it must give (compression is deterministic).
      const ref = await smart(['push', `docker-archive:${archive}`, `file:${path.join(work, 'reference')}#ref/image${i}:1`, '--json']);
      expect(ref.code, ref.stderr).toBe(0);
      images.push({ spec, layout, archive, ociDigest: made.manifest, archiveDigest: (JSON.parse(ref.stdout.toString()) as { manifestDigest: string }).manifestDigest });
    }
  });

  afterAll(() => {
    const lines = records.map(
      (r) => `${r.area} #${r.round} ${r.op} [${r.plan}] → ${r.outcome} in ${r.seconds} s; injected ${r.injected.length}${r.injected.length ? ` (${summarise(r.injected)})` : ''}${r.error ? `; ${r.error}` : ''}`,
    );
    const count = (o: RoundRecord['outcome']) => records.filter((r) => r.outcome === o).length;
    console.log(
      `fault soak, seed ${seed} (replay: SMART_SOAK_SEED=${seed}), ${records.length} rounds: ${count('ok')} ok, ${count('failed cleanly')} failed cleanly, ` +
        `${count('VIOLATION')} violations; ${records.reduce((n, r) => n + r.injected.length, 0)} faults injected\n  ${lines.join('\n  ')}`,
    );
  });

  describe('registry behind the fault proxy', () => {
    let registry: RunningRegistry;
    let proxy: RunningProxy;

    beforeAll(async () => {
      registry = await startRegistry({ configDir: path.join(work, 'registry') });
      proxy = await startProxy({ target: registry.url });
      for (const [i, img] of images.entries()) {
        const r = await smart(['push', `oci:${img.layout}:latest`, `docker://${registry.host}/soak/base${i}:1`]);
        expect(r.code, r.stderr).toBe(0);
      }
    });

    afterAll(async () => {
      await proxy?.stop();
      await registry?.stop();
    });

    /** What the registry holds under `repo:tag`, read directly (not through the proxy) by skopeo: its manifest digest, or undefined. */
    const registryDigest = async (ref: string): Promise<{ digest?: string; whole: boolean; why?: string }> => {
      const out = path.join(await tempDir(), 'copy');
      const r = await run('skopeo', ['--insecure-policy', 'copy', '--src-tls-verify=false', `docker://${registry.host}/${ref}`, `dir:${out}`]);
      if (r.code !== 0) return /manifest unknown/i.test(r.stderr) ? { whole: true } : { whole: false, why: r.stderr.trim().slice(-300) };
      return { digest: sha(await fs.readFile(path.join(out, 'manifest.json'))), whole: true };
    };

    it(`${ROUNDS.registry} rounds of pushes and pulls under faults: each ends in time, verified or with one clear line`, { timeout: TEST_TIMEOUT_MS }, async () => {
      for (let round = 0; round < ROUNDS.registry; round++) {
        const op = rng.pick(['push-oci', 'push-archive', 'pull-oci', 'pull-rootfs', 'pull-file'] as const);
        const i = rng.int(images.length);
        const img = images[i]!;
        const rules = plan(rng, REGISTRY_FAULTS, op, 3);
        const slow = rules.some((r) => r.fault.kind === 'slow-body');
        // A slow-loris body outlasts any reasonable run: --timeout is what ends it; keep that short here.
        const timeoutS = slow ? 8 : TIMEOUT_S;
        const rec: RoundRecord = { area: 'registry', round, op, plan: describePlan(rules), injected: [], outcome: 'ok', seconds: 0 };
        records.push(rec);
        const common = ['--json', '--stall-timeout', '2', '--timeout', String(timeoutS), '--progress', 'plain'];
        const dest = path.join(work, 'out', `r${round}`);
        await fs.mkdir(path.dirname(dest), { recursive: true });
        const ref = `soak/r${round}:t`;
        let args: string[];
        if (op === 'push-oci' || op === 'push-archive') {
          args = ['push', op === 'push-oci' ? `oci:${img.layout}:latest` : `docker-archive:${img.archive}`, `docker://${proxy.host}/${ref}`, ...common];
        } else {
          const to = op === 'pull-oci' ? `oci:${dest}:t` : op === 'pull-rootfs' ? `rootfs:${dest}` : `file:${dest}#soak/r${round}:t`;
          args = ['pull', `docker://${proxy.host}/soak/base${i}:1`, to, ...common];
        }
        applyPlan(proxy, round, rules);
        const r = await runSmart(args, { cacheHome: await tempDir(), boundMs: BOUND_MS });
        rec.injected = injected(proxy);
        proxy.setFaults(undefined);
        const ok = judgeEnd(rec, r, timeoutS);
        if (rec.outcome === 'VIOLATION') continue;
        if (op === 'push-oci' || op === 'push-archive') {
          const expected = op === 'push-oci' ? img.ociDigest : img.archiveDigest;
          const held = await registryDigest(ref);
          if (!held.whole) violation(rec, `the registry holds ${ref} but skopeo cannot copy it whole: ${held.why}`);
          else if (ok && held.digest !== expected) violation(rec, `success, but ${ref} is ${held.digest ?? 'absent'}, not ${expected}`);
          else if (!ok && held.digest !== undefined && held.digest !== expected) violation(rec, `failed, and ${ref} names ${held.digest}, not the image (${expected})`);
          if (ok && (JSON.parse(r.stdout) as { manifestDigest: string }).manifestDigest !== expected) violation(rec, 'the summary names another digest');
        } else if (op === 'pull-oci') {
          const why = ok ? await layoutMatches(dest, img.layout, 't') : undefined;
          if (why) violation(rec, `success, but the layout: ${why}`);
          if (!ok && !(await layoutUntagged(dest, 't'))) violation(rec, 'failed, but index.json tags the image');
        } else if (op === 'pull-rootfs') {
          const why = ok ? await treeMatches(dest, img.spec) : undefined;
          if (why) violation(rec, `success, but the root filesystem: ${why}`);
          if (!ok && (await fs.stat(dest).catch(() => undefined))) violation(rec, 'failed, but the root filesystem is there');
        } else {
          const link = await fs.readFile(path.join(dest, `docker/registry/v2/repositories/soak/r${round}/_manifests/tags/t/current/link`), 'utf8').catch(() => undefined);
          if (ok && link !== img.ociDigest) violation(rec, `success, but the tag names ${link ?? 'nothing'}`);
          if (!ok && link !== undefined) violation(rec, 'failed, but the tag was written');
          if (await fs.stat(dest).catch(() => undefined)) {
            const check = await runSmart(['store', 'check', `file:${dest}`, '--json'], { boundMs: BOUND_MS });
            const report = JSON.parse(check.stdout || '{}') as Partial<StoreCheckReport>;
            if (check.code !== 0 && !/no registry storage there/.test(check.stderr)) violation(rec, `the store does not check: ${check.stderr.trim().slice(-300)}`);
            else if (report.problems?.length) violation(rec, `store check: ${JSON.stringify(report.problems).slice(0, 300)}`);
          }
        }
      }
      // The registry's own storage, written through its API under all that: our check finds it consistent.
      const check = await runSmart(['store', 'check', `file:${registry.root}`], { boundMs: BOUND_MS });
      expect(check.code, `seed ${seed}: store check of the registry's storage: ${check.stderr}`).toBe(0);
      expect(violations, `seed ${seed} (replay with SMART_SOAK_SEED=${seed})`).toEqual([]);
    });
  });

  describe('S3 behind the fault proxy', () => {
    let s3: RunningS3;
    let proxy: RunningProxy;
    let viaProxy: NodeJS.ProcessEnv;

    beforeAll(async () => {
      s3 = await startS3(path.join(work, 's3'));
      proxy = await startProxy({ target: s3.endpoint });
      viaProxy = { ...s3.env, AWS_ENDPOINT_URL_S3: proxy.url };
      for (const [i, img] of images.entries()) {
        const r = await smart(['push', `oci:${img.layout}:latest`, `s3://${s3.bucket}/soak#base${i}:1`], { env: s3.env });
        expect(r.code, r.stderr).toBe(0);
      }
    });

    afterAll(async () => {
      await proxy?.stop();
      await s3?.stop();
    });

    const tagOf = async (repo: string): Promise<string | undefined> => {
      try {
        const res = await s3.client().send(new GetObjectCommand({ Bucket: s3.bucket, Key: `soak/docker/registry/v2/repositories/${repo}/_manifests/tags/t/current/link` }));
        return await res.Body!.transformToString();
      } catch {
        return undefined;
      }
    };

    it(`${ROUNDS.s3} rounds of pushes into and pulls out of S3 under faults: each ends in time, verified or with one clear line; the bucket checks consistent`, { timeout: TEST_TIMEOUT_MS }, async () => {
      for (let round = 0; round < ROUNDS.s3; round++) {
        const op = rng.pick(['push-oci', 'push-archive', 'pull-oci', 'pull-rootfs'] as const);
        const i = rng.int(images.length);
        const img = images[i]!;
        const rules = plan(rng, S3_FAULTS, op, 2);
        const slow = rules.some((r) => r.fault.kind === 'slow-body');
        const timeoutS = slow ? 8 : TIMEOUT_S;
        const rec: RoundRecord = { area: 's3', round, op, plan: describePlan(rules), injected: [], outcome: 'ok', seconds: 0 };
        records.push(rec);
        const common = ['--json', '--stall-timeout', '2', '--timeout', String(timeoutS), '--progress', 'plain'];
        const dest = path.join(work, 's3-out', `r${round}`);
        await fs.mkdir(path.dirname(dest), { recursive: true });
        const args =
          op === 'push-oci' || op === 'push-archive'
            ? ['push', op === 'push-oci' ? `oci:${img.layout}:latest` : `docker-archive:${img.archive}`, `s3://${s3.bucket}/soak#r${round}:t`, ...common]
            : ['pull', `s3://${s3.bucket}/soak#base${i}:1`, op === 'pull-oci' ? `oci:${dest}:t` : `rootfs:${dest}`, ...common];
        applyPlan(proxy, 1000 + round, rules);
        const r = await runSmart(args, { cacheHome: await tempDir(), env: viaProxy, boundMs: BOUND_MS });
        rec.injected = injected(proxy);
        proxy.setFaults(undefined);
        const ok = judgeEnd(rec, r, timeoutS);
        if (rec.outcome === 'VIOLATION') continue;
        if (op === 'push-oci' || op === 'push-archive') {
          const expected = op === 'push-oci' ? img.ociDigest : img.archiveDigest;
          const tag = await tagOf(`r${round}`);
          if (ok && tag !== expected) violation(rec, `success, but the tag names ${tag ?? 'nothing'}, not ${expected}`);
          if (!ok && tag !== undefined && tag !== expected) violation(rec, `failed, and the tag names ${tag}`);
        } else if (op === 'pull-oci') {
          const why = ok ? await layoutMatches(dest, img.layout, 't') : undefined;
          if (why) violation(rec, `success, but the layout: ${why}`);
          if (!ok && !(await layoutUntagged(dest, 't'))) violation(rec, 'failed, but index.json tags the image');
        } else {
          const why = ok ? await treeMatches(dest, img.spec) : undefined;
          if (why) violation(rec, `success, but the root filesystem: ${why}`);
          if (!ok && (await fs.stat(dest).catch(() => undefined))) violation(rec, 'failed, but the root filesystem is there');
        }
      }
      // Whatever failed left the bucket consistent: every tag a whole image.
      const check = await runSmart(['store', 'check', `s3://${s3.bucket}/soak`, '--json'], { env: s3.env, boundMs: BOUND_MS });
      expect(check.code, `seed ${seed}: store check of the bucket: ${check.stderr}`).toBe(0);
      expect(violations, `seed ${seed} (replay with SMART_SOAK_SEED=${seed})`).toEqual([]);
    });
  });

  describe('the shared Redis frozen, killed and started again mid-run', () => {
    let redis: RunningRedis;
    let redisDir: string;

    beforeAll(async () => {
      redisDir = path.join(work, 'redis');
      redis = await startRedis(redisDir);
    });

    afterAll(async () => {
      await redis?.stop();
    });

    it(`${ROUNDS.redis} rounds: pushes, pulls and cache index finish in time with a warning, or fail in one line; the results verify`, { timeout: TEST_TIMEOUT_MS }, async () => {
      const store = path.join(work, 'redis-store');
      for (let round = 0; round < ROUNDS.redis; round++) {
        const op = rng.pick(['push', 'pull-rootfs', 'cache-index'] as const);
        const event = rng.pick(['freeze', 'kill-and-restart', 'frozen-before'] as const);
        const atMs = rng.between(50, 1500);
        const img = images[rng.int(images.length)]!;
        const rec: RoundRecord = { area: 'redis', round, op, plan: `${event} at ${atMs} ms`, injected: [], outcome: 'ok', seconds: 0 };
        records.push(rec);
        const dest = path.join(work, 'redis-out', `r${round}`);
        await fs.mkdir(path.dirname(dest), { recursive: true });
        if (!(await fs.stat(store).catch(() => undefined))) {
          const first = await smart(['push', `oci:${images[0]!.layout}:latest`, `file:${store}#base:1`]);
          expect(first.code, first.stderr).toBe(0);
        }
        const common = ['--redis', redis.url, '--timeout', String(TIMEOUT_S), '--progress', 'plain'];
        const args =
          op === 'push'
            ? ['push', `oci:${img.layout}:latest`, `file:${store}#r${round}:t`, '--json', ...common]
            : op === 'pull-rootfs'
              ? ['pull', `file:${store}#base:1`, `rootfs:${dest}`, '--json', ...common]
              : ['cache', 'index', `file:${store}`, '--redis', redis.url];
        if (event === 'frozen-before') {
          process.kill(redis.pid, 'SIGSTOP');
          rec.injected.push('SIGSTOP before the start');
        }
        const running = startSmart(args, { cacheHome: await tempDir(), boundMs: BOUND_MS });
        let restarted: Promise<void> | undefined;
        const timer = setTimeout(() => {
          if (event === 'freeze') {
            process.kill(redis.pid, 'SIGSTOP');
            rec.injected.push(`SIGSTOP at ${atMs} ms`);
          } else if (event === 'kill-and-restart') {
            rec.injected.push(`SIGKILL at ${atMs} ms, started again 500 ms later`);
            const port = redis.port;
            restarted = redis.kill9().then(async () => {
              await new Promise((res) => setTimeout(res, 500));
              redis = await startRedis(redisDir, { port });
            });
          }
        }, atMs);
        const r = await running.done;
        clearTimeout(timer);
        await restarted;
        if (event !== 'kill-and-restart') process.kill(redis.pid, 'SIGCONT');
        const ok = judgeEnd(rec, r, TIMEOUT_S);
        if (rec.outcome === 'VIOLATION') continue;
        // Redis costs each command its timeouts (2 s to connect, 2 s a command), never more than a few of them.
        if (op !== 'cache-index' && r.ms > 25_000) violation(rec, `took ${(r.ms / 1000).toFixed(1)} s with Redis gone`);
        if (op !== 'cache-index' && !ok) violation(rec, `a ${op} fails because Redis is gone: ${rec.error}`);
        if (op === 'push' && ok) {
          const link = await fs.readFile(path.join(store, `docker/registry/v2/repositories/r${round}/_manifests/tags/t/current/link`), 'utf8').catch(() => undefined);
          if (link !== img.ociDigest) violation(rec, `success, but the tag names ${link ?? 'nothing'}`);
        }
        if (op === 'pull-rootfs' && ok) {
          const why = await treeMatches(dest, images[0]!.spec);
          if (why) violation(rec, `success, but the root filesystem: ${why}`);
        }
      }
      const check = await runSmart(['store', 'check', `file:${store}`], { boundMs: BOUND_MS });
      expect(check.code, `seed ${seed}: store check: ${check.stderr}`).toBe(0);
      expect(violations, `seed ${seed} (replay with SMART_SOAK_SEED=${seed})`).toEqual([]);
    });
  });
});

function summarise(list: string[]): string {
  const counts = new Map<string, number>();
  for (const x of list) counts.set(x, (counts.get(x) ?? 0) + 1);
  return [...counts].map(([k, n]) => `${n}× ${k}`).join(', ');
}
