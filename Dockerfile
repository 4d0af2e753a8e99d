# Builds the `parley` binary and a small runtime image for docker-compose.yml.
#
# The dependencies are built in their own layer (from the manifests and stub sources only),
# so changing Parley's code rebuilds Parley, not the ~300 crates below it.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY domain/Cargo.toml domain/
COPY projections/Cargo.toml projections/
RUN mkdir -p src domain/src projections/src benches \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs domain/src/lib.rs projections/src/lib.rs \
 && for b in projector export api live; do echo 'fn main() {}' > benches/$b.rs; done \
 && cargo build --release --locked --bin parley \
 && rm -rf src domain/src projections/src benches
COPY . .
# Make sure cargo sees the real sources as newer than the stubs.
RUN touch src/main.rs src/lib.rs domain/src/lib.rs projections/src/lib.rs \
 && cargo build --release --locked --bin parley

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin parley
COPY --from=build /src/target/release/parley /usr/local/bin/parley
USER parley
ENV PARLEY_BIND=0.0.0.0:8080
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s CMD curl -fsS http://127.0.0.1:8080/healthz || exit 1
ENTRYPOINT ["parley"]
CMD ["serve"]
