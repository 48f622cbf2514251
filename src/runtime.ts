/**
 * Process-wide V8 tuning that only the program owning the process may choose: a library must not
 * change how its host compiles code. The `smart` command opts in; the library alone never does.
 */
let shortLived = false;

/**
 * Declares the process a short-lived command. Then, when a registry is first used, WebAssembly
 * stays on V8's baseline compiler: undici's HTTP parser is WebAssembly, and left to the optimizing
 * compiler it is compiled again in the background and Node waits for that before exiting (~70 ms
 * after every command that talked to a registry). Parsing HTTP is a negligible part of a transfer
 * (a 200 MB pull takes as long either way).
 */
export function declareShortLivedProcess(): void {
  shortLived = true;
}

export function isShortLivedProcess(): boolean {
  return shortLived;
}
