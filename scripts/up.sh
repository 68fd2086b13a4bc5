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
OTALEDGER="$CARGO_TARGET_DIR/release/otaledger"
# Every /v1 route needs a token: a fresh admin token for this quick start (the previous one is
# revoked), printed once. `otaledger token create` makes more (viewer, operator, approver).
"$OTALEDGER" --config otaledger.example.toml token revoke quickstart-admin 2>/dev/null || true
TOKEN=$("$OTALEDGER" --config otaledger.example.toml token create --name quickstart-admin --role admin)
echo "otaledger API: http://$LISTEN  (open: /healthz, /readyz, /openapi.json)"
echo "admin token (shown once):  export OTALEDGER_TOKEN=$TOKEN"
echo "  curl -H \"Authorization: Bearer \$OTALEDGER_TOKEN\" http://$LISTEN/v1/fleet/summary"
exec "$OTALEDGER" --config otaledger.example.toml up --simulate \
  --devices "${DEVICES:-10000}" --rate "${RATE:-2000}" "$@"
