/** `docker-archive:FILE[:NAME:TAG|:@N]`: a `docker save` / `docker load` tar; `-` is stdin or stdout. */
import path from 'node:path';
import { SmartError } from '../../errors.js';
import { parseReference } from '../../oci/reference.js';
import { userinfoEnd } from '../../redact.js';
import { isStreamedArchive, streamedArchiveInput } from '../../storage/archive-file.js';
import { invalidName, splitPath, type Transport } from '../transport.js';
import type { ArchiveSelection } from './manifest-json.js';

export interface DockerArchiveName {
  transport: 'docker-archive';
  /** `-`: stdin as a source, stdout as a destination. */
  file: string;
  selection: ArchiveSelection;
  raw: string;
}

export const dockerArchive: Transport<DockerArchiveName> = {
  name: 'docker-archive',
  form: 'docker-archive:FILE[:NAME:TAG|:@N]',
  help: 'docker save / docker load tar; FILE "-" is stdin or stdout',
  capabilities: { readsStdin: true, writesStdout: true, holdsOneImage: true },
  parse(rest, raw) {
    const [p, ref] = splitPath(rest);
    if (!p) throw invalidName(raw, 'missing path (use - for stdin/stdout)');
    let selection: ArchiveSelection = { kind: 'only' };
    if (ref !== undefined) {
      if (/^@\d+$/.test(ref)) selection = { kind: 'index', index: Number(ref.slice(1)) };
      else if (ref.startsWith('@')) {
        throw invalidName(raw, /^@[a-z0-9]+:/.test(ref) ? 'a docker-archive name takes :NAME:TAG or :@N, not a digest' : `"${ref}" is no image position: :@N counts the archive's images from 0`);
      } else {
        let parsed: ReturnType<typeof parseReference>;
        try {
          parsed = parseReference(ref);
        } catch (e) {
          // Credentials typed into it: parseReference's error shows the name with them redacted.
          if (userinfoEnd(ref) >= 0) throw e;
          // parseReference's message quotes the name as Docker completes it (library/…), which the user never typed.
          const why = /[A-Z]/.test(ref.split(':')[0]!) ? 'a name is lower case' : (e as Error).message.replace(/^invalid image reference "[^"]*": /, '');
          throw invalidName(raw, `"${ref}" is not NAME:TAG (${why})`);
        }
        if (parsed.digest) throw invalidName(raw, 'a docker-archive name takes NAME:TAG, not a digest');
        selection = { kind: 'name', name: ref };
      }
    }
    return { transport: 'docker-archive', file: p, selection, raw };
  },
  // A pipe named by its path is read as stdin is; so is a compressed archive (see isStreamedArchive).
  isStdio: (name) => isStreamedArchive(name.file),
  async openSource(name, ctx) {
    if (isStreamedArchive(name.file)) {
      // Loaded here: tar parsing of a pipe is needed only for archives on a pipe.
      const { dockerArchiveStream } = await import('./stream.js');
      return dockerArchiveStream(await streamedArchiveInput(name.file, name.raw, ctx.stdin), name.selection, name.raw);
    }
    const { openDockerArchiveSource } = await import('./source.js');
    return openDockerArchiveSource(name.file, name.selection, name.raw);
  },
  async openDestination(name, ctx, source) {
    if (name.selection.kind === 'index') throw new SmartError('USAGE', `${name.raw}: :@N selects an image to read; to write, name it :NAME:TAG`, { input: name.raw });
    const { DockerArchiveWriter } = await import('./writer.js');
    const repoTag = name.selection.kind === 'name' ? name.selection.name : source?.repoTag;
    const target = name.file === '-' ? { stream: ctx.stdout } : { file: path.resolve(name.file) };
    return new DockerArchiveWriter(name.raw, { ...target, ...(repoTag ? { repoTag } : {}), ...(ctx.onWarning ? { onWarning: ctx.onWarning } : {}) });
  },
  repoTag: (name) => (name.selection.kind === 'name' ? name.selection.name : undefined),
  localPaths: (name) => (name.file === '-' ? [] : [{ path: name.file, what: 'the source archive' }]),
};
