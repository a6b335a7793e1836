# Build stage: the release binary, with libpq and SQLite compiled in.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
# SQLite's compile options (see the file).
COPY .cargo .cargo
COPY src src
COPY migrations migrations
COPY config config
COPY templates templates
COPY static static
RUN cargo build --release --locked

# Runtime stage: the binary and curl for the healthcheck, running as an unprivileged user.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends curl ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/gatehouse --create-home gatehouse
COPY --from=build /src/target/release/gatehouse /usr/local/bin/gatehouse
USER gatehouse
WORKDIR /var/lib/gatehouse
ENV GATEHOUSE__SERVER__BIND=0.0.0.0:8080 \
    GATEHOUSE__LOG__FORMAT=json
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD curl -fsS http://127.0.0.1:8080/readyz || exit 1
ENTRYPOINT ["gatehouse"]
CMD ["serve"]
