/**
 * undici's connection pool and request API, without the rest of undici. Its index module also
 * loads fetch, WebSocket, caches and mocks: ~70 ms at every start of a command that talks to a
 * registry, against ~24 ms for the two parts used here. The version is pinned (package.json), and
 * the same composition as undici's index (the request API mixed into the dispatcher) is done here.
 */
import { createRequire } from 'node:module';
import { setFlagsFromString } from 'node:v8';
import type { Agent as UndiciAgent } from 'undici';
import { isShortLivedProcess } from '../../runtime.js';

// In a short-lived command (see runtime.ts), WebAssembly stays on the baseline compiler so that the
// exit does not wait for undici's parser to be optimized. Set here, when a registry is first used,
// not at start-up: a flag changed at start-up makes V8 refuse the code cache of every Node module
// loaded after it (~10 ms on a push that never talks HTTP).
if (isShortLivedProcess()) setFlagsFromString('--liftoff-only');

const require = createRequire(import.meta.url);
const Dispatcher = require('undici/lib/dispatcher/dispatcher.js') as { prototype: object };
const api = require('undici/lib/api/index.js') as object;
Object.assign(Dispatcher.prototype, api);

export const Agent = require('undici/lib/dispatcher/agent.js') as typeof UndiciAgent;
export type Agent = UndiciAgent;
