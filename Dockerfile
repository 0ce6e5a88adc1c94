# syntax=docker/dockerfile:1
#
# One image, two binaries: /usr/local/bin/portcullis-controller (the chart's Deployment)
# and /usr/local/bin/portcullis-dataplane (the array members the controller creates).
#
#   docker build -t portcullis:dev .
#
# Stages: `chef` installs cargo-chef; `planner` turns the manifests into a recipe;
# `builder` compiles the dependencies from the recipe alone (a layer that stays cached
# until Cargo.toml/Cargo.lock change), then the workspace; `runtime` is Debian slim with
# a non-root user. Not distroless: the member Deployments the controller writes run
# `sleep` in their preStop hook (so endpoints drop out before draining starts), and
# distroless has no `sleep`.
#
# Base images: the Rust the workspace is developed with (1.95, Debian 12 "bookworm") and
# the same Debian release for the runtime, so the binaries find the glibc they linked
# against. Both tags are in docker-library/official-images (library/rust, library/debian).

ARG RUST_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS chef
RUN cargo install cargo-chef --locked --version 0.1.77
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
# Dependencies only: cached across source edits. The same packages as the build below,
# so Cargo resolves the same features and reuses every dependency built here.
COPY --from=planner /src/recipe.json recipe.json
# Build-time settings of dependencies (jemalloc's decay times) before they are built.
COPY .cargo .cargo
RUN cargo chef cook --release --locked -p portcullis-controller -p portcullis-dataplane \
    --recipe-path recipe.json
# The workspace itself.
COPY . .
RUN cargo build --release --locked -p portcullis-controller -p portcullis-dataplane \
 && install -D -m 0755 target/release/portcullis-controller /out/portcullis-controller \
 && install -D -m 0755 target/release/portcullis-dataplane /out/portcullis-dataplane

FROM ${RUNTIME_IMAGE} AS runtime
# CA roots for upstream TLS verified against the system store; a fixed non-root user.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 65532 nonroot \
 && useradd --system --uid 65532 --gid 65532 --no-create-home --shell /usr/sbin/nologin nonroot
LABEL org.opencontainers.image.title="portcullis" \
      org.opencontainers.image.description="Portcullis ingress controller and dataplane" \
      org.opencontainers.image.source="https://github.com/portcullis-io/portcullis" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /out/portcullis-controller /usr/local/bin/portcullis-controller
COPY --from=builder /out/portcullis-dataplane /usr/local/bin/portcullis-dataplane
# uid/gid 65532, matching the chart's podSecurityContext (runAsNonRoot needs a numeric USER).
USER 65532:65532
EXPOSE 9902
ENTRYPOINT ["/usr/local/bin/portcullis-controller"]
