#!/usr/bin/env node
// smart-cache ARGS is smart cache ARGS.
import { setFlagsFromString } from 'node:v8';
import { main } from '../dist/cli/main.js';

// WebAssembly (undici's HTTP parser) stays on V8's baseline compiler, whose code is ready at
// once: the optimizing one compiles in the background, and Node waits for it before exiting
// (~70 ms after every command that talks to a registry). Parsing HTTP is a negligible part of a
// transfer: a 200 MB pull takes as long either way.
setFlagsFromString('--liftoff-only');

const code = await main([process.argv[0], process.argv[1], 'cache', ...process.argv.slice(2)], 'smart-cache');
process.exitCode = code;
setTimeout(() => process.exit(code), 200).unref();
