/**
 * The errors a registry connection fails with, the same whichever client read it (Node's, in
 * http.ts, or the bulk reader of blob bodies, bulk-get.ts): coded as Node codes its own, so that
 * errors.ts and transient.ts tell what is transient and what to say by the code alone.
 */
import { HTTP_STALL, codedError } from '../../transient.js';

export { codedError, connectTimeoutError } from '../../transient.js';

/** What a request aborted before its answer fails with: the abort's reason. */
export function abortReason(signal: AbortSignal): Error {
  return signal.reason instanceof Error ? signal.reason : new Error('aborted');
}

/** The error a body read while the request is aborted fails with (an AbortError, as fetch's). */
export function abortError(signal: AbortSignal): Error {
  return Object.assign(new Error('the operation was aborted', { cause: signal.reason }), { name: 'AbortError', code: 'ABORT_ERR' });
}

/** No byte for `ms` while the registry had something to send. */
export function stallError(ms: number): Error {
  return codedError(`no data for ${Math.round(ms / 1000)} s`, HTTP_STALL);
}

/**
 * Calls `stalled` after one more turn of the event loop, unless bytes moved on `socket` meanwhile
 * (the socket's timeout is then already running again). Timers run before the poll phase reads
 * what arrived: a loop kept busy past the stall period (a large synchronous write, a machine too
 * loaded to run the process) would otherwise take its own delay for the registry's silence.
 */
export function afterQuietTurn(socket: { bytesRead: number; bytesWritten: number }, stalled: () => void): void {
  const moved = socket.bytesRead + socket.bytesWritten;
  setImmediate(() => {
    if (socket.bytesRead + socket.bytesWritten === moved) stalled();
  });
}

/** A request after Http.close. */
export function closedError(): Error {
  return codedError('the connections to the registry are closed', 'SMART_HTTP_CLOSED');
}
