#!/usr/bin/env bash
# The whole test suite from a fresh clone: installs what the tests need (protocol servers for
# the loopback peers), then runs every test of the workspace. Fails when any test fails.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/peers/install.sh
cargo test --workspace --no-fail-fast "$@"
