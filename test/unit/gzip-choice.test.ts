/**
 * The gzip engine `auto` picks: libdeflate in this process when the native addon has it, else
 * Node's zlib; never a program per block (slower than zlib in the process), which is used only
 * when named. Each case loads the modules afresh: the addon is looked for once per process.
 */
import { afterEach, describe, expect, it, vi } from 'vitest';
import { inCI, onPath } from '../harness/tools.js';

async function freshChoice(env: Record<string, string | undefined>) {
  vi.resetModules();
  for (const [k, v] of Object.entries(env)) vi.stubEnv(k, v);
  const choice = await import('../../src/pipeline/gzip-choice.js');
  const native = await import('../../src/pipeline/native.js');
  return { ...choice, ...native };
}

afterEach(() => {
  vi.unstubAllEnvs();
  vi.resetModules();
});

describe('the gzip engine auto picks', () => {
  // The README's path without the addon: libdeflate-tools may well be installed (it was the cause of a 0.38x push).
  it.runIf(onPath('libdeflate-gzip') || inCI)('is zlib when the addon is off, even with libdeflate-gzip on PATH', async () => {
    const { chooseGzipEngine, autoGzipEngine, findGzipEngine, nativeMissingWarning } = await freshChoice({ SMART_NATIVE: '0' });
    const auto = await chooseGzipEngine('auto');
    expect(auto.name).toBe('zlib');
    expect(auto.program).toBeNull();
    expect(autoGzipEngine().why).toMatch(/SMART_NATIVE=0.*used only when named/);
    // Named, the program is still there for whoever asks for it.
    const named = await chooseGzipEngine('libdeflate');
    expect(named.program).toMatch(/libdeflate-gzip$/);
    expect((await findGzipEngine('libdeflate'))!.program).toMatch(/libdeflate-gzip$/);
    // Turned off is a choice: nothing to warn of.
    expect(nativeMissingWarning('gzip', 'zlib')).toBeUndefined();
  });

  it("'fast' is igzip in this process when the addon has ISA-L, and an error without it (never the igzip program)", async () => {
    const on = await freshChoice({ SMART_NATIVE: undefined });
    const isal = on.nativeBinding()?.isalVersion;
    if (inCI) expect(isal, 'CI builds the addon with ISA-L (libisal-dev)').toBeDefined();
    if (isal) {
      const fast = await on.chooseGzipEngine('fast');
      expect(fast).toMatchObject({ name: 'igzip', program: null, implementation: `in-process isa-l ${isal}`, defaultLevel: 1, framing: 'members' });
      expect((await on.findGzipEngine('igzip'))!.program).toBeNull();
    }
    const off = await freshChoice({ SMART_NATIVE: '0' });
    await expect(off.chooseGzipEngine('fast')).rejects.toMatchObject({ code: 'UNSUPPORTED', hint: 'unset SMART_NATIVE' });
  });

  it('is libdeflate in this process when the addon has it, and never a program', async () => {
    const { chooseGzipEngine, nativeBinding, nativeStatus } = await freshChoice({ SMART_NATIVE: undefined });
    const auto = await chooseGzipEngine();
    expect(auto.program).toBeNull();
    if (nativeBinding()?.libdeflateVersion) {
      expect(auto.name).toBe('libdeflate');
      expect(auto.implementation).toBe(`in-process ${nativeBinding()!.libdeflateVersion}`);
      expect(nativeStatus()).toMatchObject({ loaded: true, disabled: false, libdeflate: nativeBinding()!.libdeflateVersion });
    } else {
      expect(inCI, 'CI builds the addon').toBe(false);
      expect(auto.name).toBe('zlib');
    }
  });
});
