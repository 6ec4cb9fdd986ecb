#!/usr/bin/env bash
# Start a Dask scheduler (on this host) and one dask-cuda worker per local GPU that can run
# wav2lip-hq enhancement tasks. Run from the project root on each GPU host; the scheduler once.
#   deployments/dask-gpu-cluster.sh scheduler
#   deployments/dask-gpu-cluster.sh workers tcp://scheduler-host:8786
set -euo pipefail
cd "$(dirname "$0")/.."
set -a; [ -f deployments/worker.env ] && . deployments/worker.env; set +a
case "${1:-}" in
  scheduler) exec .venv/bin/dask scheduler --port 8786 --preload deployments/dask_preload.py ;;
  workers)   exec .venv/bin/dask cuda worker "${2:?scheduler address}" --resources GPU=1 \
               --preload deployments/dask_preload.py ;;
  *) echo "usage: $0 scheduler | workers tcp://host:8786" >&2; exit 2 ;;
esac
