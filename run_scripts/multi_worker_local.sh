#!/usr/bin/env bash
# Runs `python -m jarn_tf.train --strategy=multi_worker <train flags>` as N
# workers on this machine, each with its own TF_CONFIG on free localhost
# ports, for trying multi-worker training out:
#
#   bash run_scripts/multi_worker_local.sh 2 --dataset=fashion_mnist --model_dir=runs/mw
#
# Worker 0 is the chief: it writes checkpoints, summaries and the export to
# --model_dir (shared by all workers, as it must be on a real cluster). Each
# worker's output is prefixed with [worker i]. The script waits for every
# worker and exits with the first failure's code; when one worker fails the
# others can no longer finish a step, so they get SIGTERM and, after
# MULTI_WORKER_GRACE seconds (default 20), SIGKILL. A SIGTERM or Ctrl-C to the
# script is passed on to every worker: they agree on a step, checkpoint it and
# exit 0, and the same command resumes them all from it.
#
# Environment: PYTHON (default .venv/bin/python if present, else python3);
# MULTI_WORKER_GRACE. Workers get one GPU each when the machine has at
# least N, else they run on the CPU (N processes sharing a GPU would each try
# to take all of its memory).
set -uo pipefail
cd "$(dirname "$0")/.."

if [ $# -lt 1 ] || ! [[ "$1" =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: $0 N [train flags...]   (N >= 1 workers)" >&2
  exit 2
fi
N=$1
shift
for arg in "$@"; do
  case "$arg" in
    --strategy=*|--strategy)
      echo "error: $0 sets --strategy=multi_worker itself; drop $arg" >&2
      exit 2 ;;
  esac
done
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
GRACE=${MULTI_WORKER_GRACE:-20}

# N free ports (bound and released at once: good enough on one machine).
ports=$("$PYTHON" - "$N" <<'EOF'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("localhost", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
for s in socks:
    s.close()
EOF
) || { echo "error: could not find free ports" >&2; exit 2; }
read -r -a PORTS <<<"$ports"
cluster=$(printf '"localhost:%s",' "${PORTS[@]}")
cluster="{\"worker\": [${cluster%,}]}"

num_gpus=0
if command -v nvidia-smi >/dev/null 2>&1; then
  num_gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
fi

declare -A WORKER_OF=()
PIDS=()
for ((i = 0; i < N; i++)); do
  if [ "$num_gpus" -ge "$N" ]; then gpus=$i; else gpus=""; fi
  TF_CONFIG="{\"cluster\": $cluster, \"task\": {\"type\": \"worker\", \"index\": $i}}" \
    CUDA_VISIBLE_DEVICES=$gpus \
    "$PYTHON" -u -m jarn_tf.train --strategy=multi_worker "$@" \
    > >(sed -u "s/^/[worker $i] /") 2>&1 &
  pid=$!
  PIDS+=("$pid")
  WORKER_OF[$pid]=$i
  echo "[launcher] worker $i: pid $pid, localhost:${PORTS[$i]}"
done

alive() { for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null && echo "$p"; done; }
signal_all() { local p; for p in $(alive); do kill -s "$1" "$p" 2>/dev/null; done; }
trap 'echo "[launcher] passing SIGTERM to the workers"; signal_all TERM' TERM
trap 'echo "[launcher] passing SIGINT (as SIGTERM) to the workers"; signal_all TERM' INT

status=0
waiting=("${PIDS[@]}")
while [ "${#waiting[@]}" -gt 0 ]; do
  unset done_pid
  wait -n -p done_pid "${waiting[@]}"
  rc=$?
  if [ -z "${done_pid:-}" ]; then
    continue  # interrupted by a trapped signal; keep waiting
  fi
  rest=()
  for p in "${waiting[@]}"; do [ "$p" != "$done_pid" ] && rest+=("$p"); done
  waiting=("${rest[@]}")
  if [ "$rc" -ne 0 ] && [ "$status" -eq 0 ]; then
    status=$rc
    echo "[launcher] worker ${WORKER_OF[$done_pid]} failed (exit code $rc); stopping the others" >&2
    signal_all TERM
    ( sleep "$GRACE"; for p in "${PIDS[@]}"; do kill -s KILL "$p" 2>/dev/null; done ) &
    killer=$!
  fi
done
[ -n "${killer:-}" ] && kill "$killer" 2>/dev/null
wait 2>/dev/null  # the output filters
if [ "$status" -eq 0 ]; then
  echo "[launcher] all $N workers finished"
else
  echo "[launcher] failed: exit code $status" >&2
fi
exit "$status"
