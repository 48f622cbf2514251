/** What packages print by themselves during a command goes to its warning channel: one line each, secrets hidden, the console given back after. */
import { describe, expect, it } from 'vitest';
import { captureForeignOutput, foreignOutputTo } from '../../src/cli/foreign-output.js';

describe('captureForeignOutput', () => {
  it('takes console printing and process warnings as one-line warnings, secrets redacted, until given back', async () => {
    const warn = console.warn;
    const nodeListeners = process.listeners('warning').length;
    const early: string[] = [];
    const late: string[] = [];
    const restore = captureForeignOutput((m) => early.push(m));
    try {
      console.warn('[WARN] This Redis server does not require a password');
      foreignOutputTo((m) => late.push(m));
      console.log('connecting to %s\nretrying', 'redis://user:hunter2secret@cache.internal:6379');
      console.error('');
      process.emitWarning('something is deprecated', 'DeprecationWarning');
      await new Promise((resolve) => setImmediate(resolve));
    } finally {
      restore();
    }
    expect(early).toEqual(['This Redis server does not require a password']);
    expect(late).toEqual(['connecting to redis://[redacted]@cache.internal:6379 retrying', 'DeprecationWarning: something is deprecated']);
    expect(console.warn).toBe(warn);
    expect(process.listeners('warning')).toHaveLength(nodeListeners);
  });
});
