/** Where local state lives unless --cache-dir says: $XDG_CACHE_HOME/smartlayer when that is absolute, else ~/.cache/smartlayer. */
import { describe, expect, it } from 'vitest';
import { defaultCacheDir } from '../../src/ops/local-state.js';

describe('defaultCacheDir', () => {
  it('takes an absolute XDG_CACHE_HOME, ignores a relative one (the XDG spec), and falls back to the home', () => {
    expect(defaultCacheDir({ XDG_CACHE_HOME: '/var/cache/ci', HOME: '/home/u' })).toBe('/var/cache/ci/smartlayer');
    // Relative: each run would keep its cache under the directory it started in.
    expect(defaultCacheDir({ XDG_CACHE_HOME: 'relative/cache', HOME: '/home/u' })).toBe('/home/u/.cache/smartlayer');
    expect(defaultCacheDir({ XDG_CACHE_HOME: '', HOME: '/home/u' })).toBe('/home/u/.cache/smartlayer');
  });
});
