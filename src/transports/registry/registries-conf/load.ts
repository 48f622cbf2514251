/**
 * Which registries.conf files are read, and in what order, as containers tools read them: one
 * main file (named, the user's, or the system's), then the drop-ins of `registries.conf.d`.
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { SmartError, isErrno } from '../../../errors.js';
import { homeDirectory } from '../../../home.js';
import { emptyRegistriesConf, mergeRegistriesConf, type RegistriesConf } from './model.js';
import { simpleTomlDocument, type TomlDocument } from './toml-document.js';

export const SYSTEM_REGISTRIES_CONF = '/etc/containers/registries.conf';

export interface LoadRegistriesConfOptions {
  /** A file to read instead of the usual ones (like CONTAINERS_REGISTRIES_CONF); it must exist. */
  path?: string;
  /** Where CONTAINERS_REGISTRIES_CONF (or the older REGISTRIES_CONFIG_PATH) and HOME are read; default process.env. */
  env?: NodeJS.ProcessEnv;
  /** The system file; default /etc/containers/registries.conf (tests point it elsewhere). */
  systemPath?: string;
}

async function readIfExists(file: string, required: boolean, why: string): Promise<string | undefined> {
  try {
    return await fs.readFile(file, 'utf8');
  } catch (e) {
    if (isErrno(e, 'ENOENT') && !required) return undefined;
    if (isErrno(e, 'ENOENT')) throw new SmartError('USAGE', `${file}: no such file (named by ${why})`, { input: file, cause: e });
    throw new SmartError('USAGE', `${file}: cannot read the registries configuration: ${(e as Error).message}`, { input: file, cause: e });
  }
}

async function dropIns(dir: string): Promise<string[]> {
  try {
    const entries = await fs.readdir(dir, { withFileTypes: true });
    return entries
      .filter((e) => !e.isDirectory() && e.name.endsWith('.conf'))
      .map((e) => e.name)
      .sort((a, b) => (a < b ? -1 : a > b ? 1 : 0))
      .map((n) => path.join(dir, n));
  } catch (e) {
    if (isErrno(e, 'ENOENT') || isErrno(e, 'ENOTDIR')) return [];
    throw new SmartError('USAGE', `${dir}: cannot read the registries drop-in directory: ${(e as Error).message}`, { input: dir, cause: e });
  }
}

async function exists(file: string): Promise<boolean> {
  try {
    await fs.stat(file);
    return true;
  } catch {
    return false;
  }
}

/**
 * The configuration containers tools would use:
 * - `options.path`, else `$CONTAINERS_REGISTRIES_CONF` (else `$REGISTRIES_CONFIG_PATH`): that
 *   file alone (it must exist), then the `registries.conf.d/*.conf` next to it;
 * - else `$HOME/.config/containers/registries.conf` if it exists, then
 *   `$HOME/.config/containers/registries.conf.d/*.conf`;
 * - else `/etc/containers/registries.conf` (missing: empty), then
 *   `/etc/containers/registries.conf.d/*.conf`, then `$HOME/.config/containers/registries.conf.d/*.conf`.
 * Drop-ins are read in name order, each overriding the previous by prefix; they must be v2.
 */
export async function loadRegistriesConf(options: LoadRegistriesConfOptions = {}): Promise<RegistriesConf> {
  const env = options.env ?? process.env;
  const named = options.path
    ? { file: options.path, why: 'the caller' }
    : env.CONTAINERS_REGISTRIES_CONF
      ? { file: env.CONTAINERS_REGISTRIES_CONF, why: 'CONTAINERS_REGISTRIES_CONF' }
      : env.REGISTRIES_CONFIG_PATH
        ? { file: env.REGISTRIES_CONFIG_PATH, why: 'REGISTRIES_CONFIG_PATH' }
        : undefined;
  // No home (a user id with no entry, $HOME unset): there is no user file, only the system's.
  const home = homeDirectory(env);
  const userFile = home === undefined ? undefined : path.join(home, '.config', 'containers', 'registries.conf');
  const userDir = home === undefined ? undefined : path.join(home, '.config', 'containers', 'registries.conf.d');
  let main: string;
  let dirs: string[];
  let required = false;
  let why = '';
  if (named) {
    main = path.resolve(named.file);
    dirs = [path.join(path.dirname(main), 'registries.conf.d')];
    required = true;
    why = named.why;
  } else if (userFile !== undefined && (await exists(userFile))) {
    main = userFile;
    dirs = [userDir!];
  } else {
    main = options.systemPath ?? SYSTEM_REGISTRIES_CONF;
    dirs = [path.join(path.dirname(main), 'registries.conf.d'), ...(userDir === undefined ? [] : [userDir])];
  }
  const text = await readIfExists(main, required, why);
  // Most machines have a main file of comments and drop-ins of aliases: read without the TOML
  // parser (toml-document.ts). The readers, and smol-toml for any other file, are loaded only
  // when a file needs them: every command that talks to a registry comes here.
  const read = async (t: string, file: string): Promise<TomlDocument> => simpleTomlDocument(t) ?? (await import('./toml.js')).parseToml(t, file);
  const reader = () => import('./read.js');
  let conf = text === undefined ? emptyRegistriesConf() : (await reader()).readRegistriesConf(await read(text, main), main);
  for (const dir of [...new Set(dirs)]) {
    for (const file of await dropIns(dir)) {
      const t = await readIfExists(file, false, '');
      if (t === undefined) continue; // removed since the listing
      const doc = await read(t, file);
      if (doc.root['registries'] !== undefined) {
        throw new SmartError('USAGE', `${file}:${doc.lineOf(doc.root, 'registries') ?? 1}: a drop-in file must use the v2 format ([[registry]]), not [registries.*]`, { input: file });
      }
      conf = mergeRegistriesConf(conf, (await reader()).readRegistriesConf(doc, file));
    }
  }
  return conf;
}
