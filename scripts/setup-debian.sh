#!/usr/bin/env bash
# The Debian (12 and later) packages smartlayer needs, installed when missing: the README's first
# command and .ci/run both run this, so what a user installs and what CI tests cannot drift apart.
#
#   scripts/setup-debian.sh          what `npm ci` builds the native compressors with (a C compiler,
#                                    libc and the libdeflate, zstd and ISA-L headers: native/build.mjs),
#                                    the zstd program (pulls of zstd-compressed layers), igzip
#                                    (faster gunzip on pulls), bzip2 and xz (archives compressed with them)
#   scripts/setup-debian.sh --test   also every real program the integration tests start
#
# Only what is missing is installed (a second run does nothing); apt-get runs through sudo when not
# root. Node.js itself is not installed (Debian 12's nodejs is 18, too old): this checks for 20.18.1
# or later and says where to get it.
set -euo pipefail

test_programs=0
case "${1:-}" in
  '') ;;
  --test) test_programs=1 ;;
  *) echo "usage: $0 [--test]" >&2; exit 2 ;;
esac

# Node.js 20.18.1 or later (package.json's engines), with npm: from nodejs.org, NodeSource or nvm.
node_ok=0
if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; then
  node -e 'const [a, b, c] = process.versions.node.split(".").map(Number); process.exit(a > 20 || (a === 20 && (b > 18 || (b === 18 && c >= 1))) ? 0 : 1)' && node_ok=1
fi
if [ "$node_ok" -ne 1 ]; then
  echo "$0: smartlayer needs Node.js 20.18.1 or later with npm (found: $(node --version 2>/dev/null || echo none)); Debian's nodejs package is too old: install one from https://nodejs.org/en/download (or NodeSource, or nvm)" >&2
  exit 1
fi

# command → Debian package: a command already on PATH needs nothing.
declare -A packages=(
  [cc]=gcc
  [zstd]=zstd
  [igzip]=isal
  # docker save archives compressed with them (docker load reads them too)
  [bzip2]=bzip2
  [xz]=xz-utils
)
# header → Debian package (-dev packages have no command to look for).
declare -A headers=(
  [stdlib.h]=libc6-dev
  [libdeflate.h]=libdeflate-dev
  [zstd.h]=libzstd-dev
  [isa-l.h]=libisal-dev
)
if [ "$test_programs" -eq 1 ]; then
  # command → Debian package
  packages+=(
    [docker-registry]=docker-registry
    [skopeo]=skopeo
    [umoci]=umoci
    [runc]=runc
    [redis-server]=redis-server
    [pigz]=pigz
    [zstd]=zstd
    [jq]=jq
    [htpasswd]=apache2-utils
    [openssl]=openssl
    [buildah]=buildah
    # The harness calls the daemon and its client by path: PATH may hold another `docker` first.
    [/usr/sbin/dockerd]=docker.io
    [/usr/bin/docker]=docker.io
    [busybox]=busybox-static
    # File capabilities in layers: set on a fixture tree, read back from a pulled one.
    [setcap]=libcap2-bin
    [getcap]=libcap2-bin
    [libdeflate-gzip]=libdeflate-tools
    # The shells `smart completion` writes scripts for; `script` gives a command a terminal.
    [zsh]=zsh
    [fish]=fish
    [script]=bsdutils
    # Kills a pull at an exact system call (a tree being replaced).
    [strace]=strace
    # A real ext4 volume (its own lost+found) as a pull's mount point.
    [mkfs.ext4]=e2fsprogs
  )
fi

missing=()
for cmd in "${!packages[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${packages[$cmd]}")
done
for header in "${!headers[@]}"; do
  [ -f "/usr/include/$header" ] || missing+=("${headers[$header]}")
done

if [ "${#missing[@]}" -gt 0 ]; then
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "$0: needs root or sudo to install: ${missing[*]}" >&2; exit 1; }
    sudo=(sudo)
  fi
  echo "$0: installing ${missing[*]}" >&2
  "${sudo[@]}" apt-get update -qq
  # env, not a plain assignment: sudo drops the caller's environment.
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
