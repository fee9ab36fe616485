#!/usr/bin/env bash
# The whole test suite from a fresh clone: installs what the tests need (protocol servers for
# the loopback peers), starts the peers once, runs every test of the workspace, and stops the
# peers again. Fails when any test fails.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/peers/install.sh
# Peers live under /tmp: squid and dovecot drop privileges and need every parent dir o+x.
PEERS_DIR=$(mktemp -d /tmp/netreach-peers.XXXXXX)
chmod 755 "$PEERS_DIR"
trap 'bash tests/peers/stop.sh "$PEERS_DIR" >/dev/null 2>&1; rm -rf "$PEERS_DIR"' EXIT
bash tests/peers/start.sh "$PEERS_DIR" >/dev/null
export NETREACH_PEERS_DIR=$PEERS_DIR
cargo test --workspace --no-fail-fast "$@"
