/**
 * `smart cache`: the layer trie over every image of a store, and what it answers — which stored
 * image's which layers are the best build cache for a Dockerfile (plan), fetching exactly those
 * (pull), prefetching the most shared chains (warm), and advice that makes builds cache (lint).
 * One module per verb under build-cache/; this is what the CLI and the public API import.
 * Reports through return values and callbacks; never prints.
 */
export { openCacheSession, type CacheContext, type CacheSession } from './build-cache/session.js';
export { INDEX_LEASE_S, indexStore, type IndexOptions, type IndexSummary } from './build-cache/index-store.js';
export { CACHE_BUILDERS, planBuild, planForImage, type BaseResolution, type CacheBuilder, type PlanCandidate, type PlanOptions, type PlanResult, type PlanStep } from './build-cache/plan.js';
export {
  cacheFromInstructions,
  checkArchiveTag,
  defaultCacheTag,
  pullForBuild,
  pullPlanned,
  type CacheFromInstructions,
  type CachePullOptions,
  type CachePullResult,
} from './build-cache/pull.js';
export { warmForBuild, warmStore, type WarmOptions, type WarmResult } from './build-cache/warm.js';
export { lint } from './build-cache/lint.js';
export { LAYER_SUMMARY_MAX_BYTES, layerKeysOfImage, stepsForPush, stepsOfImage, type LayerKeys } from './build-cache/steps.js';
