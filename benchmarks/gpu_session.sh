#!/usr/bin/env bash
# One short session on a CUDA machine with no package registry, all of it in one command (a lent machine's time
# counts from its start): the packages from benchmarks/gpu_wheels.sh unpacked, the paper-size arms benchmark with
# the faster paths (with a trace) and without them (side by side), then the paper-3b-smoke study.
# Usage: benchmarks/gpu_session.sh OUT_DIR [SITE_ARCHIVE (default .whl/site.tar.xz; - : the packages installed)].
# About 8 min on one H200. Writes to OUT_DIR: arms.log, trace.txt, arms_stock.log and the study's log, report and
# summary (gpu_study.sh). ARMS_ARGS adds arguments to both gpu_arms.py runs; a dry run of the plumbing on a CPU:
#   PATH=.venv/bin:$PATH ARMS_ARGS="--text-layers 1 --vision-blocks 1 --steps 1 --batch 1 --prompts 1 \
#     --generations 2 --rollout-tokens 4" LIMIT=900 benchmarks/gpu_session.sh /tmp/gpu-session -
set -uo pipefail
out=${1:?usage: benchmarks/gpu_session.sh OUT_DIR [SITE_ARCHIVE]}
archive=${2:-.whl/site.tar.xz}
start=$SECONDS
mkdir -p "$out"
if [ "$archive" != - ]; then
    mkdir -p /tmp/site && tar -xJf "$archive" -C /tmp/site || exit 1
    export PYTHONPATH=/tmp/site:$PWD
    echo "packages unpacked in $((SECONDS - start)) s"
fi
export PYTHONUNBUFFERED=1 PREFECT_UI_ENABLED=false
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 MLFLOW_DISABLE_TELEMETRY=true PREFECT_SERVER_ANALYTICS_ENABLED=false
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>&1
step() {  # name, seconds, command...: runs it with a time limit, its output to OUT_DIR/name.log
    local name=$1 limit=$2 t=$SECONDS
    shift 2
    timeout "$limit" "$@" >"$out/$name.log" 2>&1
    echo "$name: rc $? in $((SECONDS - t)) s"
    tail -n 2 "$out/$name.log"
}
step arms 170 python3 benchmarks/gpu_arms.py --trace "$out/trace.txt" ${ARMS_ARGS:-}
step arms_stock 130 env FORGETTING_FAST_PATHS=0 python3 benchmarks/gpu_arms.py --steps 3 --rollout-tokens 32 ${ARMS_ARGS:-}
LIMIT=${LIMIT:-260} GPU_STUDY_WORK=/tmp/gpu-study bash benchmarks/gpu_study.sh "$out" paper-3b-smoke
echo "all in $((SECONDS - start)) s"
