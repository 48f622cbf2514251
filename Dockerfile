# smartlayer's CLI as an image, for CI systems that run each step in a container:
#   docker run --rm -v "$PWD:/work" -w /work smartlayer push docker-archive:img.tar file:/work/registry#team/app:1
# NODE_IMAGE is the base of both stages (a current Node LTS). INSTALL_PACKAGES=0 skips apt-get, for a
# base that has no package index to reach: the image then has no native compressors (gzip falls back
# to Node's zlib) and, unless the base brings it, no zstd program.
ARG NODE_IMAGE=node:24-bookworm-slim
ARG INSTALL_PACKAGES=1

FROM ${NODE_IMAGE} AS build
ARG INSTALL_PACKAGES
WORKDIR /src
# Dependencies first: a change to the sources does not rerun the install (smart cache lint).
COPY package.json package-lock.json ./
# --ignore-scripts: `prepare` would build before the sources are here; build explicitly below.
RUN npm ci --ignore-scripts
COPY tsconfig.json tsconfig.build.json ./
COPY scripts/bundle-cli.mjs ./scripts/
COPY src ./src
# The native compressors (libdeflate, libzstd and ISA-L in-process): built here, linked against the runtime's libraries.
COPY native ./native
RUN if [ "$INSTALL_PACKAGES" = 1 ]; then \
      apt-get update \
      && apt-get install -y --no-install-recommends gcc libc6-dev libdeflate-dev libzstd-dev libisal-dev \
      && rm -rf /var/lib/apt/lists/*; \
    fi \
 && node native/build.mjs \
 && mkdir -p native/build
RUN npm run build && npm prune --omit=dev

FROM ${NODE_IMAGE}
ARG INSTALL_PACKAGES
# zstd: pulls of zstd-compressed layers; bzip2, xz-utils: docker save archives compressed with
# them; libdeflate0 and libisal2: the native gzip engines (the addon links both: without either it
# would not load at all).
RUN if [ "$INSTALL_PACKAGES" = 1 ]; then \
      apt-get update \
      && apt-get install -y --no-install-recommends zstd bzip2 xz-utils libdeflate0 libisal2 ca-certificates \
      && rm -rf /var/lib/apt/lists/*; \
    fi
WORKDIR /opt/smartlayer
COPY package.json LICENSE ./
COPY bin ./bin
COPY --from=build /src/node_modules ./node_modules
COPY --from=build /src/dist ./dist
COPY --from=build /src/native/build ./native/build
RUN for b in smart smart-push smart-pull smart-cache; do ln -s "/opt/smartlayer/bin/$b.js" "/usr/local/bin/$b"; done \
 && ln -s /opt/smartlayer/bin/smart.js /usr/local/bin/smartlayer
ENV XDG_CACHE_HOME=/var/cache
ENTRYPOINT ["smart"]
CMD ["--help"]
