#!/usr/bin/env bash
# Per-component peak RSS during a 30,000-device rollout, every component its own process.
set -u
B=/root/.cache/otaledger/target/release/otaledger
export OTALEDGER_TOPIC_PREFIX=rss30k. OTALEDGER_DB_SCHEMA=rss30k OTALEDGER_MQTT_TOPIC_ROOT=rss30k/devices \
  OTALEDGER_AMQP_QUEUE=rss30k.reports OTALEDGER_AMQP_EXCHANGE=rss30k.gateway-commands OTALEDGER_HTTP_LISTEN=127.0.0.1:18081 RUST_LOG=warn
psql -h 127.0.0.1 -U postgres -qc "DROP SCHEMA IF EXISTS rss30k CASCADE" 2>/dev/null
$B init
declare -A PIDS
for c in api projector mqtt-bridge amqp-bridge router saga dispatcher rollout-projector history; do
  $B run $c > /tmp/rss-$c.log 2>&1 & PIDS[$c]=$!
done
sleep 3
$B simulate --devices 30000 --rate 200 --install-ms 0 > /tmp/rss-sim.log 2>&1 & PIDS[simulator]=$!
for i in $(seq 120); do n=$(curl -s 127.0.0.1:18081/v1/fleet/summary | python3 -c "import json,sys;print(json.load(sys.stdin).get('total',0))" 2>/dev/null); [ "$n" = 30000 ] && break; sleep 1; done
echo "fleet: $n"
start=$(date +%s.%N)
id=$(curl -s -XPOST 127.0.0.1:18081/v1/rollouts -H 'content-type: application/json' -d '{"release":{"version":"30.0.0","artifact_uri":"https://artifacts.example/fw/30.bin","sha256":"'$(printf 'cd%.0s' {1..32})'","size_bytes":1,"signature":"s"},"selector":{"models":["elevator-gen2","elevator-gen3","escalator-e1","press-p500","conveyor-c7"]},"strategy":{"waves_pct":[1,10,50,100],"max_in_flight":30000,"health_gate_window_s":0,"min_devices_for_verdict":1,"device_timeout_s":600}}' | python3 -c "import json,sys;print(json.load(sys.stdin)['rollout_id'])")
for i in $(seq 300); do s=$(curl -s 127.0.0.1:18081/v1/rollouts/$id | python3 -c "import json,sys;print(json.load(sys.stdin)['state'])" 2>/dev/null); [ "$s" = COMPLETED ] && break; sleep 0.5; done
end=$(date +%s.%N)
echo "rollout $s in $(echo "$end - $start" | bc) s"
for c in "${!PIDS[@]}"; do printf "%-18s %s\n" "$c" "$(grep VmHWM /proc/${PIDS[$c]}/status 2>/dev/null | awk '{print $2/1024 " MiB"}')"; done | sort
for c in "${!PIDS[@]}"; do kill -TERM ${PIDS[$c]} 2>/dev/null; done
sleep 3
