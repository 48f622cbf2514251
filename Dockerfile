# smartlayer's CLI as an image, for CI systems that run each step in a container:
#   docker run --rm -v "$PWD:/work" -w /work smartlayer push docker-archive:img.tar file:/work/registry#team/app:1
FROM node:20-bookworm-slim AS build
WORKDIR /src
# Dependencies first: a change to the sources does not rerun the install (smart cache lint).
COPY package.json package-lock.json ./
# --ignore-scripts: `prepare` would build before the sources are here; build explicitly below.
RUN npm ci --ignore-scripts
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
# The native compressors (libdeflate and libzstd in-process): built here, linked against the runtime's libraries.
COPY native ./native
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev libdeflate-dev libzstd-dev \
 && rm -rf /var/lib/apt/lists/* \
 && node native/build.mjs
RUN npm run build && npm prune --omit=dev

FROM node:20-bookworm-slim
# zstd: pulls of zstd-compressed layers (Node 20 has no zstd of its own); libdeflate0: the native gzip engine.
RUN apt-get update \
 && apt-get install -y --no-install-recommends zstd libdeflate0 ca-certificates \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/smartlayer
COPY package.json ./
COPY bin ./bin
COPY --from=build /src/node_modules ./node_modules
COPY --from=build /src/dist ./dist
COPY --from=build /src/native/build ./native/build
RUN for b in smart smart-push smart-pull smart-cache; do ln -s "/opt/smartlayer/bin/$b.js" "/usr/local/bin/$b"; done
ENV XDG_CACHE_HOME=/var/cache
ENTRYPOINT ["smart"]
CMD ["--help"]
