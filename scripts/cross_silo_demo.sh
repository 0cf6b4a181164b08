#!/usr/bin/env bash
# Cross-silo on one machine: sites alice, bob and carol, each in a network namespace of its own,
# serving over mutual TLS; the trainer in this (root) namespace (docs/cross_silo.md).
#
#   sudo scripts/cross_silo_demo.sh                 # default trainer step: the quickstart
#   sudo scripts/cross_silo_demo.sh CMD ARGS...     # run CMD as the trainer instead
#
# As scripts/netns_demo.sh: a bridge here (address .1 of a private /24, 10.231.8.0/24 unless
# SUBNET=a.b.c) joins one veth per namespace; no packet leaves the machine. Each site runs
# `python -m fedtff.execution.site --site=NAME --port=8000 --host=<its address>` with the
# credentials `python -m fedtff.execution.certs` made for it in $WORK/certs/NAME, and its data in
# $WORK/data/NAME (export_site_data: the quickstart's clients, split over the sites). The site's
# worker_binary runs in yet another namespace, private to the site, that has only loopback. The
# trainer command sees FEDTFF_CREDENTIALS (its credentials directory) and FEDTFF_SITES
# ('alice=10.231.8.11:8000,bob=...'). The default trainer step (train_quickstart) trains the
# quickstart ($ROUNDS rounds, 5 by default) over the sites, capturing the bridge, and on this
# machine alone, and prints PASS if every metrics row agrees within 1e-5 and a needle from
# alice's data is absent from the capture (scripts/cross_silo_demo.py). On exit, normal or
# not, the trap stops the sites and deletes the namespaces, veths, bridge and $WORK (certificates
# and data); the site logs stay in $LOG_DIR.
# Needs root (ip netns, ip link; the sites need CAP_SYS_ADMIN for their private namespaces).

set -euo pipefail
cd "$(dirname "$0")/.."

SITES=(${SITES:-alice bob carol})
SUBNET=${SUBNET:-10.231.8}
PORT=8000
BRIDGE=fxsbr0
DEMO_CONFIG=configs/quickstart.py
ROUNDS=${ROUNDS:-5}
PYTHON=${PYTHON:-.venv/bin/python}
WORK=$(mktemp -d /tmp/fedtff-xsilo.XXXXXX)
LOG_DIR=$(mktemp -d /tmp/fedtff-xsilo-logs.XXXXXX)
export TF_CPP_MIN_LOG_LEVEL=3

namespaces=() links=() site_pids=()

die() { echo "cross_silo_demo.sh: error: $*" >&2; exit 1; }

cleanup() {
  for pid in "${site_pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${site_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  for ns in "${namespaces[@]}"; do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null || true  # Also deletes the veth end inside it, so its peer.
  done
  for link in "${links[@]}"; do ip link del "$link" 2>/dev/null || true; done
  rm -rf "$WORK"
  echo "cleaned up: namespaces ${namespaces[*]:-none}, links ${links[*]:-none}, $WORK; site logs in $LOG_DIR"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

[[ $EUID -eq 0 ]] || die 'needs root for ip netns and ip link'
ip -4 route show | grep -q "^${SUBNET}\." && die "${SUBNET}.0/24 is already routed here; pick SUBNET=a.b.c"
ip link show "$BRIDGE" &>/dev/null && die "a link named $BRIDGE already exists"

site_address() { echo "${SUBNET}.$((10 + $1))"; }  # $1: site number, from 1

add_bridge() {
  ip link add "$BRIDGE" type bridge
  links+=("$BRIDGE")
  ip addr add "${SUBNET}.1/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
}

add_namespace() {  # $1: site number, $2: site name
  local ns="fedtff-$2" host_end="fxs$1"
  ip netns list | grep -qw "$ns" && die "network namespace $ns already exists"
  ip netns add "$ns"
  namespaces+=("$ns")
  ip link add "$host_end" type veth peer name eth0 netns "$ns"
  links+=("$host_end")
  ip link set "$host_end" master "$BRIDGE" up
  ip -n "$ns" addr add "$(site_address "$1")/24" dev eth0
  ip -n "$ns" link set eth0 up
  ip -n "$ns" link set lo up
}

make_credentials() {
  "$PYTHON" -m fedtff.execution.certs --out="$WORK/certs" --sites "${SITES[@]}" --trainers trainer
}

export_site_data() {  # Every site's clients of $DEMO_CONFIG into $WORK/data/<site>.
  "$PYTHON" -m fedtff.execution.site_data export --config="$DEMO_CONFIG" --out="$WORK/data" \
      --sites "${SITES[@]}"
}

start_site() {  # $1: site number, $2: site name
  ip netns exec "fedtff-$2" "$PYTHON" -m fedtff.execution.site --site="$2" \
      --data="$WORK/data/$2" --port="$PORT" --host="$(site_address "$1")" \
      --credentials="$WORK/certs/$2" 2>"$LOG_DIR/$2.log" &
  site_pids+=($!)
}

wait_for_site() {  # $1: site number, $2: site name
  local log="$LOG_DIR/$2.log"
  for _ in $(seq 1200); do
    grep -q 'listening on' "$log" && { grep 'listening on' "$log"; return; }
    kill -0 "${site_pids[$1 - 1]}" 2>/dev/null || { cat "$log"; die "site $2 exited"; }
    sleep 0.1
  done
  die "site $2 did not start within 120 s"
}

check_sites() {  # The default trainer step: each site's pin, allow-list and worker, over TLS.
  "$PYTHON" - <<'PY'
import os
import numpy as np
import tensorflow_federated as tff
from fedtff.execution import tls

creds = tls.TrainerCredentials.load(os.environ['FEDTFF_CREDENTIALS'])
sites = dict(s.split('=') for s in os.environ['FEDTFF_SITES'].split(','))
for site, address in sites.items():
  print(f'{site} at {address}:', tls.control_request(creds, site, address, {'op': 'hello'}))

@tff.federated_computation(tff.FederatedType(np.float32, tff.CLIENTS))
def total(values):
  return tff.federated_sum(values)

with tls.secure_runtime(creds, sites, connect_timeout_s=60):
  print('federated_sum of 1..6 over the sites, through their TLS front ends:',
        total([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]))
PY
}

train_quickstart() {  # The default trainer step: scripts/cross_silo_demo.py (PASS or FAIL).
  check_sites
  "$PYTHON" scripts/cross_silo_demo.py --bridge="$BRIDGE" --data="$WORK/data" \
      --workdir="$WORK/runs" --rounds="$ROUNDS"
}

run_trainer() {  # The trainer, in this namespace: "$@", or train_quickstart without arguments.
  if [[ $# -eq 0 ]]; then train_quickstart; else "$@"; fi
}

add_bridge
make_credentials
export_site_data
for i in "${!SITES[@]}"; do
  name=${SITES[$i]}
  add_namespace $((i + 1)) "$name"
  start_site $((i + 1)) "$name"
done
for i in "${!SITES[@]}"; do wait_for_site $((i + 1)) "${SITES[$i]}"; done

FEDTFF_SITES=$(for i in "${!SITES[@]}"; do echo -n "${SITES[$i]}=$(site_address $((i + 1))):$PORT,"; done)
export FEDTFF_SITES=${FEDTFF_SITES%,} FEDTFF_CREDENTIALS="$WORK/certs/trainer"
echo "sites: $FEDTFF_SITES"
echo "alice's namespace listens on: $(ip netns exec fedtff-alice ss -Hltn | awk '{print $4}' | tr '\n' ' ')"
run_trainer "$@"
