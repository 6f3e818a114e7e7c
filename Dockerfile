# syntax=docker/dockerfile:1
# The Weft image: the `weft` agent, `weftctl` and the `weft-cni` plugin,
# on Debian 12 with wireguard-go for nodes without the WireGuard module.
#
#   docker build -t weft:0.1.0 .
#
# Not built in this repository's CI: its machines reach no container image
# registry, so the base images cannot be pulled there. The manifests under
# manifests/ refer to it as the placeholder `weft:latest`.

# ---- builder: the eBPF object (nightly + bpf-linker), then the binaries ----
FROM rust:1.95-bookworm AS builder
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# `cargo xtask setup` (run by build-ebpf) installs the rest: rust-src for the
# nightly and bpf-linker built against the nightly's LLVM. Its apt packages
# are only for the tests and the demo, but it checks them all, so they are
# installed here first. (build-ebpf should need only rust-src and bpf-linker:
# see xtask/src/setup.rs.)
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        bpftool graphviz iperf3 iproute2 iptables iputils-ping \
        wireguard-go wireguard-tools \
    && rm -rf /var/lib/apt/lists/*
RUN rustup toolchain install nightly --profile minimal --component rust-src
WORKDIR /src
COPY . .
RUN cargo xtask build-ebpf \
    && cargo build --release --locked -p weft --bins \
    && mkdir -p /out \
    && for bin in weft weftctl weft-cni; do cp "target/release/$bin" /out/; done

# ---- runtime ----
FROM debian:bookworm-slim
# iproute2 and wireguard-tools (`ip`, `wg`) for debugging on the node;
# wireguard-go for `--wireguard userspace`; graphviz (`dot`) renders the
# agent's /graph (SVG, PNG, ...; without it only /graph?format=dot works),
# with one font for the text of PNG and PDF renders.
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        ca-certificates fonts-dejavu-core graphviz iproute2 wireguard-go wireguard-tools \
    && rm -rf /var/lib/apt/lists/* \
    && dot -V
COPY --from=builder /out/ /usr/local/bin/
ENTRYPOINT ["/usr/local/bin/weft"]
