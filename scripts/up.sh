#!/usr/bin/env bash
# Quick start: checks (and starts, installing what is missing) PostgreSQL, RabbitMQ, Mosquitto
# and the Kafka-API broker tansu on loopback, builds otaledger, creates the topics and tables, and
# runs the whole stack with a simulated fleet. Ctrl-C stops it gracefully.
#   DEVICES=10000 RATE=2000 scripts/up.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/otaledger/target}"
bash scripts/services.sh
bash scripts/build-deps.sh
cargo build --release --locked -p otaledger-cli
LISTEN="${OTALEDGER_HTTP_LISTEN:-127.0.0.1:8080}"
export OTALEDGER_HTTP_LISTEN="$LISTEN"
OTALEDGER="$CARGO_TARGET_DIR/release/otaledger"
STATE_DIR="${OTALEDGER_STATE_DIR:-$HOME/.cache/otaledger}"
# Mosquitto's logins, made by scripts/services.sh (docs/adr/0026): the service login for the
# bridge and the dispatcher, the admin login that adds a device's login when it is provisioned.
MQTT_SECRETS="$STATE_DIR/mqtt"
export OTALEDGER_MQTT_USERNAME=otaledger-service
OTALEDGER_MQTT_PASSWORD="$(cat "$MQTT_SECRETS/service.password")"
export OTALEDGER_MQTT_PASSWORD
export OTALEDGER_MQTT_ADMIN_USERNAME=otaledger-admin
OTALEDGER_MQTT_ADMIN_PASSWORD="$(cat "$MQTT_SECRETS/admin.password")"
export OTALEDGER_MQTT_ADMIN_PASSWORD
# RabbitMQ's management API (enabled by scripts/services.sh): provisioning a gateway creates
# its RabbitMQ user there (docs/adr/0029).
export OTALEDGER_AMQP_ADMIN_URL="${OTALEDGER_AMQP_ADMIN_URL:-http://guest:guest@127.0.0.1:15672}"
# Every /v1 route needs a token: a fresh admin token for this quick start (the previous one is
# revoked), printed once. `otaledger token create` makes more (viewer, operator, approver).
"$OTALEDGER" --config otaledger.example.toml token revoke quickstart-admin 2>/dev/null || true
TOKEN=$("$OTALEDGER" --config otaledger.example.toml token create --name quickstart-admin --role admin)
echo "otaledger API: http://$LISTEN  (open: /healthz, /readyz, /openapi.json)"
echo "admin token (shown once):  export OTALEDGER_TOKEN=$TOKEN"
echo "  curl -H \"Authorization: Bearer \$OTALEDGER_TOKEN\" http://$LISTEN/v1/fleet/summary"
# The simulated fleet is provisioned as a real one is. Each gateway gets its credential and its
# own RabbitMQ user (made again at every start: ten gateways take a second); each device its
# credential and MQTT login, every fifth one attached to a gateway that reports for it. The
# simulator logs each device and gateway in as itself. The device credentials are kept (0600)
# for the next start, and made again when the broker no longer admits them.
DEVICES="${DEVICES:-2000}"
GATEWAYS=10
GW_CREDS="$STATE_DIR/gateways.csv"
seq 0 $((GATEWAYS - 1)) | awk '{ printf "gw-%03d\n", $1 }' >"$STATE_DIR/gateway-ids.csv"
(umask 077; "$OTALEDGER" --config otaledger.example.toml gateways provision --replace \
   --from "$STATE_DIR/gateway-ids.csv" >"$GW_CREDS.new")
mv "$GW_CREDS.new" "$GW_CREDS"
CREDS="$STATE_DIR/fleet-$DEVICES.csv"
first=$(sed -n 2p "$CREDS" 2>/dev/null || true)
token=$(printf '%s' "$first" | cut -d, -f2)
# Made again too when the database no longer holds the credentials (its schema was dropped, as
# after a memory broker's restart): gateways would then not be believed for their devices.
if [ "$(head -1 "$CREDS" 2>/dev/null)" != "device_id,token,gateway_id" ] ||
   ! python3 scripts/mqtt_dynsec.py login 127.0.0.1 1883 "${first%%,*}" <(printf '%s' "$token") "${first%%,*}" ||
   ! "$OTALEDGER" --config otaledger.example.toml token list --live 2>/dev/null |
     awk -v d="${first%%,*}" '$2 == d && $3 == "device" { found = 1 } END { exit !found }'; then
  echo "provisioning the simulated fleet: $DEVICES devices, each with a credential and an MQTT login"
  seq 0 $((DEVICES - 1)) |
    awk -v g="$GATEWAYS" '{ printf "dev-%06d", $1; if ($1 % 5 == 0) printf ",gw-%03d", ($1 / 5) % g; printf "\n" }' \
    >"$STATE_DIR/fleet-ids.csv"
  (umask 077; "$OTALEDGER" --config otaledger.example.toml devices provision --replace \
     --from "$STATE_DIR/fleet-ids.csv" >"$CREDS.new")
  mv "$CREDS.new" "$CREDS"
fi
# A demo release in the artifact store (docs/adr/0037): 1 MiB made once. The simulated devices
# download what a rollout names, through their gateways where they have one, and check its length
# and SHA-256 before they install it (--download); a tampered artifact is reported REJECTED.
DEMO="$STATE_DIR/demo-firmware-9.0.0.bin"
[ -s "$DEMO" ] || head -c 1048576 /dev/urandom >"$DEMO"
DIGEST=$("$OTALEDGER" --config otaledger.example.toml artifact push "$DEMO" |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["sha256"])')
# The image repository (docs/adr/0038). Its offline keys are made once in $KEYS (on a real fleet
# they stay off the server): the root key, the release key, and the first root, which names the
# server's online key. The simulated devices are provisioned with that root and the director's
# key, and check every update's director statement and signed metadata before they download it.
KEYS="$STATE_DIR/tuf-keys"
SERVER_KEYS="$STATE_DIR/server-keys.json"
"$OTALEDGER" --config otaledger.example.toml keys server >"$SERVER_KEYS"
# A root made for another server key (the database was dropped since) is set aside.
if [ -s "$KEYS/1.root.json" ] && ! python3 - "$KEYS/1.root.json" "$SERVER_KEYS" <<'PY'
import json, sys
root, keys = (json.load(open(p)) for p in sys.argv[1:3])
sys.exit(root["signed"]["roles"]["snapshot"]["keyids"] != [keys["online"]["keyid"]])
PY
then
  mv "$KEYS" "$KEYS.old-$(date +%s)"
fi
[ -s "$KEYS/1.root.json" ] ||
  "$OTALEDGER" --config otaledger.example.toml keys generate --dir "$KEYS" --server-keys "$SERVER_KEYS"
# Once the API answers: install the root, register the demo release, sign its targets with the
# release key and publish it; then say how to roll it out.
# (Run in the background under `||`, where `set -e` does not apply: each step says if it failed.)
publish_demo() {
  local base="http://$LISTEN" work="$STATE_DIR/release-work"
  mkdir -p "$work"
  until curl -sf "$base/readyz" >/dev/null 2>&1; do sleep 1; done
  api() { curl -sSf -H "Authorization: Bearer $TOKEN" -H 'content-type: application/json' "$@"; }
  # The root the server has must be this one; a server without one gets it.
  if ! curl -sf "$base/v1/tuf/1.root.json" -o "$work/served-root.json"; then
    api -X POST "$base/v1/tuf/root" --data-binary @"$KEYS/1.root.json" >/dev/null || return 1
  elif ! python3 -c 'import json, sys; a, b = (json.load(open(p)) for p in sys.argv[1:3]); sys.exit(a != b)' \
         "$work/served-root.json" "$KEYS/1.root.json"; then
    echo "the server has another image repository root than $KEYS/1.root.json: not publishing the demo release" >&2
    return 1
  fi
  if ! api "$base/v1/releases/demo-9.0.0" >"$work/release.json" 2>/dev/null; then
    api -X POST "$base/v1/releases" -d "{\"release_id\": \"demo-9.0.0\", \"version\": \"9.0.0\",
      \"models\": [\"elevator-gen2\", \"elevator-gen3\", \"escalator-e1\", \"press-p500\", \"conveyor-c7\"],
      \"sha256\": \"$DIGEST\", \"length\": 1048576, \"notes\": \"the quick start's demo release\"}" \
      >"$work/release.json" || return 1
  fi
  if [ "$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["state"])' "$work/release.json")" = draft ]; then
    local current=()
    if curl -sf "$base/v1/tuf/targets.json" -o "$work/current.json"; then
      current=(--current "$work/current.json")
    fi
    "$OTALEDGER" --config otaledger.example.toml release sign --release "$work/release.json" \
      --keys "$KEYS" ${current[@]+"${current[@]}"} >"$work/signed.json" || return 1
    api -X POST "$base/v1/releases/demo-9.0.0/publish" --data-binary @"$work/signed.json" \
      >/dev/null || return 1
  fi
  echo "release demo-9.0.0 (1 MiB, signed offline) is published; roll it out to the gen3 elevators with"
  echo "  curl -H \"Authorization: Bearer \$OTALEDGER_TOKEN\" -H 'content-type: application/json' $base/v1/rollouts \\"
  echo "    -d '{\"release_id\": \"demo-9.0.0\", \"selector\": {\"models\": [\"elevator-gen3\"]}}'"
}
publish_demo || echo "the demo release was not published (see above)" >&2 &
PUBLISHER=$!
# A process that dies is started again, as the systemd unit (deploy/systemd) and the compose
# file's restart policy do in production: components that fail are restarted inside the process,
# but a crash (a segfault inside librdkafka, docs/adr/0035) takes every component with it.
# Ctrl-C or SIGTERM stops it gracefully and ends the loop.
stopping=0
trap 'stopping=1' INT TERM
# The publisher waits for the API; it goes when the quick start does.
trap 'kill "$PUBLISHER" 2>/dev/null || true' EXIT
while :; do
  status=0
  "$OTALEDGER" --config otaledger.example.toml up --simulate --credentials "$CREDS" \
    --gateway-credentials "$GW_CREDS" --devices "$DEVICES" --rate "${RATE:-500}" \
    --download --artifact-server "http://$LISTEN" \
    --tuf-root "$KEYS/1.root.json" --director-key "$SERVER_KEYS" "$@" || status=$?
  if [ "$stopping" = 1 ] || [ "$status" = 0 ]; then exit "$status"; fi
  echo "otaledger exited with status $status; starting it again in 2 s (Ctrl-C stops)" >&2
  sleep 2
done
