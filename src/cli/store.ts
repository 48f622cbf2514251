/** `smart store ...`: thin commands over ops/store-check.ts. */
import { Option, type Command } from 'commander';
import { SmartError, printable } from '../errors.js';
import { commanderParser } from './commander-options.js';
import { cancel, outputOptions, positiveInt, type CommonFlags } from './options.js';
import { Output, formatBytes, plural } from './output.js';

interface StoreFlags extends CommonFlags {
  quick?: boolean;
}

type Report = Awaited<ReturnType<typeof import('../ops/store-check.js').checkStore>>;

/** Problems printed one a line before the summary; `--json` holds them all. */
const SHOWN_PROBLEMS = 20;

function dangling(r: Report): string {
  const n = r.orphans.layerLinks.filter((l) => l.dangling).length;
  return n ? ` (${n} to removed blobs, as garbage-collect leaves them)` : '';
}

/** The one summary line: what was checked, then problems or "consistent", then what is only unused. */
export function summaryLine(r: Report): string {
  const checked =
    `${plural(r.blobs.count, 'blob')} (${formatBytes(r.blobs.bytes)}, ${r.quick ? 'sizes only' : `${r.blobs.rehashed} rehashed`}), ` +
    (r.format === 'distribution' ? `${plural(r.tags, 'tag')} in ${plural(r.repositories, 'repository', 'repositories')}, ${plural(r.links, 'link')}` : `${plural(r.tags, 'tag')}, ${plural(r.manifests, 'manifest')}`);
  const counts = new Map<string, number>();
  for (const p of r.problems) counts.set(p.kind, (counts.get(p.kind) ?? 0) + 1);
  const verdict = r.consistent
    ? 'consistent'
    : `${plural(r.problems.length, 'inconsistency', 'inconsistencies')} (${[...counts].map(([k, n]) => `${n} ${k}`).join(', ')})`;
  const info = [
    r.orphans.blobs.length ? `${plural(r.orphans.blobs.length, 'orphan blob')} (${formatBytes(r.orphans.blobs.reduce((s, b) => s + b.size, 0))})` : '',
    r.orphans.layerLinks.length ? `${plural(r.orphans.layerLinks.length, 'unused layer link')}${dangling(r)}` : '',
    r.orphans.untaggedManifests.length ? plural(r.orphans.untaggedManifests.length, 'untagged manifest') : '',
    r.orphans.tagHistory.length ? `${plural(r.orphans.tagHistory.length, 'tag history link')} to removed manifests` : '',
    r.uploads.length ? plural(r.uploads.length, 'upload') : '',
    r.temporaries.length ? plural(r.temporaries.length, 'temporary file') : '',
    r.unrecognised.length ? plural(r.unrecognised.length, 'unrecognised file') : '',
  ].filter(Boolean);
  return `${r.store}: ${verdict}: ${checked}${info.length ? `; ${info.join(', ')}` : ''}`;
}

export function addStoreCommands(program: Command): void {
  const store = program.command('store').description('a registry storage or OCI layout as a whole: check its consistency');
  store
    .command('check')
    .description(
      'read-only: every blob rehashed against its name, every link well formed and pointing at a blob, every tag (and manifest) a whole image ' +
        '(manifest, config, layers present with their sizes and linked in the repository, indexes recursively); orphans are reported as information. ' +
        'Exit 1 on any inconsistency',
    )
    .argument('<store>', 'file:ROOT, s3://BUCKET[/ROOT] or oci:DIR')
    .option('--quick', 'do not rehash blobs: check sizes only (manifests are still read and hashed)')
    .addOption(new Option('--jobs <n>', 'blobs hashed at once').argParser(commanderParser(positiveInt('--jobs', 256))).default(4))
    .addOption(new Option('--timeout <seconds>', 'give up after this long').argParser(commanderParser(positiveInt('--timeout', 31_536_000))))
    .option('--s3-endpoint <url>', 'S3 endpoint (default: $AWS_ENDPOINT_URL_S3 / $AWS_ENDPOINT_URL)')
    .option('--s3-region <region>', 'S3 region (default: $AWS_REGION, then us-east-1)')
    .option('--json', 'print the whole report as JSON on stdout')
    .option('-q, --quiet', 'print nothing but errors (and the --json report)')
    .option('--debug', 'print stack traces of errors')
    .addHelpText(
      'after',
      '\nThe summary is one line on stderr; each problem gets a line before it (the first ' +
        `${SHOWN_PROBLEMS}; --json lists them all, with the orphans).\nExit status: 0 consistent, 1 inconsistent or the store unreadable, 2 usage error.`,
    )
    .action(async function (this: Command, name: string) {
      const flags = this.opts<StoreFlags>();
      const out = new Output(outputOptions(flags));
      const { checkStore } = await import('../ops/store-check.js');
      const timeout = flags.timeout ? setTimeout(() => cancel.abort(new SmartError('CANCELLED', `timed out after ${flags.timeout} s (--timeout)`)), flags.timeout * 1000) : undefined;
      let report: Report;
      try {
        report = await checkStore(name, {
          ...(flags.jobs ? { jobs: flags.jobs } : {}),
          ...(flags.quick ? { quick: true } : {}),
          ...(flags.s3Endpoint ? { s3Endpoint: flags.s3Endpoint } : {}),
          ...(flags.s3Region ? { s3Region: flags.s3Region } : {}),
          signal: cancel.signal,
        });
      } catch (e) {
        throw cancel.signal.aborted ? cancel.signal.reason : e;
      } finally {
        clearTimeout(timeout);
      }
      if (flags.json) out.json(report);
      const summary = summaryLine(report);
      if (report.consistent) {
        out.info(summary);
        return;
      }
      if (!flags.quiet) {
        // Paths and link contents come from the store: escaped, one line each.
        for (const p of report.problems.slice(0, SHOWN_PROBLEMS)) {
          const image = p.repository !== undefined ? `${p.repository}${p.tag !== undefined ? `:${p.tag}` : ''}: ` : p.tag !== undefined ? `${p.tag}: ` : '';
          out.info(`problem: ${p.kind}: ${printable(`${image}${p.message} (${p.path})`)}`);
        }
        if (report.problems.length > SHOWN_PROBLEMS) out.info(`problem: … and ${report.problems.length - SHOWN_PROBLEMS} more (--json lists them all)`);
      }
      throw new SmartError('INCONSISTENT', summary, { input: name });
    });
}
