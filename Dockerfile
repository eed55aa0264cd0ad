# mqtls container image: a static-enough release build on Debian 12, run on distroless (glibc, libgcc,
# CA certificates, no shell, no package manager) as the unprivileged user 65532 ("nonroot").
#   docker build -t mqtls .
#   docker run --rm -v "$PWD/etc:/etc/mqtls:ro" -p 8883:8883 -p 9000:9000 mqtls --config /etc/mqtls/mqtls.toml

FROM rust:1-slim-bookworm AS build
WORKDIR /src
# Only what the binary is built from (see .dockerignore): no tests, fuzz targets or local build output.
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN cargo build --release --locked --bin mqtls \
    && cp target/release/mqtls /mqtls

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /mqtls /usr/local/bin/mqtls
# 8883: MQTT over TLS. 9000: the admin endpoints, when `admin = "0.0.0.0:9000"` is set.
EXPOSE 8883 9000
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/mqtls"]
CMD ["--config", "/etc/mqtls/mqtls.toml"]
