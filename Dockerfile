# Builds every hitl binary; one image runs any service (pick the command).
FROM rust:1.85-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends cmake libssl-dev zlib1g-dev pkg-config \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bins

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends libssl3 zlib1g ca-certificates \
    && rm -rf /var/lib/apt/lists/* && useradd --system --uid 10001 hitl
COPY --from=build /src/target/release/hitl-router /src/target/release/hitl-assignment /src/target/release/hitl-audit \
     /src/target/release/hitl-admin /src/target/release/hitl-loadtest /usr/local/bin/
COPY config /etc/hitl
USER hitl
ENTRYPOINT ["/usr/local/bin/hitl-router", "--config", "/etc/hitl/router.toml"]
