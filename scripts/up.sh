#!/usr/bin/env bash
# Quick start: checks (and starts, installing what is missing) PostgreSQL, RabbitMQ, Mosquitto
# and the Kafka-API broker tansu on loopback, builds otaledger, creates the topics and tables, and
# runs the whole stack with a simulated fleet. Ctrl-C stops it gracefully.
#   DEVICES=10000 RATE=2000 scripts/up.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/otaledger/target}"
bash scripts/services.sh
cargo build --release --locked -p otaledger-cli
LISTEN="${OTALEDGER_HTTP_LISTEN:-127.0.0.1:8080}"
export OTALEDGER_HTTP_LISTEN="$LISTEN"
echo "otaledger API: http://$LISTEN  (try /v1/fleet/summary, /v1/devices, /metrics, /openapi.json)"
exec "$CARGO_TARGET_DIR/release/otaledger" --config otaledger.example.toml up --simulate \
  --devices "${DEVICES:-10000}" --rate "${RATE:-2000}" "$@"
