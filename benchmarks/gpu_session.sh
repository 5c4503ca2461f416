#!/usr/bin/env bash
# One short session on a CUDA machine with no package registry, all of it in one command (a lent machine's time
# counts from its start): the packages from benchmarks/gpu_wheels.sh unpacked, the paper-size arms benchmark with
# the faster paths (with a trace) and without them (side by side), then the paper-3b-smoke study.
# Usage: benchmarks/gpu_session.sh OUT_DIR [SITE_ARCHIVE (default .whl/site.tar.xz)]. About 8 min on one H200.
# Writes to OUT_DIR: arms.log, trace.txt, arms_stock.log and the study's log, report and summary (gpu_study.sh).
set -uo pipefail
out=${1:?usage: benchmarks/gpu_session.sh OUT_DIR [SITE_ARCHIVE]}
archive=${2:-.whl/site.tar.xz}
start=$SECONDS
mkdir -p "$out" /tmp/site
tar -xJf "$archive" -C /tmp/site || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 PREFECT_UI_ENABLED=false
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 MLFLOW_DISABLE_TELEMETRY=true PREFECT_SERVER_ANALYTICS_ENABLED=false
echo "packages unpacked in $((SECONDS - start)) s"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
step() {  # name, seconds, command...: runs it with a time limit, its output to OUT_DIR/name.log
    local name=$1 limit=$2 t=$SECONDS
    shift 2
    timeout "$limit" "$@" >"$out/$name.log" 2>&1
    echo "$name: rc $? in $((SECONDS - t)) s"
    tail -n 2 "$out/$name.log"
}
step arms 170 python3 benchmarks/gpu_arms.py --trace "$out/trace.txt"
step arms_stock 130 env FORGETTING_FAST_PATHS=0 python3 benchmarks/gpu_arms.py --steps 3 --rollout-tokens 32
LIMIT=${LIMIT:-260} GPU_STUDY_WORK=/tmp/gpu-study bash benchmarks/gpu_study.sh "$out" paper-3b-smoke
echo "all in $((SECONDS - start)) s"
