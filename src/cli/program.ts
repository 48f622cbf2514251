/**
 * The commander program: every command, its help and its errors. Loaded only when the fast path
 * (options.ts parseTransferArgs) does not take the command line.
 */
import { Argument, Command, CommanderError, InvalidArgumentError } from 'commander';
import { SmartError } from '../errors.js';
import { COPY_OPTIONS, EXIT_HELP, PULL_OPTIONS, PUSH_OPTIONS, outputOptions, type CommonFlags } from './options.js';
import { addCacheCommands } from './cache.js';
import { addStoreCommands } from './store.js';
import { addCommonOptions, addOptions } from './commander-options.js';
import { Output, guardedStdout } from './output.js';
import { runTransfer, transferOptionWhere } from './transfer.js';
import { VERSION, addVersionCommand } from './version.js';

export { CommanderError } from 'commander';

/** The command a commander error was raised by (`smart push`), for the hint of the usage line, and the program it is part of. */
const raisedBy = new WeakMap<CommanderError, { path: string; root: Command }>();

/**
 * An option this command does not take but others do (`smart push --link`): said as where it
 * applies, as an option given where it would be ignored is (options.ts refuseIgnoredOptions), in
 * place of commander's "unknown option". Undefined when no command takes it.
 */
function elsewhereOption(e: CommanderError, path: string, root: Command): SmartError | undefined {
  const typed = /unknown option '([^']*)'/.exec(e.message)?.[1];
  const flag = typed?.split('=')[0];
  if (!flag?.startsWith('--')) return undefined;
  const takers: string[] = [];
  const visit = (c: Command, name: string): void => {
    if (c.options.some((o) => o.long === flag)) takers.push(name);
    for (const sub of c.commands) visit(sub, `${name} ${sub.name()}`);
  };
  visit(root, 'smart');
  if (takers.length === 0) return undefined;
  const named = takers.length === 1 ? takers[0]! : `${takers.slice(0, -1).join(', ')} and ${takers.at(-1)!}`;
  const where = transferOptionWhere(flag);
  return new SmartError('USAGE', `${flag} applies to ${named}${where ? ` (${where})` : ''}, and this is ${path}`, { input: flag, hint: `run ${path} --help for its options` });
}

/**
 * Commander's refusal of a command line as our own usage error: one line (commander's
 * "error: " prefix dropped, its "(Did you mean …?)" line joined), with the help to run. `args`:
 * the command line, to say that an option typed after `--` (which ends the options, so that a
 * name may begin with `-`) was taken for one argument too many.
 */
export function usageError(e: CommanderError, args: readonly string[] = []): SmartError {
  const end = args.indexOf('--');
  const late = e.code === 'commander.excessArguments' && end >= 0 ? args.slice(end + 1).find((a) => /^-./.test(a)) : undefined;
  const message = e.message
    .replace(/^error: /, '')
    .split('\n')
    .map((l) => l.trim())
    .filter(Boolean)
    .join(' ')
    .replace('(Did you mean', '(did you mean');
  const raised = raisedBy.get(e);
  const elsewhere = raised && e.code === 'commander.unknownOption' ? elsewhereOption(e, raised.path, raised.root) : undefined;
  if (elsewhere) return elsewhere;
  const command = raised?.path ?? 'smart';
  const help = `run ${command} --help for usage`;
  return new SmartError('USAGE', message, { hint: late ? `${late} comes after --, which ends the options: give it before --; ${help}` : help });
}

/** `prog`: the name the command was run as (`smart`, `smart-push`), for help and messages. */
export function buildProgram(prog = 'smart'): Command {
  const program = new Command('smart')
    .description('Fast container image push, pull and build cache, without the Docker daemon')
    .version(VERSION)
    .addHelpText('after', EXIT_HELP);

  const transferAction = (mode: 'push' | 'pull' | 'copy') =>
    async function (this: Command, source: string, destination: string) {
      const flags = this.opts<CommonFlags>();
      await runTransfer(mode, source, destination, flags, new Output(outputOptions(flags)));
    };

  addCommonOptions(
    addOptions(
      program
        .command('push')
        .description('copy an image into a store, skipping every blob already there; prints the reference pushed (HOST/REPO@sha256:…)')
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

  addCommonOptions(
    addOptions(
      program
        .command('copy')
        .description('push or pull, by the destination: a push into a registry, file: or s3://, else a pull')
        .argument('<source>', 'image to read')
        .argument('<destination>', 'where to write it'),
      COPY_OPTIONS,
    ),
  )
    .addHelpText('after', EXIT_HELP)
    .action(transferAction('copy'));

  addCacheCommands(program);
  addStoreCommands(program);

  program
    .command('completion')
    .description('print the completion script of a shell (bash, zsh, fish), made from this command line')
    .addArgument(new Argument('<shell>', 'the shell').choices(['bash', 'zsh', 'fish']))
    .addHelpText(
      'after',
      `
Install:
  bash  smart completion bash > ~/.local/share/bash-completion/completions/smart   (or: source <(smart completion bash))
  zsh   smart completion zsh > "\${fpath[1]}/_smart"   (a directory in $fpath; then a new shell)
  fish  smart completion fish > ~/.config/fish/completions/smart.fish`,
    )
    .action(async (shell: string) => {
      const { completionScript } = await import('./completion.js');
      guardedStdout().write(completionScript(shell, buildProgram()));
    });

  addVersionCommand(program);

  // Errors are the caller's to report (one line, through main), never commander's own text, and
  // nothing in the program exits the process. Help goes to stdout through the guard against `| head`.
  // `path`: the command as it was invoked, for hints and the help's usage line: `smart cache
  // index`, or under an alias (`smart-push` runs `smart push`) `smart-push`, `smart-cache index`.
  const configure = (c: Command, path: string): void => {
    c.exitOverride((e) => {
      raisedBy.set(e, { path, root: program });
      throw e;
    });
    c.configureOutput({ writeOut: (text) => guardedStdout().write(text), outputError: () => undefined });
    c.configureHelp({ ...c.configureHelp(), commandUsage: (cmd) => `${path} ${cmd.usage()}` });
    refuseEmptyValues(c);
    for (const sub of c.commands) configure(sub, c === program && prog === `smart-${sub.name()}` ? prog : `${path} ${sub.name()}`);
  };
  configure(program, prog);
  return program;
}

/**
 * An option's value may not be empty, on every command (the one place this is checked; the fast
 * path leaves an empty value to commander): `--s3-endpoint "$S3_URL"` with the variable unset went
 * to AWS itself, `--platform ''`, `--redis ''`, `--creds ''` were as if the option were not there
 * (README: an empty value is refused).
 */
function refuseEmptyValues(command: Command): void {
  for (const option of command.options) {
    if (!option.required && !option.optional) continue;
    const parse = option.parseArg as ((value: string, previous: unknown) => unknown) | undefined;
    option.argParser((value: string, previous: unknown) => {
      if (value === '') throw new InvalidArgumentError(`${option.long} takes a value, not an empty string`);
      return parse ? parse(value, previous) : value;
    });
  }
}
