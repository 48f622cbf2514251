/**
 * undici's connection pool and request API, without the rest of undici. Its index module also
 * loads fetch, WebSocket, caches and mocks: ~70 ms at every start of a command that talks to a
 * registry, against ~24 ms for the two parts used here. The version is pinned (package.json), and
 * the same composition as undici's index (the request API mixed into the dispatcher) is done here.
 */
import { createRequire } from 'node:module';
import type { Agent as UndiciAgent } from 'undici';

const require = createRequire(import.meta.url);
const Dispatcher = require('undici/lib/dispatcher/dispatcher.js') as { prototype: object };
const api = require('undici/lib/api/index.js') as object;
Object.assign(Dispatcher.prototype, api);

export const Agent = require('undici/lib/dispatcher/agent.js') as typeof UndiciAgent;
export type Agent = UndiciAgent;
