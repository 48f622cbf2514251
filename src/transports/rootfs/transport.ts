/** `rootfs:DIR` and `bundle:DIR` (pull only): the flattened root filesystem, bare or in a runtime bundle. */
import type { OpenContext, SourceFacts, Transport } from '../transport.js';
import { invalidName } from '../transport.js';

export interface RootfsName {
  transport: 'rootfs' | 'bundle';
  dir: string;
  raw: string;
}

function parseDir<T extends RootfsName['transport']>(transport: T) {
  return (rest: string, raw: string): RootfsName & { transport: T } => {
    if (!rest) throw invalidName(raw, 'missing directory');
    return { transport, dir: rest, raw };
  };
}

async function openWriter(name: RootfsName, ctx: OpenContext, source: SourceFacts | undefined) {
  const { RootfsWriter } = await import('./writer.js');
  const writer = new RootfsWriter(name.raw, name.dir, {
    bundle: name.transport === 'bundle',
    ...(ctx.onWarning ? { onWarning: ctx.onWarning } : {}),
    ...(ctx.layerStore ? { layerStore: ctx.layerStore } : {}),
    ...(ctx.link ? { link: true } : {}),
    ...(ctx.keepLayers !== undefined ? { keepLayers: ctx.keepLayers } : {}),
    ...(ctx.force ? { force: true } : {}),
    protect: [...(source?.localPaths ?? []), ...(ctx.layerStore ? [{ path: ctx.layerStore.dir, what: 'the layer store' }] : [])],
  });
  // Refused before anything is fetched.
  await writer.prepare();
  return writer;
}

export const rootfs: Transport<RootfsName & { transport: 'rootfs' }> = {
  name: 'rootfs',
  form: 'rootfs:DIR',
  help: '(pull only) the flattened root filesystem',
  capabilities: { pullOnly: true, holdsOneImage: true },
  parse: parseDir('rootfs'),
  openDestination: openWriter,
};

export const bundle: Transport<RootfsName & { transport: 'bundle' }> = {
  name: 'bundle',
  form: 'bundle:DIR',
  help: '(pull only) an OCI runtime bundle for runc: DIR/config.json + DIR/rootfs',
  capabilities: { pullOnly: true, holdsOneImage: true },
  parse: parseDir('bundle'),
  openDestination: openWriter,
};
