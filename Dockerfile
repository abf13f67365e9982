# syntax=docker/dockerfile:1
# The tandem image: `docker build -t <registry>/tandem:<version> .` at the repository root.
# Build stage: the `dist` profile (the release build with whole-program LTO; BuildKit cache
# mounts keep the registry and the compiled dependencies between builds). Runtime stage:
# distroless (glibc, CA certificates, no shell), running as the unprivileged user 65532, which
# the Helm chart's securityContext also uses.

FROM rust:1.95-bookworm AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends protobuf-compiler \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --profile dist --locked -p tandem-node --bin tandem \
    && install -D target/dist/tandem /out/tandem

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/tandem /usr/local/bin/tandem
USER 65532:65532
EXPOSE 8123 9100
ENTRYPOINT ["/usr/local/bin/tandem"]
CMD ["serve", "--http-addr=0.0.0.0:8123", "--data-dir=/var/lib/tandem"]
