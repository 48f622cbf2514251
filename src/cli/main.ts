/**
 * The `smart` command line: parses flags, calls the library, prints. The only place that catches
 * errors and chooses an exit code: 0 success, 2 usage error, 1 anything else, 130/143/129 a signal,
 * 141 a reader of the image on stdout that went away.
 */
import { SmartError, isReaderGone, isSmartError } from '../errors.js';
import { outputOptions, parseTransferArgs, cancel } from './options.js';
import { Output, stdoutClosed, stdoutError, type OutputOptions } from './output.js';
import { runTransfer } from './transfer.js';
import { deferExtraCaCerts } from '../tls-trust.js';
import { enableCompileCache } from './compile-cache.js';
import { captureForeignOutput } from './foreign-output.js';
import type { Command } from 'commander';

/** Exit status when the reader of stdout went away before the image was written (`… docker-archive:- | head`): 128 + SIGPIPE, as a program that SIGPIPE killed. */
export const EXIT_BROKEN_PIPE = 141;

/** The signals that stop a run cleanly: the word its error line says, and its exit status (128 + the number). */
const STOP_SIGNALS = {
  SIGINT: { word: 'interrupted', status: 130 },
  SIGTERM: { word: 'terminated', status: 143 },
  SIGHUP: { word: 'hung up', status: 129 },
} as const;
type StopSignal = keyof typeof STOP_SIGNALS;

/**
 * How long a cancelled run (a signal, --timeout) may take to stop cleanly before it is ended at
 * once: its clean-up is done in far less, unless an operation of the system never returns (the
 * open of a named pipe nobody opens the other end of, on a thread of Node's pool).
 */
const STOP_GRACE_MS = 10_000;

/**
 * Ends the process now, by `sig` with its default action, as if it had not been caught: the shell
 * sees 128 + its number. Not process.exit, which waits for every thread of Node's pool to finish
 * its operation first, for ever behind one that never returns. Any listener left to `sig` (or
 * SIGKILL asked for) makes it SIGKILL.
 */
function endNow(sig: StopSignal | 'SIGKILL'): never {
  process.kill(process.pid, sig !== 'SIGKILL' && process.listenerCount(sig) === 0 ? sig : 'SIGKILL');
  process.kill(process.pid, 'SIGKILL');
  throw new Error('unreachable');
}

/** Runs the CLI on `argv` (as process.argv) and resolves to the exit code; never calls process.exit. */
export async function main(argv: string[], prog = 'smart'): Promise<number> {
  // Loaded with the program, only when commander parses the command line.
  let program: typeof import('./program.js') | undefined;
  const args = argv.slice(2);
  const flagsOf = (): OutputOptions => ({ json: args.includes('--json'), quiet: args.includes('-q') || args.includes('--quiet'), debug: args.includes('--debug') });
  // What went to stdout that did not all arrive (`> FILE` on a full disk), said in one line: its exit status.
  const lostOutput = async (): Promise<number | undefined> => {
    const lost = await stdoutError();
    if (!lost) return undefined;
    new Output({ ...flagsOf(), json: false }).error(prog, lost);
    return lost.exitCode;
  };
  // What packages print by themselves: warnings of ours (-q and --progress json hold), until the
  // command names its own channel (foreign-output.ts).
  const jsonProgress = args.some((a, i) => a === '--progress=json' || (a === '--progress' && args[i + 1] === 'json'));
  const restoreOutput = captureForeignOutput((m) => {
    const flags = flagsOf();
    if (!flags.quiet) new Output({ ...flags, progressJson: jsonProgress }).warn(m);
  });
  // NODE_EXTRA_CA_CERTS, which bin/*.js set aside: read at the first TLS connection (tls-trust.ts).
  deferExtraCaCerts(process.env, (m) => new Output(flagsOf()).warn(m));
  // Before any package loads: their compiled code is kept on this machine (compile-cache.ts).
  enableCompileCache();
  // Ctrl-C / SIGTERM cancel the work: in-flight transfers stop, temporary data is removed, nothing
  // half-written remains; then the exit status is 128 + the signal number, also when the work was
  // done before the signal could stop it (its error line says so). A second one ends it at once.
  // SIGHUP too: a closed terminal or a dropped ssh session ends a run as Ctrl-C does, nothing half-written left.
  let signalled: StopSignal | undefined;
  const unlisten = () => {
    for (const [sig, handler] of handlers) process.off(sig, handler);
  };
  const onSignal = (sig: StopSignal) => {
    if (signalled) {
      unlisten();
      endNow(sig);
    }
    signalled = sig;
    cancel.abort(new SmartError('CANCELLED', STOP_SIGNALS[sig].word));
  };
  const handlers = (Object.keys(STOP_SIGNALS) as StopSignal[]).map((sig) => [sig, () => onSignal(sig)] as const);
  for (const [sig, handler] of handlers) process.on(sig, handler);
  // A cancelled run that has not stopped after STOP_GRACE_MS is held by an operation that does not
  // return: ended then, its error line saying so; by its signal, or SIGKILL for --timeout (its
  // status 1 cannot be given without the wait process.exit would make).
  let graceTimer: NodeJS.Timeout | undefined;
  const onCancel = () => {
    graceTimer = setTimeout(() => {
      const reason = isSmartError(cancel.signal.reason) ? cancel.signal.reason.message : 'cancelled';
      const stuck = `${reason}, and did not stop within ${STOP_GRACE_MS / 1000} s: an operation of the system never returned (the open of a named pipe nobody opens the other end of, for one); ended without its clean-up`;
      new Output(flagsOf()).error(prog, new SmartError('CANCELLED', stuck));
      unlisten();
      endNow(signalled ?? 'SIGKILL');
    }, STOP_GRACE_MS);
    graceTimer.unref();
  };
  cancel.signal.addEventListener('abort', onCancel, { once: true });
  // Node ends a process whose event loop has nothing left to wait on, though the command's own
  // promise never settled (a client that waits on nothing: a Redis Cluster whose state is fail):
  // that exit would be 0 with the work half done. It is a failure, said in one line.
  const drained = () => {
    new Output(flagsOf()).error(prog, new SmartError('INTERNAL', 'the command ended before its work was done: an operation waited on nothing that could answer it'));
    process.exitCode = 1;
  };
  process.once('beforeExit', drained);
  try {
    // The common `push SRC DEST [options]`: parsed without commander, which is slow to load.
    const fast = parseTransferArgs(args);
    if (fast) await runTransfer(fast.mode, fast.source, fast.destination, fast.flags, new Output(outputOptions(fast.flags)));
    else {
      program = await import('./program.js');
      const root = program.buildProgram(prog);
      await root.parseAsync(nestedHelp(root, argv) ?? argv);
    }
    // What went to stdout did not all arrive (`> FILE` on a full disk): not a success.
    const lost = signalled ? undefined : await lostOutput();
    if (lost !== undefined) return lost;
    if (!signalled) return 0;
    // The signal came too late to cancel anything: the status still says it came (a CI step that
    // was being stopped, a user's Ctrl-C), and its one error line that what was written is whole.
    new Output(flagsOf()).error(prog, new SmartError('CANCELLED', `${STOP_SIGNALS[signalled].word} once the work was done: nothing was undone, what it wrote is whole`));
    return STOP_SIGNALS[signalled].status;
  } catch (e) {
    if (signalled) {
      new Output(flagsOf()).error(prog, new SmartError('CANCELLED', STOP_SIGNALS[signalled].word));
      return STOP_SIGNALS[signalled].status;
    }
    if (program && e instanceof program.CommanderError && ['commander.helpDisplayed', 'commander.version', 'commander.help'].includes(e.code)) {
      // Help nobody asked for (`smart`, `smart cache`, `smart help bogus`: an empty variable in a
      // CI step) went to stderr: a usage error, not a success.
      if (e.exitCode !== 0) return 2;
      // Help and version asked for are successes (also when `| head` read only a part of them),
      // unless they did not arrive (`> FILE` on a full disk).
      return (await lostOutput()) ?? 0;
    }
    // The reader of the image went away (`| head`): its choice, said by the status alone.
    if (stdoutClosed() || isReaderGone(e)) return EXIT_BROKEN_PIPE;
    if (program && e instanceof program.CommanderError) {
      // Any other refusal of commander's is one usage line, as our own.
      new Output(flagsOf()).error(prog, program.usageError(e, args));
      return 2;
    }
    const out = new Output(flagsOf());
    // A relative name (or a command that reads the current directory) run from a directory that
    // was removed: Node's words are "ENOENT, uv_cwd", said here as what happened.
    const cwdGone = (e as NodeJS.ErrnoException | undefined)?.syscall === 'uv_cwd';
    const shown = cwdGone ? new SmartError('STORAGE', 'the current directory no longer exists (it was removed)', { hint: 'cd to a directory that exists, or give absolute paths' }) : e;
    out.error(prog, cancel.signal.aborted && isSmartError(cancel.signal.reason) ? cancel.signal.reason : shown);
    return isSmartError(e) ? e.exitCode : 1;
  } finally {
    restoreOutput();
    process.off('beforeExit', drained);
    cancel.signal.removeEventListener('abort', onCancel);
    clearTimeout(graceTimer);
    unlisten();
  }
}

/**
 * `smart help cache index`: commander's help command reads one name, and would show cache's help;
 * the nested command's help is its --help, and an unknown name the usage error its run would be.
 */
function nestedHelp(root: Command, argv: string[]): string[] | undefined {
  const names = argv.slice(3);
  if (argv[2] !== 'help' || names.length < 2 || names.some((a) => a.startsWith('-'))) return undefined;
  let command: Command | undefined = root;
  for (const name of names) command = command?.commands.find((c) => c.name() === name || c.aliases().includes(name));
  return [...argv.slice(0, 2), ...names, ...(command ? ['--help'] : [])];
}
