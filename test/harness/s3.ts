/**
 * A real S3 server for tests: s3rver (npm, a dev dependency) over a directory the test chooses,
 * run as a child process on a free loopback port with one bucket, and stopped by the test.
 *
 * s3rver's gaps (see /work/shared/notes/components.md): no ListMultipartUploads, ListParts,
 * AbortMultipartUpload (405) or UploadPartCopy; `delimiter=/` listings miss prefixes whose objects
 * are all two or more levels deeper; DeleteObjects sometimes answers 500 although it worked.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { S3Client } from '@aws-sdk/client-s3';
import { freePort } from './ports.js';

export interface RunningS3 {
  /** `http://127.0.0.1:PORT` */
  endpoint: string;
  port: number;
  bucket: string;
  accessKeyId: string;
  secretAccessKey: string;
  /** A fresh client for this server, with the settings s3rver needs (path style, no stream checksums). */
  client(): S3Client;
  /**
   * What a `smart` child process needs to reach this server: merge over process.env. AWS_PROFILE
   * is set empty (the SDK then uses no named profile) so a developer's profile cannot interfere.
   */
  env: Record<string, string>;
  /** SIGSTOP: the server still accepts connections (the kernel does) and answers nothing, until `thaw`. */
  freeze(): void;
  /** SIGCONT after `freeze`. */
  thaw(): void;
  /** Stops the server, thawed first if frozen. */
  stop(): Promise<void>;
}

const script = path.join(path.dirname(fileURLToPath(import.meta.url)), 's3rver-main.mjs');

export const S3_TEST_BUCKET = 'smart-test';

/**
 * Starts s3rver over `root` (created if missing) with bucket `smart-test`. `keys`: the access key
 * the server accepts and the clients use, in place of s3rver's own S3RVER:S3RVER (which tests that
 * look for a secret in output cannot tell from ordinary text).
 */
export async function startS3(root: string, keys?: { accessKeyId: string; secretAccessKey: string }): Promise<RunningS3> {
  await fs.mkdir(root, { recursive: true });
  const bucket = S3_TEST_BUCKET;
  const accessKeyId = keys?.accessKeyId ?? 'S3RVER';
  const secretAccessKey = keys?.secretAccessKey ?? 'S3RVER';
  let lastError: unknown;
  // freePort() closes its probe before s3rver binds: another process may take the port between.
  for (let attempt = 0; attempt < 3; attempt++) {
    const port = await freePort();
    try {
      const child = await spawnS3rver(port, root, bucket, keys ? `${accessKeyId}:${secretAccessKey}` : undefined);
      return running(child, port, bucket, accessKeyId, secretAccessKey);
    } catch (e) {
      lastError = e;
      if (!String((e as Error).message).includes('EADDRINUSE')) break;
    }
  }
  throw lastError;
}

function spawnS3rver(port: number, root: string, bucket: string, keys?: string): Promise<ChildProcess> {
  const env = { ...process.env };
  delete env.NODE_OPTIONS; // vitest's loader options are not for this child
  if (keys) env.S3RVER_KEYS = keys;
  const child = spawn(process.execPath, ['--openssl-legacy-provider', script, String(port), root, bucket], {
    env,
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => {
    stderr = (stderr + d.toString()).slice(-4000);
  });
  return new Promise((resolve, reject) => {
    let stdout = '';
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`s3rver did not start in 15 s: ${stderr}`));
    }, 15_000);
    const onData = (d: Buffer) => {
      stdout += d.toString();
      if (stdout.includes('\n')) {
        clearTimeout(timer);
        child.stdout!.off('data', onData);
        child.stdout!.resume();
        if (stdout.startsWith('ready ')) resolve(child);
        else reject(new Error(`s3rver said ${JSON.stringify(stdout)}: ${stderr}`));
      }
    };
    child.stdout!.on('data', onData);
    child.once('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`s3rver exited (${code ?? signal}) before it was ready: ${stderr}`));
    });
  });
}

async function running(child: ChildProcess, port: number, bucket: string, accessKeyId: string, secretAccessKey: string): Promise<RunningS3> {
  const endpoint = `http://127.0.0.1:${port}`;
  const exited = new Promise<void>((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) resolve();
    else child.once('exit', () => resolve());
  });
  const clients: S3Client[] = [];
  const s3: RunningS3 = {
    endpoint,
    port,
    bucket,
    accessKeyId,
    secretAccessKey,
    client: () => {
      // The SDK warns once per process about Node < 22 (for releases after the pinned one).
      process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
      const c = new S3Client({
        endpoint,
        region: 'us-east-1',
        forcePathStyle: true,
        credentials: { accessKeyId, secretAccessKey },
        requestChecksumCalculation: 'WHEN_REQUIRED',
        responseChecksumValidation: 'WHEN_REQUIRED',
      });
      clients.push(c);
      return c;
    },
    env: {
      AWS_ENDPOINT_URL_S3: endpoint,
      AWS_ACCESS_KEY_ID: accessKeyId,
      AWS_SECRET_ACCESS_KEY: secretAccessKey,
      AWS_REGION: 'us-east-1',
      AWS_PROFILE: '',
    },
    freeze: () => void child.kill('SIGSTOP'),
    thaw: () => void child.kill('SIGCONT'),
    stop: async () => {
      for (const c of clients.splice(0)) c.destroy();
      if (child.exitCode === null && child.signalCode === null) {
        // A frozen server would take SIGTERM only once thawed.
        child.kill('SIGCONT');
        child.kill('SIGTERM');
        const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
        await exited;
        clearTimeout(timer);
      }
    },
  };
  // It printed `ready` after listen(); still, prove it answers S3 before handing it out.
  const probe = await fetch(`${endpoint}/${bucket}?list-type=2&max-keys=1`).catch((e: unknown) => e as Error);
  if (probe instanceof Error) {
    await s3.stop();
    throw new Error(`s3rver on ${endpoint} does not answer: ${probe.message}`);
  }
  await probe.body?.cancel();
  return s3;
}

/**
 * The `storage:` section of a stock `docker-registry` config for this server, as YAML lines
 * (indented for a top-level `storage:` key, which is included). `rootDirectory` is the registry's
 * `rootdirectory` (`/` for the bucket root); S3Driver's `rootDirectory` is the same without slashes.
 * Start the registry with AWS_CA_BUNDLE removed from its environment: it panics when it is set.
 */
export function registryS3Config(s3: Pick<RunningS3, 'endpoint' | 'bucket' | 'accessKeyId' | 'secretAccessKey'>, rootDirectory = '/'): string[] {
  const root = `/${rootDirectory.replace(/^\/+|\/+$/g, '')}`;
  return [
    'storage:',
    '  s3:',
    `    accesskey: ${JSON.stringify(s3.accessKeyId)}`,
    `    secretkey: ${JSON.stringify(s3.secretAccessKey)}`,
    '    region: us-east-1',
    `    regionendpoint: ${JSON.stringify(s3.endpoint)}`,
    `    bucket: ${JSON.stringify(s3.bucket)}`,
    '    secure: false',
    '    v4auth: true',
    `    rootdirectory: ${JSON.stringify(root)}`,
    '  redirect:',
    '    disable: true',
  ];
}
