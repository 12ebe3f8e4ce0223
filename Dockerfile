# syntax=docker/dockerfile:1.7
#
# cloudwatch-metrics-adapter: the release binary on a distroless base (glibc and CA certificates,
# no shell, no package manager), running as the unprivileged `nonroot` user (65532).
#
#   docker buildx build --platform linux/amd64 \
#     --build-arg SOURCE_DATE_EPOCH=$(git log -1 --format=%ct) \
#     -t ghcr.io/cloudwatch-metrics-adapter/cloudwatch-metrics-adapter:0.1.0 .
#
# Reproducible: --locked builds exactly Cargo.lock; SOURCE_DATE_EPOCH (BuildKit passes the build
# argument to the exporter too) fixes file and image timestamps; paths are remapped so the binary
# does not embed the build directory; symbols are stripped (Cargo.toml's release profile).
# For byte-identical rebuilds also pin both base images by digest: resolve them once with
# `docker buildx imagetools inspect <image>` and pass them as RUST_IMAGE / RUNTIME_IMAGE
# (`image:tag@sha256:...`). Build each platform natively (or cross-compile); emulated aws-lc
# builds are very slow.

# Debian 13 (trixie) on both sides, so the binary's glibc is the runtime's glibc. The full rust
# image (not -slim) carries gcc and make for aws-lc-sys, which builds its C with the cc crate:
# no cmake, Go or clang needed.
ARG RUST_IMAGE=docker.io/library/rust:1.95.0-trixie
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian13:nonroot

FROM ${RUST_IMAGE} AS build
ARG SOURCE_DATE_EPOCH=0
ENV CARGO_INCREMENTAL=0 \
    CARGO_NET_RETRY=5 \
    CARGO_TERM_COLOR=never \
    SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH} \
    RUSTFLAGS="--remap-path-prefix=/src=. --remap-path-prefix=/usr/local/cargo=cargo"
WORKDIR /src
# The workspace as Cargo needs it to resolve: every member's manifest and sources (emulator/,
# bench/ and fake-kube/ are workspace members, so they must be present even though they are not
# built) and the
# test sources Cargo.toml names. .dockerignore is an allow-list of exactly these paths, and
# scripts/check-manifests.sh checks that Cargo loads the workspace from them.
COPY . .
# Only the adapter package is built: the emulator and the benchmarks are never compiled here,
# and nothing but the one binary leaves this stage. The cache mounts speed up rebuilds without
# changing the output.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p cloudwatch-metrics-adapter --bin cloudwatch-metrics-adapter \
 && install -D -m 0555 target/release/cloudwatch-metrics-adapter /out/cloudwatch-metrics-adapter

FROM ${RUNTIME_IMAGE}
ARG SOURCE_DATE_EPOCH=0
LABEL org.opencontainers.image.title="cloudwatch-metrics-adapter" \
      org.opencontainers.image.description="Kubernetes external metrics API backed by AWS CloudWatch" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/cloudwatch-metrics-adapter /usr/local/bin/cloudwatch-metrics-adapter
# Numeric, so Kubernetes' runAsNonRoot can verify it without an /etc/passwd lookup.
USER 65532:65532
# 6443: external.metrics.k8s.io over HTTPS. 8080: /healthz, /livez, /readyz, /metrics.
EXPOSE 6443 8080
ENTRYPOINT ["/usr/local/bin/cloudwatch-metrics-adapter"]
CMD ["serve"]
