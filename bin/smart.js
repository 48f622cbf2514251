#!/usr/bin/env node
import { main } from '../dist/bundle/main.js';

const code = await main(process.argv);
process.exitCode = code;
// The work is done: a connection some library still holds open (an abandoned connect to a registry
// that never answered) must not keep the command alive. A clean run has exited before this fires.
setTimeout(() => process.exit(code), 200).unref();
