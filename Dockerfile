# NetReach operator and probe image: one static-ish binary on a distroless, non-root base.
#   docker build -t ghcr.io/netreach/netreach:$(cargo pkgid | sed 's/.*[#@]//') .
# The operator runs `netreach run`; probe Jobs run the same image with `probe` arguments.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
# Every workspace member of Cargo.toml, or `cargo build --locked` cannot load the workspace.
COPY tests/kube-sim tests/kube-sim
COPY tests/bench tests/bench
RUN cargo build --release --locked --bin netreach \
 && strip target/release/netreach

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/netreach /netreach
USER 65532:65532
ENTRYPOINT ["/netreach"]
