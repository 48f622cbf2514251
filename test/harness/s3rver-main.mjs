// Runs s3rver (a real S3 HTTP server over a local directory) for the tests, as a child process:
//   node --openssl-legacy-provider s3rver-main.mjs PORT DIRECTORY BUCKET
// S3RVER_KEYS="ID:SECRET[,ID2:SECRET2]" adds access keys it accepts.
// The flag matters: s3rver's continuation tokens use DES, which OpenSSL 3 only has in its legacy
// provider; without it every truncated ListObjectsV2 answers 500.
// Prints one line `ready <port>` on stdout once it listens; exits on SIGTERM/SIGINT.
import S3rver from 's3rver';
import AWSAccount from 's3rver/lib/models/account.js';

const [port, directory, bucket] = process.argv.slice(2);
if (!port || !directory || !bucket) {
  process.stderr.write('usage: s3rver-main.mjs PORT DIRECTORY BUCKET\n');
  process.exit(2);
}

// Extra credentials (S3RVER_KEYS="ID:SECRET"), besides s3rver's own S3RVER:S3RVER.
for (const pair of (process.env.S3RVER_KEYS ?? '').split(',').filter(Boolean)) {
  const i = pair.indexOf(':');
  AWSAccount.DUMMY_ACCOUNT.createKeyPair(pair.slice(0, i), pair.slice(i + 1));
}

const server = new S3rver({
  address: '127.0.0.1',
  port: Number(port),
  directory,
  silent: true,
  vhostBuckets: false,
  configureBuckets: [{ name: bucket, configs: [] }],
});

const stop = () => process.exit(0);
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
// Exit with the parent: a test runner killed hard must not leave servers behind.
process.stdin.on('end', stop);
process.stdin.on('error', stop);
process.stdin.resume();

try {
  const address = await server.run();
  process.stdout.write(`ready ${address.port}\n`);
} catch (e) {
  process.stderr.write(`s3rver failed to start: ${e && e.stack ? e.stack : e}\n`);
  process.exit(1);
}
