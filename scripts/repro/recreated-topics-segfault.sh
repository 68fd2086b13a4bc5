#!/usr/bin/env bash
# Reproduces librdkafka's segfault after the broker comes back with its topics recreated
# (docs/adr/0042): `otaledger up` on a memory tansu, which is killed and started again, and
# `otaledger init` makes the topics anew (same names, new ids). Prints whether otaledger
# survived each round; a core file is left in $WORK when it did not (ulimit -c unlimited).
# Not part of the test suite: it shows a crash in third-party code, which a test would have to
# expect.
set -u
# The test environment (endpoints and logins), as scripts/test.sh exports it.
[ -n "${OTALEDGER_TEST_DATABASE_URL:-}" ] || { echo "run with the variables scripts/test.sh exports (OTALEDGER_TEST_*)" >&2; exit 2; }
CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/otaledger/target}"
BIN=$CARGO_TARGET_DIR/debug/otaledger
W=${WORK:-/tmp/otaledger-segv}; rm -rf $W; mkdir -p $W; cd $W
ulimit -c unlimited
PORT=19094
export OTALEDGER_KAFKA_BROKERS=127.0.0.1:$PORT OTALEDGER_TOPIC_PREFIX=segv. OTALEDGER_DB_SCHEMA=segv
export OTALEDGER_DATABASE_URL=$OTALEDGER_TEST_DATABASE_URL OTALEDGER_AMQP_URL=$OTALEDGER_TEST_AMQP_URL
export OTALEDGER_MQTT_USERNAME=$OTALEDGER_TEST_MQTT_USERNAME OTALEDGER_MQTT_PASSWORD=$OTALEDGER_TEST_MQTT_PASSWORD
export OTALEDGER_MQTT_TOPIC_ROOT=segv OTALEDGER_AMQP_QUEUE=segv.reports OTALEDGER_AMQP_EXCHANGE=segv.cmds
export OTALEDGER_HTTP_LISTEN=127.0.0.1:19095 OTALEDGER_METRICS_LISTEN=127.0.0.1:19096
psql -h 127.0.0.1 -U postgres -qc "drop schema if exists segv cascade" >/dev/null 2>&1
start_broker() { $OTALEDGER_TEST_TANSU broker --listener-url tcp://127.0.0.1:$PORT --advertised-listener-url tcp://127.0.0.1:$PORT --storage-engine memory://tansu/ >/dev/null 2>&1 & echo $! > broker.pid; sleep 1; }
start_broker
$BIN init >/dev/null 2>&1
$BIN up > up.log 2>&1 & UP=$!
sleep 8
for i in $(seq ${ROUNDS:-6}); do
  kill -9 $(cat broker.pid); sleep ${GAP:-1}
  start_broker
  $BIN init >/dev/null 2>&1
  sleep 6
  if ! kill -0 $UP 2>/dev/null; then wait $UP; echo "round $i: otaledger up exited with $?"; break; fi
  echo "round $i: alive"
done
kill $UP 2>/dev/null; wait $UP 2>/dev/null; echo "final status $?"
kill -9 $(cat broker.pid) 2>/dev/null
ls -la $W | grep core
