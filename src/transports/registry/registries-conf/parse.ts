/**
 * One registries.conf file's text, read: a plain file (comments, `key = "string"` lines, simple
 * tables: what most machines carry) without the TOML parser, any other through it.
 */
import type { RegistriesConf } from './model.js';
import { readRegistriesConf } from './read.js';
import { simpleTomlDocument } from './toml-document.js';
import { parseToml } from './toml.js';

/** Parses one registries.conf file (v2, or v1 converted to v2). Errors: `USAGE`, `<file>:<line>: ...`. */
export function parseRegistriesConf(text: string, file: string): RegistriesConf {
  return readRegistriesConf(simpleTomlDocument(text) ?? parseToml(text, file), file);
}
