// A Node program using smartlayer as a library, by its package name (Node resolves `smartlayer`
// to this package through package.json `exports`, as it would for a dependency). Run by
// library.test.ts with the names to use as JSON in argv[2]; prints one JSON line per step.
import { copy, indexStore, isSmartError, openCacheSession, parseImageName, pull, push, SmartError, TRANSPORTS } from 'smartlayer';

const { layout, multi, store, registry, out, rootfs, cacheDir } = JSON.parse(process.argv[2]);
const say = (step, value) => process.stdout.write(`${JSON.stringify({ step, ...value })}\n`);

const layers = [];
const pushed = await push(`oci:${layout}:latest`, `file:${store}#api/basic:1`, { cacheDir, onLayer: (e) => layers.push(e.status) });
say('push to file:', { manifestDigest: pushed.manifestDigest, pushed: pushed.layers.pushed, events: layers });

const again = await push(`oci:${layout}:latest`, `file:${store}#api/basic:1`, { cacheDir });
say('push again', { manifestDigest: again.manifestDigest, pushed: again.layers.pushed, skipped: again.layers.skipped });

const toRegistry = await copy(`file:${store}#api/basic:1`, `docker://${registry}/api/basic:1`, { cacheDir });
say('copy to docker://', { manifestDigest: toRegistry.manifestDigest });

// As `smart copy`: into a store it is a push, which keeps a multi-platform index whole.
const wholeIndex = await copy(`oci:${multi}:latest`, `file:${store}#api/multi:1`, { cacheDir });
say('copy an index to file:', { manifestDigest: wholeIndex.manifestDigest, platforms: wholeIndex.details?.platforms });

const pulled = await pull(`docker://${registry}/api/basic:1`, `oci:${out}:x`, { cacheDir });
say('pull to oci:', { manifestDigest: pulled.manifestDigest });

const unpacked = await pull(`docker://${registry}/api/basic:1`, `rootfs:${rootfs}`, { cacheDir });
say('pull to rootfs:', { path: unpacked.details?.path });

const session = await openCacheSession({ cacheDir });
try {
  const index = await indexStore(`file:${store}`, session.ctx);
  say('cache index', { tags: index.tags, repositories: index.repositories });
} finally {
  await session.close();
}

try {
  await push(`oci:${layout}:latest`, `rootfs:${rootfs}-no`);
} catch (e) {
  say('push to rootfs:', { smartError: isSmartError(e) && e instanceof SmartError, code: e.code });
}
say('names', { transport: parseImageName(`file:${store}#api/basic:1`).transport, transports: TRANSPORTS.map((t) => t.name) });
