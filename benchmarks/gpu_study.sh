#!/usr/bin/env bash
# The study on a CUDA machine, through the same flows as on a laptop: model.device auto picks the GPU and
# model.dtype auto bf16. Runs the study of each profile named (default: micro, the plumbing, then tiny, its one
# seed 0), timing each, and copies each report (report.md, summary.json) to OUT_DIR.
# Usage: benchmarks/gpu_study.sh [OUT_DIR [PROFILE...]]; LIMIT (seconds a profile, default 540) stops a study.
# Measured on one H100: micro 100 s; tiny arms and 14 of 19 evaluations in 6.5 min (so about 8 min in all).
# The Python packages must be importable already (pip install -e . on a machine with registries).
set -uo pipefail
out=${1:-runs/gpu}
shift $(($# > 0 ? 1 : 0))
profiles=(micro tiny)
[ $# -eq 0 ] || profiles=("$@")
work=${GPU_STUDY_WORK:-runs/gpu-study}
mkdir -p "$out" "$work"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 MLFLOW_DISABLE_TELEMETRY=true PREFECT_SERVER_ANALYTICS_ENABLED=false
export TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
python=${PYTHON:-python3}

$python - <<'EOF'
import torch, transformers, trl, peft, prefect, mlflow, lm_eval
print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-")
print("transformers", transformers.__version__, "trl", trl.__version__, "peft", peft.__version__,
      "prefect", prefect.__version__, "mlflow", mlflow.__version__, "lm_eval", lm_eval.__version__)
EOF

status=0
run() {  # profile
    local name=$1 start=$SECONDS
    timeout "${LIMIT:-540}" $python -m flows.study --profile "$name" --output-dir "$work/$name" >"$out/$name.log" 2>&1
    local rc=$?
    echo "$name: rc $rc, $((SECONDS - start)) s wall"
    [ $rc -eq 0 ] || status=$rc
    for f in "$work/$name"/*/report/report.md "$work/$name"/*/report/summary.json; do
        [ -f "$f" ] && cp "$f" "$out/$name.$(basename "$f")"
    done
    tail -n 3 "$out/$name.log"
}
for profile in "${profiles[@]}"; do
    run "$profile"
done
exit $status
