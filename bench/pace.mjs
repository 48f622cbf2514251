#!/usr/bin/env node
/**
 * A paced producer for the overlap case of bench/run.mjs: writes FILE to stdout at RATE MB/s
 * (1 MB chunks, each sent no earlier than its byte offset / rate), the way `docker save` or a build
 * hands a tar over a pipe. Backpressure from the reader holds it back further.
 *
 *   node bench/pace.mjs FILE [RATE_MB_PER_S=150] | consumer
 */
import fs from 'node:fs';
import { once } from 'node:events';
import { setTimeout as sleep } from 'node:timers/promises';

const file = process.argv[2];
const rate = Number(process.argv[3] ?? 150) * 1e6;
if (!file || !(rate > 0)) {
  console.error('usage: node bench/pace.mjs FILE [RATE_MB_PER_S]');
  process.exit(2);
}
process.stdout.on('error', (e) => {
  console.error(`pace: ${e.message}`);
  process.exit(1);
});
const start = performance.now();
let sent = 0;
for await (const chunk of fs.createReadStream(file, { highWaterMark: 1 << 20 })) {
  const wait = start + (sent / rate) * 1000 - performance.now();
  if (wait > 0) await sleep(wait);
  if (!process.stdout.write(chunk)) await once(process.stdout, 'drain');
  sent += chunk.length;
}
// The last chunk is due at the end of the budget too: total bytes / rate.
const rest = start + (sent / rate) * 1000 - performance.now();
if (rest > 0) await sleep(rest);
