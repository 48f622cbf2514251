#!/usr/bin/env node
import { setFlagsFromString } from 'node:v8';
import { main } from '../dist/cli/main.js';

// WebAssembly (undici's HTTP parser) stays on V8's baseline compiler, whose code is ready at
// once: the optimizing one compiles in the background, and Node waits for it before exiting
// (~70 ms after every command that talks to a registry). Parsing HTTP is a negligible part of a
// transfer: a 200 MB pull takes as long either way.
setFlagsFromString('--liftoff-only');

const code = await main(process.argv);
process.exitCode = code;
// The work is done: a connection some library still holds open (an abandoned connect to a registry
// that never answered) must not keep the command alive. A clean run has exited before this fires.
setTimeout(() => process.exit(code), 200).unref();
