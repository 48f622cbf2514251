/**
 * containers-registries.conf(5), the registry configuration that podman, skopeo and buildah read:
 * prefix → location rewrites, mirrors, insecure and blocked registries. Version 2 of the format,
 * and version 1 (`[registries.search]`, `[registries.insecure]`, `[registries.block]`) converted
 * to it as containers/image does. Mirrors are for pulls only: a push goes to the (rewritten)
 * location, never to a mirror.
 *
 * One concern a file, under registries-conf/: `toml-document` (the document the readers see, and
 * plain files read without a TOML parser), `toml` (smol-toml for the others, and the line of every
 * key for messages), `model` (what a configuration says; drop-ins merged), `reader` (typed
 * settings, locations and prefixes), `v1` and `v2` (the two formats), `read` (one document's
 * configuration), `parse` (one file's text), `load` (which files, in which order) and `endpoints`
 * (pull sources and push destinations of a reference).
 */
export { parseToml } from './registries-conf/toml.js';
export { simpleTomlDocument, type TomlDocument, type TomlTable, type TomlValue } from './registries-conf/toml-document.js';
export {
  emptyRegistriesConf,
  mergeRegistriesConf,
  type PullFromMirror,
  type RegistriesConf,
  type RegistryEntry,
  type RegistryMirror,
  type ShortNameMode,
} from './registries-conf/model.js';
export { parseRegistriesConf } from './registries-conf/parse.js';
export { SYSTEM_REGISTRIES_CONF, loadRegistriesConf, type LoadRegistriesConfOptions } from './registries-conf/load.js';
export {
  findRegistry,
  parseDockerMirror,
  pullSources,
  pushDestination,
  type ExtraMirrors,
  type PullSource,
  type PushDestination,
} from './registries-conf/endpoints.js';
