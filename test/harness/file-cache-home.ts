/**
 * Runs before each test file (vitest `setupFiles`): every program the file starts from
 * process.env, and the library it calls in-process, use the file's own cache home (testCacheHome),
 * never another file's nor the user's.
 */
import { testCacheHome } from './run.js';

process.env.XDG_CACHE_HOME = testCacheHome();
