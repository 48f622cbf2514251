/**
 * The compression engines this process would use, and why: the native addon, the gzip engine of
 * `auto` and of `--compression-level fast`, the zstd engine, the gunzip engine of pulls, where
 * digests are checked, and the cores they run on (`smart version --verbose`). Looks, never compresses; what it says is what a
 * push started now with the same environment does.
 */
import { usableCores } from '../pipeline/cores.js';
import { chooseGunzip } from '../pipeline/gunzip.js';
import { autoGzipEngine, inProcessIgzip } from '../pipeline/gzip-choice.js';
import { nativeBinding, nativeStatus, type NativeStatus } from '../pipeline/native.js';
import { DEFAULT_ZSTD_LEVEL, requireZstd } from '../pipeline/zstd.js';
import { batchWriter } from '../transports/rootfs/file-batch.js';

export interface EnginesReport {
  native: NativeStatus;
  gzip: { engine: string; implementation: string; level: number; blockSize: number; concurrency: number; why: string };
  /** `--compression-level fast`: igzip in this process, or null (the push fails, with `why`). */
  gzipFast: { engine: string; implementation: string | null; level: number; why: string };
  /** implementation null: no zstd here (`--compression zstd` fails, with `why`). */
  zstd: { implementation: string | null; level: number; workers: number; why: string };
  /** What a pull decompresses gzip layers with. */
  gunzip: { engine: string; implementation: string; why: string };
  /** Where a pull's digest checks of local blob files and of uncompressed layers run. */
  sha256: { where: 'thread pool' | 'main thread'; why: string };
  /** How a pull into a root filesystem or a bundle makes a layer's small files. */
  smallFiles: { how: 'runs and batches' | 'one by one'; why: string };
  /** The cores compression runs on: the CPUs this process may use, within its cgroup's CPU quota (pipeline/cores.ts). */
  cores: number;
  /** Where that count comes from. */
  coresWhy: string;
}

export async function enginesReport(): Promise<EnginesReport> {
  const native = nativeStatus();
  const { engine, why } = autoGzipEngine();
  const usable = usableCores();
  const cores = usable.count;
  const coresWhy =
    usable.quota === undefined
      ? 'the CPUs this process may run on, and no cgroup CPU quota'
      : `a cgroup CPU quota of ${+usable.quota.toFixed(2)} CPU${usable.quota === 1 ? '' : 's'}, of the ${usable.affinity} this process may run on`;
  let zstd: EnginesReport['zstd'];
  try {
    const z = await requireZstd();
    const inProcess = z.implementation.startsWith('in-process');
    zstd = {
      implementation: z.implementation,
      level: DEFAULT_ZSTD_LEVEL,
      workers: cores,
      why: inProcess ? 'the native addon has libzstd' : `the native addon ${native.disabled ? 'is turned off (SMART_NATIVE=0)' : native.loaded ? 'is built without zstd' : 'is absent'}: the zstd program`,
    };
  } catch (e) {
    zstd = { implementation: null, level: DEFAULT_ZSTD_LEVEL, workers: cores, why: (e as Error).message };
  }
  const gunzip = await chooseGunzip();
  const fast = inProcessIgzip();
  return {
    native,
    gzip: { engine: engine.name, implementation: engine.implementation, level: engine.defaultLevel, blockSize: engine.defaultBlockSize, concurrency: engine.defaultConcurrency(engine.defaultBlockSize), why },
    gzipFast: fast
      ? { engine: fast.name, implementation: fast.implementation, level: fast.defaultLevel, why: 'the native addon has ISA-L' }
      : { engine: 'igzip', implementation: null, level: 1, why: `the native addon ${native.disabled ? 'is turned off (SMART_NATIVE=0)' : native.loaded ? 'is built without ISA-L (libisal-dev)' : 'is absent'}` },
    zstd,
    gunzip:
      gunzip.name === 'isal'
        ? { engine: gunzip.name, implementation: `in-process isa-l ${native.isal ?? '?'}, on the thread pool`, why: 'the native addon has ISA-L (no process per layer; a local blob file is read, hashed and inflated by the same jobs)' }
        : gunzip.program
          ? { engine: gunzip.name, implementation: gunzip.program, why: 'igzip is on PATH, the native addon with ISA-L is not here (igzip decompresses faster than zlib; a blob under 256 KiB stays in zlib, not worth a process)' }
          : { engine: gunzip.name, implementation: 'node-zlib', why: 'neither the native addon with ISA-L nor igzip is here (scripts/setup-debian.sh installs both)' },
    sha256: nativeBinding()?.sha256Create
      ? { where: 'thread pool', why: "the native addon found Node's OpenSSL: the same sha256 as crypto, off the thread that writes the tree" }
      : { where: 'main thread', why: `the native addon ${native.disabled ? 'is turned off (SMART_NATIVE=0)' : native.loaded ? "found no OpenSSL in this Node" : 'is absent'}: crypto` },
    smallFiles:
      nativeBinding()?.extractFiles && batchWriter()
        ? {
            how: 'runs and batches',
            why: `the native addon has extractFiles and writeFiles: the runs of small files in a layer's new directories made from the tar's bytes, ${nativeBinding()?.extractFilesKeeps ? "a kept layer's copies and index lines with them" : 'but not in a kept layer (an addon of another version: its runs keep no layer)'}, the others in batches on the thread pool${nativeBinding()?.copyStoredFiles ? "; a layer laid from the layer store has its runs made from the store's index lines (copyStoredFiles)" : ''}`,
          }
        : { how: 'one by one', why: `the native addon ${native.disabled ? 'is turned off (SMART_NATIVE=0)' : native.loaded ? 'is of another version than this code (no extractFiles, or other writeFiles records)' : 'is absent'}: each file made on the thread that reads the tar` },
    cores,
    coresWhy,
  };
}
