# syntax=docker/dockerfile:1
# Loopline: every binary in one image. Build: docker build -t loopline . (or docker compose
# build). The image runs as the unprivileged user `loopline` (uid 10001); its state lives in
# /var/lib/loopline (the lake, dispatch's database and keys, an agent's spool), where compose
# mounts named volumes. `docker run --rm loopline` runs the one-process demo.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

# ---- build: the workspace's release binaries ------------------------------------------------
FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS build
WORKDIR /src
COPY . .
# The registry and the target folder are build caches, not image layers.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --workspace \
        --bin loopline \
        --bin loopline-agent \
        --bin loopline-ingest \
        --bin loopline-dispatch \
        --bin loopline-train \
    && mkdir -p /out \
    && cp target/release/loopline \
          target/release/loopline-agent \
          target/release/loopline-ingest \
          target/release/loopline-dispatch \
          target/release/loopline-train \
          /out/

# ---- runtime: glibc and the binaries, nothing else ------------------------------------------
FROM debian:${DEBIAN_RELEASE}-slim
RUN groupadd --system --gid 10001 loopline \
    && useradd --system --uid 10001 --gid loopline --home-dir /var/lib/loopline \
        --shell /usr/sbin/nologin loopline \
    && install -d -o loopline -g loopline -m 0750 \
        /var/lib/loopline /var/lib/loopline/lake /var/lib/loopline/dispatch /var/lib/loopline/agent
COPY --from=build /out/ /usr/local/bin/
USER loopline:loopline
WORKDIR /var/lib/loopline
# Ingest's and the agents' /metrics, dispatch's API and /metrics.
EXPOSE 9464 9465 9300
CMD ["loopline", "demo", "--lake", "/var/lib/loopline/lake"]
