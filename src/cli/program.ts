/**
 * The commander program: every command, its help and its errors. Loaded only when the fast path
 * (options.ts parseTransferArgs) does not take the command line.
 */
import { Command } from 'commander';
import { EXIT_HELP, PULL_OPTIONS, PUSH_OPTIONS, outputOptions, type CommonFlags } from './options.js';
import { addCacheCommands } from './cache.js';
import { addCommonOptions, addOptions } from './commander-options.js';
import { Output } from './output.js';
import { runTransfer } from './transfer.js';

export { CommanderError } from 'commander';

export function buildProgram(): Command {
  const program = new Command('smart')
    .description('Fast container image push, pull and build cache, without the Docker daemon')
    .version('0.1.0')
    .showHelpAfterError('(run with --help for usage)')
    .addHelpText('after', EXIT_HELP);

  const transferAction = (mode: 'push' | 'pull') =>
    async function (this: Command, source: string, destination: string) {
      const flags = this.opts<CommonFlags>();
      await runTransfer(mode, source, destination, flags, new Output(outputOptions(flags)));
    };

  addCommonOptions(
    addOptions(
      program
        .command('push')
        .description('copy an image into a store, skipping every blob already there')
        .argument('<source>', 'image to read, e.g. docker-archive:img.tar or oci:dir:tag')
        .argument('<destination>', 'store to write, e.g. file:/srv/registry#team/app:1.0'),
      PUSH_OPTIONS,
    ),
  )
    .addHelpText('after', EXIT_HELP)
    .action(transferAction('push'));

  addCommonOptions(
    addOptions(
      program
        .command('pull')
        .description('copy an image out of a store into a layout, an archive, a root filesystem or a runtime bundle')
        .argument('<source>', 'image to read, e.g. file:/srv/registry#team/app:1.0')
        .argument('<destination>', 'where to write it, e.g. bundle:./app or oci:dir:tag'),
      PULL_OPTIONS,
    ),
  )
    .addHelpText('after', EXIT_HELP)
    .action(transferAction('pull'));

  addCacheCommands(program);
  // Errors are the caller's to report: nothing in the program exits the process.
  const override = (c: Command): void => {
    c.exitOverride();
    c.commands.forEach(override);
  };
  override(program);
  return program;
}
