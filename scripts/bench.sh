#!/usr/bin/env bash
# The benchmarks: checks (and starts) the services as scripts/services.sh does, installs Debian's
# nginx for the download scenario's reference when it is missing, builds the release binaries and
# runs otaledger-bench with the arguments given (see its --help), e.g.
#   scripts/bench.sh download --quick --out /tmp/download.json
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/otaledger/target}"
bash scripts/services.sh
bash scripts/build-deps.sh
if [ ! -x /usr/sbin/nginx ]; then
  echo "[bench] installing nginx (the download scenario's reference)" >&2
  apt-get update -qq >&2 || true
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >&2
fi
cargo build --release --locked -p otaledger-cli -p otaledger-bench
exec "$CARGO_TARGET_DIR/release/otaledger-bench" "$@"
