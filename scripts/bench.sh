#!/usr/bin/env bash
# The benchmarks: checks (and starts) the services as scripts/services.sh does, installs Debian's
# nginx for the download scenario's reference when it is missing, builds the release binaries and
# runs otaledger-bench with the arguments given (see its --help), e.g.
#   scripts/bench.sh download --quick --out /tmp/download.json
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/otaledger/target}"
# The benchmarks measure the broker's upper bound, memory, on a tansu of their own (9094): the
# quick start's broker on 9092 is durable (SQLite, docs/adr/0043) and keeps what it is given.
OTALEDGER_KAFKA_PORT="${OTALEDGER_BENCH_KAFKA_PORT:-9094}" OTALEDGER_TANSU_STORAGE=memory://tansu/ \
  bash scripts/services.sh
export OTALEDGER_KAFKA_BROKERS="${OTALEDGER_KAFKA_BROKERS:-127.0.0.1:${OTALEDGER_BENCH_KAFKA_PORT:-9094}}"
bash scripts/build-deps.sh
if [ ! -x /usr/sbin/nginx ]; then
  echo "[bench] installing nginx (the download scenario's reference)" >&2
  apt-get update -qq >&2 || true
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >&2
fi
cargo build --release --locked -p otaledger-cli -p otaledger-bench
exec "$CARGO_TARGET_DIR/release/otaledger-bench" "$@"
