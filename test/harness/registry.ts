/**
 * The stock Distribution registry (`docker-registry`, Debian), started on a free loopback port over
 * a storage root the test chooses, and stopped by it.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs/promises';
import path from 'node:path';
import { freePort } from './ports.js';

export interface RunningRegistry {
  /** `127.0.0.1:PORT`, as used in `docker://` names. */
  host: string;
  port: number;
  root: string;
  stop(): Promise<void>;
}

async function waitReady(url: string, child: ChildProcess, log: () => string): Promise<void> {
  const deadline = Date.now() + 15_000;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`docker-registry exited (${child.exitCode}): ${log()}`);
    try {
      const res = await fetch(url);
      if (res.status === 200) return;
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`docker-registry did not answer ${url} in 15 s: ${log()}`);
}

export async function startRegistry(root: string, configDir: string): Promise<RunningRegistry> {
  const port = await freePort();
  const config = path.join(configDir, `registry-${port}.yml`);
  await fs.writeFile(
    config,
    [
      'version: 0.1',
      'log:',
      '  level: warn',
      '  accesslog: {disabled: true}',
      'storage:',
      `  filesystem: {rootdirectory: ${JSON.stringify(root)}}`,
      '  delete: {enabled: true}',
      '  cache: {blobdescriptor: inmemory}',
      '  maintenance: {uploadpurging: {enabled: false}}',
      'http:',
      `  addr: 127.0.0.1:${port}`,
      '',
    ].join('\n'),
  );
  const env = { ...process.env };
  delete env.AWS_CA_BUNDLE; // the registry panics at start when it is set
  const child = spawn('docker-registry', ['serve', config], { env, stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => {
    stderr = (stderr + d.toString()).slice(-4000);
  });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  try {
    await waitReady(`http://127.0.0.1:${port}/v2/`, child, () => stderr);
  } catch (e) {
    child.kill('SIGKILL');
    await exited;
    throw e;
  }
  return {
    host: `127.0.0.1:${port}`,
    port,
    root,
    stop: async () => {
      if (child.exitCode === null) {
        child.kill('SIGTERM');
        const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
        await exited;
        clearTimeout(timer);
      }
    },
  };
}
