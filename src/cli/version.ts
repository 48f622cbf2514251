/**
 * `smart version [--verbose] [--json]`: the version alone (as `--version`), or with what this
 * machine will compress with and why: Node, the native addon (its libraries, or why it is absent
 * and the command that builds it), the gzip engine of a push, the zstd engine, the gunzip engine
 * of a pull, how a pull makes small files, the cores, malloc's pages, and where compiled code is kept.
 */
import type { Command } from 'commander';
import fs from 'node:fs';
import { Output, formatBytes, guardedStdout } from './output.js';
import { compileCacheStatus } from './compile-cache.js';

/**
 * Whether glibc's malloc puts this process's heap on transparent huge pages, and why: bin/*.js
 * start Node with GLIBC_TUNABLES=glibc.malloc.hugetlb=1 unless the caller set GLIBC_TUNABLES.
 */
export function mallocReport(env: NodeJS.ProcessEnv = process.env): { hugePages: boolean; why: string } {
  const header = (process.report?.getReport() as { header?: { glibcVersionRuntime?: string } } | undefined)?.header;
  if (process.platform !== 'linux' || !header?.glibcVersionRuntime) return { hugePages: false, why: 'this Node does not run on glibc' };
  const tunables = env.GLIBC_TUNABLES;
  const hugetlb = /(?:^|:)glibc\.malloc\.hugetlb=([12])(?::|$)/.exec(tunables ?? '');
  if (!hugetlb) {
    return {
      hugePages: false,
      why: tunables === undefined ? 'GLIBC_TUNABLES is not set (Node was started without bin/smart, e.g. by `node bin/smart.js`)' : 'GLIBC_TUNABLES is set without glibc.malloc.hugetlb',
    };
  }
  let thp = '';
  try {
    thp = fs.readFileSync('/sys/kernel/mm/transparent_hugepage/enabled', 'utf8');
  } catch {
    return { hugePages: false, why: 'the kernel has no transparent huge pages' };
  }
  const mode = /\[(\w+)\]/.exec(thp)?.[1] ?? 'unknown';
  if (mode === 'never') return { hugePages: false, why: 'transparent huge pages are off in this kernel ([never])' };
  return { hugePages: true, why: `GLIBC_TUNABLES=glibc.malloc.hugetlb=${hugetlb[1]} and the kernel's transparent huge pages are [${mode}] (fewer page faults on fresh buffers; GLIBC_TUNABLES= turns it off)` };
}

/** The version of `--version` and `smart version`. */
export const VERSION = '0.1.0';

export function addVersionCommand(program: Command): void {
  program
    .command('version')
    .description('print the version; --verbose: also Node, the native addon and the compression engines a push will use, and why')
    .option('--verbose', 'also Node, the native addon, the gzip and zstd engines and the cores they use')
    .option('--json', 'the same as one document on stdout')
    .action(async (flags: { verbose?: boolean; json?: boolean }) => {
      const out = new Output({ json: Boolean(flags.json), quiet: false, debug: false });
      if (!flags.verbose && !flags.json) {
        guardedStdout().write(`${VERSION}\n`);
        return;
      }
      const { enginesReport } = await import('../ops/engines.js');
      const r = await enginesReport();
      const node = { version: process.versions.node, path: process.execPath };
      const malloc = mallocReport();
      const compileCache = compileCacheStatus();
      if (flags.json) {
        out.json({ command: 'version', version: VERSION, node, malloc, compileCache, ...r });
        return;
      }
      const n = r.native;
      const libraries = [n.libdeflate ? `libdeflate ${n.libdeflate}` : null, n.zstd ? `zstd ${n.zstd}` : null, n.isal ? `isa-l ${n.isal}` : null].filter(Boolean).join(', ');
      const lines = [
        `smart ${VERSION}`,
        `node: ${node.version} (${node.path})`,
        `native addon: ${n.loaded ? `loaded (${libraries}) from ${n.path}${n.reason ? `, ${n.reason}` : ''}` : n.reason}${n.fix ? `; to build it: ${n.fix}` : ''}`,
        `gzip engine (auto): ${r.gzip.engine}, ${r.gzip.implementation}, level ${r.gzip.level}, ${formatBytes(r.gzip.blockSize)} blocks, ${r.gzip.concurrency} at once; because ${r.gzip.why}`,
        `gzip engine (--compression-level fast): ${r.gzipFast.implementation ? `${r.gzipFast.engine}, ${r.gzipFast.implementation}, level ${r.gzipFast.level}` : 'none'}; because ${r.gzipFast.why}`,
        `zstd engine: ${r.zstd.implementation ? `${r.zstd.implementation}, level ${r.zstd.level}, ${r.zstd.workers} worker${r.zstd.workers === 1 ? '' : 's'}; because ${r.zstd.why}` : `none: ${r.zstd.why}`}`,
        `gunzip engine (pulls): ${r.gunzip.engine}, ${r.gunzip.implementation}; because ${r.gunzip.why}`,
        `sha256 checks (pulls): on the ${r.sha256.where}; because ${r.sha256.why}`,
        `small files (rootfs:, bundle:): ${r.smallFiles.how}; because ${r.smallFiles.why}`,
        `cores for compression: ${r.cores}; because ${r.coresWhy}`,
        `malloc: ${malloc.hugePages ? 'on transparent huge pages' : 'on 4 KiB pages'}; because ${malloc.why}`,
        `compile cache: ${compileCache.on ? `on, in ${compileCache.dir}` : 'off'}; because ${compileCache.why}`,
      ];
      guardedStdout().write(`${lines.join('\n')}\n`);
    });
}
