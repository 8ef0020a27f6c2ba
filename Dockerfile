# tokenrouter images (needs BuildKit, the default builder since Docker 23).
#
#   docker build -t tokenrouter:0.1.0 .                      # runtime (default target)
#   docker build --target wasm -t tokenrouter-filter:0.1.0 .  # the filter alone, as an OCI image
#
# Targets:
# - `runtime` (last stage, the default): Debian slim with `/usr/local/bin/tokenrouter` (control
#   plane `serve` and the CLI, including `envoy-bootstrap`) and the filter at
#   `/usr/share/tokenrouter/tokenrouter_filter.wasm`. It runs the control plane, renders the
#   Envoy bootstrap and hands the filter to Envoy (compose: the `envoy-bootstrap` service;
#   Kubernetes: init containers of the gateway pod). Envoy itself is the official
#   `envoyproxy/envoy` image, unchanged.
# - `wasm`: nothing but the filter, as `/plugin.wasm` in a single-layer image (the layout Istio's
#   OCI Wasm fetcher accepts), for registries that distribute Wasm modules.
#
# The builder compiles exactly what `cargo xtask up` runs: the release `tokenrouter` binary and
# the release wasm filter (`wasm32-wasip1`).

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=trixie

FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS builder
RUN rustup target add wasm32-wasip1
WORKDIR /src
# Only what the workspace needs (every member's manifest must exist for Cargo), so editing docs
# or tests does not rebuild anything.
COPY Cargo.toml Cargo.lock ./
COPY .cargo .cargo
COPY proto proto
COPY filter filter
COPY control-plane control-plane
COPY envoy envoy
COPY xtask xtask
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --locked --release -p tokenrouter-control-plane \
 && cargo build --locked --release -p tokenrouter-filter --target wasm32-wasip1 \
 && mkdir -p /out \
 && cp target/release/tokenrouter /out/tokenrouter \
 && cp target/wasm32-wasip1/release/tokenrouter_filter.wasm /out/tokenrouter_filter.wasm

FROM scratch AS wasm
COPY --from=builder /out/tokenrouter_filter.wasm /plugin.wasm

FROM debian:${DEBIAN_RELEASE}-slim AS runtime
# uid/gid 10001: the control plane's user; its data directory is created with that owner so a
# fresh named volume (compose) or a PVC with fsGroup 10001 (Kubernetes) is writable.
RUN groupadd --system --gid 10001 tokenrouter \
 && useradd --system --uid 10001 --gid tokenrouter --no-create-home \
      --home-dir /var/lib/tokenrouter --shell /usr/sbin/nologin tokenrouter \
 && mkdir -p /var/lib/tokenrouter \
 && chown tokenrouter:tokenrouter /var/lib/tokenrouter
COPY --from=builder /out/tokenrouter /usr/local/bin/tokenrouter
COPY --from=builder /out/tokenrouter_filter.wasm /usr/share/tokenrouter/tokenrouter_filter.wasm
# config.rs: the data directory (SQLite database, generated admin token / master key).
ENV TOKENROUTER_DATA_DIR=/var/lib/tokenrouter
USER 10001:10001
WORKDIR /var/lib/tokenrouter
# gRPC (Admin, FilterSync, ADS, reflection) and REST (/healthz, /metrics, /api/v1, /demo/v1).
EXPOSE 50051 8081
ENTRYPOINT ["tokenrouter"]
# `serve` listens on 127.0.0.1 by default; in a container it must listen on every interface.
CMD ["serve", "--grpc-addr", "0.0.0.0:50051", "--rest-addr", "0.0.0.0:8081"]
