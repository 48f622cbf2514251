/**
 * The `smart` command line: parses flags, calls the library, prints. The only place that catches
 * errors and chooses an exit code: 0 success, 2 usage error, 1 anything else.
 */
import { SmartError, isSmartError } from '../errors.js';
import { declareShortLivedProcess } from '../runtime.js';
import { outputOptions, parseTransferArgs, cancel } from './options.js';
import { Output, type OutputOptions } from './output.js';
import { runTransfer } from './transfer.js';

/** Runs the CLI on `argv` (as process.argv) and resolves to the exit code; never calls process.exit. */
export async function main(argv: string[], prog = 'smart'): Promise<number> {
  declareShortLivedProcess();
  // Loaded with the program, only when commander parses the command line.
  let CommanderError: typeof import('commander').CommanderError | undefined;
  const flagsOf = (): OutputOptions => {
    const args = argv.slice(2);
    return { json: args.includes('--json'), quiet: args.includes('-q') || args.includes('--quiet'), debug: args.includes('--debug') };
  };
  // Ctrl-C / SIGTERM cancel the work: in-flight transfers stop, temporary data is removed, nothing
  // half-written remains; then the exit status is 128 + the signal number. A second one exits at once.
  let signalled: 'SIGINT' | 'SIGTERM' | undefined;
  const onSignal = (sig: 'SIGINT' | 'SIGTERM') => {
    if (signalled) process.exit(sig === 'SIGINT' ? 130 : 143);
    signalled = sig;
    cancel.abort(new SmartError('CANCELLED', sig === 'SIGINT' ? 'interrupted' : 'terminated'));
  };
  const onInt = () => onSignal('SIGINT');
  const onTerm = () => onSignal('SIGTERM');
  process.on('SIGINT', onInt);
  process.on('SIGTERM', onTerm);
  try {
    // The common `push SRC DEST [options]`: parsed without commander, which is slow to load.
    const fast = parseTransferArgs(argv.slice(2));
    if (fast) await runTransfer(fast.mode, fast.source, fast.destination, fast.flags, new Output(outputOptions(fast.flags)));
    else {
      const program = await import('./program.js');
      CommanderError = program.CommanderError;
      await program.buildProgram().parseAsync(argv);
    }
    return signalled ? (signalled === 'SIGINT' ? 130 : 143) : 0;
  } catch (e) {
    if (signalled) {
      new Output(flagsOf()).error(prog, new SmartError('CANCELLED', signalled === 'SIGINT' ? 'interrupted' : 'terminated'));
      return signalled === 'SIGINT' ? 130 : 143;
    }
    if (CommanderError && e instanceof CommanderError) {
      // Commander printed its own message; help and version are successes.
      if (e.code === 'commander.helpDisplayed' || e.code === 'commander.version' || e.code === 'commander.help') return 0;
      return 2;
    }
    const out = new Output(flagsOf());
    out.error(prog, cancel.signal.aborted && isSmartError(cancel.signal.reason) ? cancel.signal.reason : e);
    return isSmartError(e) ? e.exitCode : 1;
  } finally {
    process.off('SIGINT', onInt);
    process.off('SIGTERM', onTerm);
  }
}

