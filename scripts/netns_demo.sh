#!/usr/bin/env bash
# The multi-machine case on one machine: fedtff workers in network namespaces.
#
#   sudo scripts/netns_demo.sh            # 3 workers
#   sudo NUM_WORKERS=2 scripts/netns_demo.sh
#
# Each worker runs `python -m fedtff.execution.worker --port=8000` in a network namespace
# of its own, as if on its own machine: its own interfaces, its own port 8000,
# one address in a private /24 (10.231.7.0/24 unless SUBNET=a.b.c is given).
# A bridge in this (root) namespace, with address .1, joins the namespaces'
# veth pairs; it has no physical port and IP forwarding is not touched, so the
# /24 exists only inside this machine and no packet leaves it. The trainer runs
# here, outside the namespaces, and reaches the workers at their /24 addresses:
# it trains a few FedAvg rounds locally and on the workers and compares them,
# then times rounds with scripts/bench_distributed.py. On exit, normal or not,
# the trap stops the workers and deletes the namespaces, veths and bridge.
# Needs root (ip netns, ip link).

set -euo pipefail
cd "$(dirname "$0")/.."

NUM_WORKERS=${NUM_WORKERS:-3}
SUBNET=${SUBNET:-10.231.7}
PORT=8000
BRIDGE=fxbr0
PYTHON=${PYTHON:-.venv/bin/python}
LOG_DIR=$(mktemp -d /tmp/fedtff-netns.XXXXXX)
export TF_CPP_MIN_LOG_LEVEL=3

namespaces=() links=() worker_pids=()

die() { echo "netns_demo.sh: error: $*" >&2; exit 1; }

cleanup() {
  for pid in "${worker_pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${worker_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  for ns in "${namespaces[@]}"; do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null || true  # Also deletes the veth end inside it, so its peer.
  done
  for link in "${links[@]}"; do ip link del "$link" 2>/dev/null || true; done
  echo "cleaned up: namespaces ${namespaces[*]:-none}, links ${links[*]:-none}; logs in $LOG_DIR"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

[[ $EUID -eq 0 ]] || die 'needs root for ip netns and ip link'
ip -4 route show | grep -q "^${SUBNET}\." && die "${SUBNET}.0/24 is already routed here; pick SUBNET=a.b.c"
ip link show "$BRIDGE" &>/dev/null && die "a link named $BRIDGE already exists"

worker_address() { echo "${SUBNET}.$((10 + $1))"; }

add_bridge() {
  ip link add "$BRIDGE" type bridge
  links+=("$BRIDGE")
  ip addr add "${SUBNET}.1/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
}

add_namespace() {  # $1: worker number
  local ns="fedtff-w$1" host_end="fxv$1"
  ip netns list | grep -qw "$ns" && die "network namespace $ns already exists"
  ip netns add "$ns"
  namespaces+=("$ns")
  ip link add "$host_end" type veth peer name eth0 netns "$ns"
  links+=("$host_end")
  ip link set "$host_end" master "$BRIDGE" up
  ip -n "$ns" addr add "$(worker_address "$1")/24" dev eth0
  ip -n "$ns" link set eth0 up
  ip -n "$ns" link set lo up
}

start_worker() {  # $1: worker number
  ip netns exec "fedtff-w$1" "$PYTHON" -m fedtff.execution.worker --port="$PORT" \
      --host="$(worker_address "$1")" 2>"$LOG_DIR/worker$1.log" &
  worker_pids+=($!)
}

wait_for_worker() {  # $1: worker number
  local log="$LOG_DIR/worker$1.log"
  for _ in $(seq 1200); do
    grep -q 'listening on' "$log" && { grep 'listening on' "$log"; return; }
    kill -0 "${worker_pids[$1 - 1]}" 2>/dev/null || { cat "$log"; die "worker $1 exited"; }
    sleep 0.1
  done
  die "worker $1 did not start within 120 s"
}

veth_bytes() {  # Bytes through the host ends of the veths, received + sent.
  local total=0
  for i in $(seq "$NUM_WORKERS"); do
    total=$((total + $(cat "/sys/class/net/fxv$i/statistics/rx_bytes") \
                   + $(cat "/sys/class/net/fxv$i/statistics/tx_bytes")))
  done
  echo "$total"
}

add_bridge
for i in $(seq "$NUM_WORKERS"); do add_namespace "$i"; start_worker "$i"; done
for i in $(seq "$NUM_WORKERS"); do wait_for_worker "$i"; done

workers=$(for i in $(seq "$NUM_WORKERS"); do echo -n "$(worker_address "$i"):$PORT,"; done)
workers=${workers%,}
echo "namespaces: $(ip netns list | grep -o 'fedtff-w[0-9]*' | tr '\n' ' ')"
echo "route from the trainer: $(ip route get "$(worker_address 1)" | head -1)"
echo "worker 1 sees only: $(ip -n fedtff-w1 -br addr | tr -s ' ' | tr '\n' ';')"

before=$(veth_bytes)
"$PYTHON" - "$workers" <<'EOF'
"""Trains 3 seeded FedAvg rounds locally, then on the namespaced workers."""
import os, sys
import numpy as np
import tensorflow as tf
import tensorflow_federated as tff
import fedtff
from fedtff.execution import distributed
from fedtff.algorithms import tff_model

x = np.random.default_rng(0).normal(size=(400, 8)).astype('float32')
y = np.argmax(x[:, :3], axis=1).astype('int32')
clients = fedtff.data.from_arrays(x, y, np.array_split(np.arange(400), 40)).preprocess(
    lambda d: d.batch(10))
model_fn = lambda: fedtff.models.mlp((8,), 3, hidden_units=(16,))
composed = tff.simulation.compose_dataset_computation_with_learning_process(
    clients.dataset_computation, fedtff.build_fed_avg(model_fn, clients.element_type_structure))

def train():
  state = composed.set_model_weights(composed.initialize(), tff_model.initial_weights(model_fn, 0))
  losses = []
  for round_num in range(1, 4):
    ids = fedtff.sample_clients(clients.client_ids, 20, round_num=round_num, seed=0)
    output = composed.next(state, ids)
    state = output.state
    losses.append(float(output.metrics['client_work']['train']['loss']))
  return losses, tf.nest.flatten(composed.get_model_weights(state))

with fedtff.local_runtime():
  local_losses, local_weights = train()
workers = sys.argv[1].split(',')
with distributed.remote_runtime(workers, connect_timeout_s=60):
  remote_losses, remote_weights = train()
print(f'losses, local runtime:         {[round(l, 6) for l in local_losses]}')
print(f'losses, {len(workers)} namespaced workers: {[round(l, 6) for l in remote_losses]}')
print('max |weight difference|: %.2g' % max(
    np.max(np.abs(a - b)) for a, b in zip(local_weights, remote_weights)))
EOF
echo "bytes through the workers' veths during training: $(( $(veth_bytes) - before ))"

"$PYTHON" scripts/bench_distributed.py --workers="$workers" --clients="${BENCH_CLIENTS:-50}" \
    --rounds="${BENCH_ROUNDS:-5}"
