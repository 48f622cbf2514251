/** Platforms (`os/arch[/variant]`) and picking one manifest out of an index. */
import { SmartError, printable, quoted } from '../errors.js';
import type { Descriptor, ImageIndex, Platform } from './manifest.js';
import { isImageManifestMediaType } from './mediatypes.js';

export type { Platform };

// Node's names → the GOARCH names images use.
const NODE_ARCH: Record<string, string> = {
  x64: 'amd64',
  arm64: 'arm64',
  arm: 'arm',
  ia32: '386',
  ppc64: 'ppc64le', // Node reports ppc64 on little-endian Power too
  s390x: 's390x',
  riscv64: 'riscv64',
  mips: 'mips',
  mipsel: 'mipsle',
  loong64: 'loong64',
};

/** Normalises architecture aliases and the default variants, as containerd's platforms package does. */
export function normalizePlatform(p: Platform): Platform {
  let { os, architecture, variant } = p;
  os = os.toLowerCase();
  architecture = architecture.toLowerCase();
  variant = variant?.toLowerCase();
  if (architecture === 'x86_64' || architecture === 'x86-64') architecture = 'amd64';
  if (architecture === 'aarch64') architecture = 'arm64';
  if (architecture === 'i386') architecture = '386';
  if (architecture === 'armhf') {
    architecture = 'arm';
    variant = 'v7';
  }
  if (architecture === 'armel') {
    architecture = 'arm';
    variant = 'v6';
  }
  if (architecture === 'arm64' && (variant === 'v8' || variant === '8')) variant = undefined;
  if (architecture === 'arm' && variant === undefined) variant = 'v7';
  if (architecture === 'amd64' && variant === 'v1') variant = undefined;
  const out: Platform = { os, architecture };
  if (variant) out.variant = variant;
  return out;
}

export function parsePlatform(s: string): Platform {
  const parts = s.split('/');
  if (parts.length < 2 || parts.length > 3 || parts.some((x) => x === '' || !/^[A-Za-z0-9_.-]+$/.test(x))) {
    throw new SmartError('USAGE', `invalid platform ${quoted(s)}: expected OS/ARCH[/VARIANT], e.g. linux/amd64 or linux/arm64/v8`, {
      input: s,
    });
  }
  const [os, architecture, variant] = parts as [string, string, string?];
  return normalizePlatform(variant ? { os, architecture, variant } : { os, architecture });
}

/** The platform of the running machine. Images are Linux images, also when the tool runs elsewhere. */
export function hostPlatform(): Platform {
  const architecture = NODE_ARCH[process.arch] ?? process.arch;
  return normalizePlatform({ os: 'linux', architecture });
}

export function formatPlatform(p: Platform): string {
  return [p.os, p.architecture, p.variant].filter(Boolean).join('/');
}

export function platformMatches(want: Platform, have: Platform | undefined): boolean {
  if (!have) return false;
  const w = normalizePlatform(want);
  const h = normalizePlatform(have);
  if (w.os !== h.os || w.architecture !== h.architecture) return false;
  // A wanted variant must match; without one, any variant of the architecture will do.
  return w.variant === undefined || w.variant === h.variant;
}

/**
 * The platform an image's config names, normalised; undefined when it names none (no `os` or
 * `architecture` string: taken as any, as the builders take it).
 */
export function configPlatform(config: { os?: unknown; architecture?: unknown; variant?: unknown }): Platform | undefined {
  const { os, architecture, variant } = config;
  if (typeof os !== 'string' || typeof architecture !== 'string' || !os || !architecture) return undefined;
  return normalizePlatform({ os, architecture, ...(typeof variant === 'string' && variant ? { variant } : {}) });
}

/**
 * Picks the manifest of `platform` from an index. Attestation manifests (BuildKit's `unknown/unknown`)
 * never match. An exact variant match wins over a variant-less one. Failing both, an image manifest
 * whose entry names no platform (the image spec makes it optional): it may be any, as containerd
 * and BuildKit take it, last; its config then says which (checkPlatform).
 */
export function pickPlatform(index: ImageIndex, platform: Platform, input?: string): Descriptor {
  const want = normalizePlatform(platform);
  const candidates = index.manifests.filter((d) => platformMatches(want, d.platform));
  const exact = candidates.find((d) => d.platform && normalizePlatform(d.platform).variant === want.variant);
  const found = exact ?? candidates[0] ?? index.manifests.find((d) => d.platform === undefined && isImageManifestMediaType(d.mediaType));
  if (!found) {
    const available = index.manifests
      .map((d) => (d.platform ? formatPlatform(normalizePlatform(d.platform)) : undefined))
      .filter((x): x is string => x !== undefined && x !== 'unknown/unknown');
    throw new SmartError(
      'PLATFORM_NOT_FOUND',
      `no manifest for platform ${formatPlatform(want)}${input ? ` in ${input}` : ''}; available: ${printable(available.join(', ')) || 'none'}`,
      { input, hint: 'choose one with --platform OS/ARCH[/VARIANT]' },
    );
  }
  return found;
}
