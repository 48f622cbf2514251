#!/usr/bin/env node
// smart-cache ARGS is smart cache ARGS.
import { main } from '../dist/bundle/main.js';

const code = await main([process.argv[0], process.argv[1], 'cache', ...process.argv.slice(2)], 'smart-cache');
process.exitCode = code;
setTimeout(() => process.exit(code), 200).unref();
