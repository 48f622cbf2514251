/**
 * What the packages a command loads print by themselves while it runs — ioredis's console.warn
 * about a password the server does not need, a process warning (process.emitWarning) — is not
 * theirs to print: stderr holds the command's own lines, -q silences them and `--progress json`
 * holds JSON alone. Such text goes to the command's warning channel instead, one line each,
 * secrets redacted. The libraries that let themselves be told so are (the S3 SDK's logger); this
 * is the net under the others.
 */
import { format } from 'node:util';
import { remoteText } from '../redact.js';

type Sink = (message: string) => void;

const CONSOLE_METHODS = ['log', 'info', 'warn', 'error', 'debug', 'trace'] as const;

let sink: Sink = () => undefined;

/** Where captured text goes from now on: the running command's warnings (its progress display's, or its output's). */
export function foreignOutputTo(next: Sink): void {
  sink = next;
}

/** Secrets the environment holds, hidden wherever captured text repeats them. */
function knownSecrets(): string[] {
  const env = process.env;
  // SMART_REGISTRY_AUTH as used too: without the line's end a secret read from a file may carry.
  return [env.AWS_SECRET_ACCESS_KEY, env.AWS_SESSION_TOKEN, env.SMART_REGISTRY_AUTH, env.SMART_REGISTRY_AUTH?.trimEnd(), env.SMART_REDIS_URL].filter((v): v is string => Boolean(v));
}

/** One captured print as a warning line; nothing for an empty one. */
function say(args: unknown[]): void {
  // `[WARN] …` (ioredis): it becomes a `warning:` line, or a warning event.
  const text = remoteText(format(...args), { max: 400, known: knownSecrets() }).replace(/^\[(?:warn|warning|info)\]\s*/i, '');
  if (text) sink(text);
}

/**
 * Takes the console's printing methods and Node's printing of process warnings for the command's
 * run (`initial` receives what is captured until the command names its own channel); the
 * function returned gives them back.
 */
export function captureForeignOutput(initial: Sink): () => void {
  sink = initial;
  const saved = CONSOLE_METHODS.map((m) => [m, console[m]] as const);
  for (const m of CONSOLE_METHODS) console[m] = (...args: unknown[]) => say(args);
  const nodeListeners = process.listeners('warning');
  process.removeAllListeners('warning');
  const onWarning = (w: Error) => say([`${w.name}: ${w.message}`]);
  process.on('warning', onWarning);
  return () => {
    for (const [m, f] of saved) console[m] = f as never;
    process.off('warning', onWarning);
    for (const l of nodeListeners) process.on('warning', l);
    sink = () => undefined;
  };
}
