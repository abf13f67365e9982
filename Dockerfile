# syntax=docker/dockerfile:1
# The tandem image: `docker build -t <registry>/tandem:<version> .` at the repository root.
# Build stage: the `dist` profile, the release build with ThinLTO, optimized with the profile of a
# training run (scripts/pgo.sh: an instrumented build, the training, the optimized build; about 50
# minutes cold on 2 cores, twice a plain build's time). `--build-arg PGO=0` builds without it.
# BuildKit cache mounts keep the registry, the compiled dependencies and the trained profile
# between builds.
# Runtime stage: distroless (glibc, CA certificates, no shell), running as the unprivileged user
# 65532, which the Helm chart's securityContext also uses.

FROM rust:1.95-bookworm AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends protobuf-compiler python3 \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
ARG PGO=1
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    if [ "$PGO" = 1 ]; then scripts/pgo.sh; else cargo build --profile dist --locked --bin tandem; fi \
    && install -D target/dist/tandem /out/tandem

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/tandem /usr/local/bin/tandem
USER 65532:65532
EXPOSE 8123 9100
ENTRYPOINT ["/usr/local/bin/tandem"]
CMD ["serve", "--http-addr=0.0.0.0:8123", "--data-dir=/var/lib/tandem"]
