#!/usr/bin/env node
// smart-push ARGS is smart push ARGS.
import { main } from '../dist/cli/main.js';

process.exitCode = await main([process.argv[0], process.argv[1], 'push', ...process.argv.slice(2)], 'smart-push');
