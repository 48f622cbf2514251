/**
 * What bin/*.js load (bundled as dist/bundle/main.js): the command, with its compiled code kept on
 * this machine. boot.js comes first, and ES modules run in the order they are imported, so the
 * cache is on before main.js's modules (the bundle's chunks) load.
 */
import './boot.js';

export { main, EXIT_BROKEN_PIPE } from './main.js';
