/**
 * htpasswd files for the registry's `auth.htpasswd`: bcrypt entries only (the registry rejects
 * every other hash), made with `htpasswd -Bbn` from Debian's `apache2-utils`.
 */
import fs from 'node:fs/promises';
import { runOk } from './run.js';

/** Writes `file` with one bcrypt line per user (replacing it). */
export async function writeHtpasswd(file: string, users: Record<string, string>): Promise<void> {
  const lines: string[] = [];
  for (const [user, password] of Object.entries(users)) {
    if (user.includes(':')) throw new Error(`htpasswd user names cannot contain ':' (${user})`);
    // -B bcrypt, -b password from argv, -n print instead of writing a file; -C 4: cheapest cost,
    // the registry verifies every request against it.
    const r = await runOk('htpasswd', ['-Bbn', '-C', '4', user, password]);
    const line = r.stdout.toString().trim();
    if (!line.startsWith(`${user}:$2`)) throw new Error(`htpasswd gave no bcrypt line for ${user}: ${line}`);
    lines.push(line);
  }
  await fs.writeFile(file, lines.join('\n') + '\n', { mode: 0o600 });
}
