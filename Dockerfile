# Builds the `parley` binary and a small runtime image for docker-compose.yml.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin parley

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/parley /usr/local/bin/parley
ENV PARLEY_BIND=0.0.0.0:8080
EXPOSE 8080
ENTRYPOINT ["parley"]
CMD ["serve"]
