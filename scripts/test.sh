#!/usr/bin/env bash
# The whole test suite against real services: checks (and starts) PostgreSQL, RabbitMQ,
# Mosquitto and tansu on loopback, builds the otaledger binary the process tests start, then runs
# every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/otaledger/target}"
# The tests' own Kafka-API broker, in memory (each test makes its own topics and keeps
# nothing): beside the quick start's durable one on 9092, which it neither slows nor fills.
export OTALEDGER_KAFKA_PORT="${OTALEDGER_TEST_KAFKA_PORT:-9093}"
export OTALEDGER_TANSU_STORAGE="${OTALEDGER_TEST_TANSU_STORAGE:-memory://tansu/}"
bash scripts/services.sh
export OTALEDGER_TEST_KAFKA="${OTALEDGER_TEST_KAFKA:-127.0.0.1:$OTALEDGER_KAFKA_PORT}"
export OTALEDGER_TEST_DATABASE_URL="${OTALEDGER_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
export OTALEDGER_TEST_AMQP_URL="${OTALEDGER_TEST_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"
export OTALEDGER_TEST_AMQP_ADMIN_URL="${OTALEDGER_TEST_AMQP_ADMIN_URL:-http://guest:guest@127.0.0.1:15672}"
export OTALEDGER_TEST_MQTT="${OTALEDGER_TEST_MQTT:-127.0.0.1:1883}"
# Mosquitto's logins, made by scripts/services.sh (ADR 0026).
MQTT_SECRETS="${OTALEDGER_STATE_DIR:-$HOME/.cache/otaledger}/mqtt"
export OTALEDGER_TEST_MQTT_USERNAME="${OTALEDGER_TEST_MQTT_USERNAME:-otaledger-service}"
export OTALEDGER_TEST_MQTT_PASSWORD="${OTALEDGER_TEST_MQTT_PASSWORD:-$(cat "$MQTT_SECRETS/service.password")}"
export OTALEDGER_TEST_MQTT_ADMIN_USERNAME="${OTALEDGER_TEST_MQTT_ADMIN_USERNAME:-otaledger-admin}"
# Mosquitto's TLS listener and the development CA that signed its certificate (ADR 0028).
export OTALEDGER_TEST_MQTT_TLS="${OTALEDGER_TEST_MQTT_TLS:-127.0.0.1:8883}"
export OTALEDGER_TEST_AMQP_TLS="${OTALEDGER_TEST_AMQP_TLS:-127.0.0.1:5671}"
# tansu's binary, for the Kafka TLS test's broker of its own.
export OTALEDGER_TEST_TANSU="${OTALEDGER_TEST_TANSU:-$(command -v tansu || echo "$HOME/.cargo/bin/tansu")}"
export OTALEDGER_TEST_TLS_CA="${OTALEDGER_TEST_TLS_CA:-${OTALEDGER_STATE_DIR:-$HOME/.cache/otaledger}/tls/ca.pem}"
export OTALEDGER_TEST_MQTT_ADMIN_PASSWORD="${OTALEDGER_TEST_MQTT_ADMIN_PASSWORD:-$(cat "$MQTT_SECRETS/admin.password")}"
# PyPI packages for the tests, into the user's site: a stock Debian python refuses plain
# `pip install` (PEP 668), and may lack pip itself.
pip_install() {
  python3 -m pip --version >/dev/null 2>&1 ||
    { apt-get update -qq >&2; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pip >&2; }
  python3 -m pip install --quiet "$@" >&2 ||
    python3 -m pip install --quiet --user --break-system-packages "$@" >&2
}
# The export test reads the Parquet files back with DuckDB (the PyPI package).
python3 -c 'import duckdb' 2>/dev/null || pip_install duckdb
# The contract test fuzzes the API from its OpenAPI document with schemathesis (PyPI).
python3 -c 'import schemathesis' 2>/dev/null || pip_install 'schemathesis>=4.3,<5'
# python-tuf's ngclient: a TUF client no one here wrote verifies the image repository.
python3 -c 'import tuf.ngclient, cryptography' 2>/dev/null || pip_install 'tuf>=5,<7' cryptography
# moto's S3 server: the S3-compatible artifact store is tested against a real S3 API.
python3 -c 'import moto.server' 2>/dev/null || pip_install 'moto[server]>=5,<6'
bash scripts/build-deps.sh
cargo build --locked -p otaledger-cli
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --locked --workspace --no-fail-fast "$@"
else
  cargo test --locked --workspace --no-fail-fast "$@"
fi
