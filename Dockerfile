# otaledger: one image, one binary; docker-compose.yml runs its components.
FROM rust:1-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends cmake libssl-dev pkg-config && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p otaledger-cli && cp target/release/otaledger /otaledger

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates libssl3 && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 otaledger
COPY --from=build /otaledger /usr/local/bin/otaledger
COPY otaledger.example.toml /etc/otaledger/otaledger.toml
USER otaledger
ENV OTALEDGER_CONFIG=/etc/otaledger/otaledger.toml
ENTRYPOINT ["otaledger"]
CMD ["up"]
