/**
 * `smart version [--verbose] [--json]`: the version alone (as `--version`), or with what this
 * machine will compress with and why: Node, the native addon (its libraries, or why it is absent
 * and the command that builds it), the gzip engine of a push, the zstd engine, the gunzip engine
 * of a pull, the cores.
 */
import type { Command } from 'commander';
import { Output, formatBytes, guardedStdout } from './output.js';

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
      if (flags.json) {
        out.json({ command: 'version', version: VERSION, node, ...r });
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
        `zstd engine: ${r.zstd.implementation ? `${r.zstd.implementation}, level ${r.zstd.level}, ${r.zstd.workers} workers; because ${r.zstd.why}` : `none: ${r.zstd.why}`}`,
        `gunzip engine (pulls): ${r.gunzip.engine}, ${r.gunzip.implementation}; because ${r.gunzip.why}`,
        `cores for compression: ${r.cores}`,
      ];
      guardedStdout().write(`${lines.join('\n')}\n`);
    });
}
