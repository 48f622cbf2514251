/**
 * A whole archive (a `docker save` tar, an ADD's tarball) as the tar it holds: decompressed when its
 * first bytes are those of a gzip, zstd, bzip2 or xz stream, as Docker's own reader decides, else
 * `input` itself. The decompressors are loaded only for a compressed one.
 */
import { Readable } from 'node:stream';
import { SmartError } from '../errors.js';
import { ARCHIVE_MAGIC_BYTES, sniffArchiveCompression } from '../oci/mediatypes.js';

/** The tar in `input`; `what` names it in errors (with the format: `image.tar.gz (gzip)`). */
export async function archiveTarStream(input: Readable, what: string): Promise<Readable> {
  const { head, stream } = await peek(input, ARCHIVE_MAGIC_BYTES);
  const compression = sniffArchiveCompression(head);
  if (compression === 'none') return stream;
  const { decompress } = await import('./compression.js');
  const gunzip = compression === 'gzip' ? await (await import('./parallel-gzip.js')).chooseGunzip() : undefined;
  return decompress(stream, compression, `${what} (${compression})`, gunzip ? { gunzip } : {});
}

/**
 * The first `n` bytes of `input` (fewer if it ends first), and the stream to read them again from.
 * A source that fails while they are read (a read that destroys it: a dropped connection) rejects
 * with its error, even when the read returned bytes first. One that fails later, before its reader
 * attaches (the caller may await something first), keeps its error for that reader (`errored`,
 * which a pipeline or an iterator reads) rather than throwing it as an unhandled 'error' event.
 */
export function peek(input: Readable, n: number): Promise<{ head: Buffer; stream: Readable }> {
  // Failed, ended or closed already: its 'error', 'end' or 'close' has gone by.
  if (input.errored) return Promise.reject(input.errored);
  if (input.readableEnded) return Promise.resolve({ head: Buffer.alloc(0), stream: Readable.from([]) });
  if (input.destroyed) return Promise.reject(closedEarly());
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let got = 0;
    const done = (error?: Error, ended = false) => {
      input.off('readable', onReadable);
      input.off('end', onEnd);
      input.off('error', onError);
      input.off('close', onClose);
      input.on('error', () => undefined);
      if (error) return reject(error);
      if (input.destroyed && !ended) return reject(input.errored ?? closedEarly());
      const head = Buffer.concat(chunks);
      // Put back; a stream that has ended takes nothing back, so what it held is the whole input.
      if (ended) return resolve({ head, stream: Readable.from(head.length > 0 ? [head] : []) });
      if (head.length > 0) input.unshift(head);
      resolve({ head, stream: input });
    };
    const onReadable = () => {
      for (let c: Buffer | null; got < n && (c = input.read() as Buffer | null) !== null; got += c.length) chunks.push(c);
      if (got >= n) done();
    };
    const onEnd = () => done(undefined, true);
    const onError = (e: Error) => done(e);
    // Destroyed with no error (no 'end', no 'error' to come).
    const onClose = () => done(input.errored ?? closedEarly());
    input.on('readable', onReadable);
    input.once('end', onEnd);
    input.once('error', onError);
    input.once('close', onClose);
  });
}

function closedEarly(): SmartError {
  return new SmartError('CANCELLED', 'the stream closed before its first bytes were read');
}
