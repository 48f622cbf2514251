/**
 * The user's home directory, when there is one. `$HOME` first, as Go's os.UserHomeDir and every
 * peer read it; else the password database's entry for this user. A container started with a
 * user id of its own (`docker run --user 12345`, OpenShift's random ids, `env -i` in a CI step)
 * may have neither, and Node's os.homedir() then throws: the files that live under a home (the
 * cache directory, credentials, registries.conf) are then simply not there.
 */
import os from 'node:os';

export function homeDirectory(env: NodeJS.ProcessEnv = process.env): string | undefined {
  if (env.HOME) return env.HOME;
  try {
    return os.homedir() || undefined;
  } catch {
    return undefined;
  }
}
