/**
 * The first module of the command's entry (entry.ts), loaded before the rest of the command: it
 * turns the compile cache on (compile-cache.ts), so that the command's own chunks, which load
 * next, are compiled with it as well as the packages they load. Bundled (scripts/bundle-cli.mjs),
 * this module and what it imports make a chunk of their own that dist/bundle/main.js requires
 * first; the chunks beside it are the command's.
 */
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { enableCompileCache } from './compile-cache.js';

enableCompileCache(path.dirname(fileURLToPath(import.meta.url)));
