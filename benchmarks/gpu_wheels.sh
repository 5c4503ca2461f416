#!/usr/bin/env bash
# The project's Python packages for a CUDA machine with no package registry whose image already has torch and the
# scientific stack (Python 3.12, x86-64), as one archive of an installed site folder small enough for a 64 MiB
# transfer: the project's other dependencies at the versions of this checkout's .venv. On the machine:
#   mkdir -p /tmp/site && tar -xJf DIR/site.tar.xz -C /tmp/site && export PYTHONPATH=/tmp/site:$PWD
# Usage: benchmarks/gpu_wheels.sh [DIR (default .whl)]. Needs the registry (pip download) and .venv; about 3 min.
# What it leaves out: what the image has (IMAGE below, as that image listed its packages on 2026-11-17; its
# transformers, accelerate and peft are carried anyway, since the project needs newer ones), mlflow's server half
# (mlflow-skinny is the `mlflow` the flows import), developer tools; and inside packages, what no run there loads:
# transformers' other model families, lm-eval's built-in tasks (the study registers its own), Prefect's web UI,
# compiled bytecode. Console scripts are not installed: the flows start their servers and workers with `python -m`.
# Checked on this machine with this .venv's transformers, lm-eval and Prefect cut the same way: the paper-3b-smoke
# study (tests/test_flows.py) and gpu_arms.py's CPU check pass.
set -euo pipefail
dir=${1:-.whl}
python=${PYTHON:-.venv/bin/python}
IMAGE="absl-py aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core
cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock
flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx
huggingface-hub humanize hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin
jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax
llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict
multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro nvidia-cublas
nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand
nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink
nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript opencv-python-headless optax opt-einsum
opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy pillow pip pluggy portalocker
prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing pyproject-hooks
pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist python-dateutil
pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image scikit-learn
scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six sortedcontainers
statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm
tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm treescope triton typer
typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp"
LEAVE_OUT="mlflow flask flask-cors gunicorn graphene graphql-core graphql-relay huey skops itsdangerous blinker docker
kernels ruff py-spy amplitude-analytics"
wanted=$($python -m pip freeze --exclude-editable | "$python" -c '
import sys
norm = lambda s: s.strip().lower().replace("_", "-").replace(".", "-")
skip = {norm(n) for n in sys.argv[1].split() + sys.argv[2].split()}
for line in sys.stdin:
    name, _, version = line.strip().partition("==")
    if version and norm(name) not in skip:
        print(f"{name}=={version}")
' "$IMAGE" "$LEAVE_OUT")
wheels=$(mktemp -d)
site=$(mktemp -d)
trap 'rm -rf "$wheels" "$site"' EXIT
platforms=()
for tag in manylinux_2_39 manylinux_2_35 manylinux_2_34 manylinux_2_31 manylinux_2_28 manylinux_2_27 manylinux_2_24 \
    manylinux_2_17 manylinux2014 manylinux1; do
    platforms+=(--platform "${tag}_x86_64")
done
sdists=()
for req in $wanted; do
    $python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        "${platforms[@]}" -d "$wheels" "$req" 2>/dev/null || sdists+=("$req")
done
for req in "${sdists[@]}"; do  # PyPI has only sources of a few (sqlitedict, word2number): pure Python, built here
    $python -m pip wheel -q --no-deps -w "$wheels" "$req"
done
for wheel in "$wheels"/*.whl; do  # a wheel installs by unpacking; .data folders hold only scripts and headers
    unzip -qo "$wheel" -d "$site"
done
drop() {  # folder, regex of the subfolders to keep: removes the others
    find "$site/$1" -mindepth 1 -maxdepth 1 -type d | grep -Ev "/$1/($2)\$" | xargs -r rm -rf
}
# encoder_decoder: the auto classes import it; bloom: TRL does
drop transformers/models 'auto|qwen2|qwen2_vl|qwen2_5_vl|encoder_decoder|bloom'
drop lm_eval/tasks '_none_'
rm -rf "$site"/prefect/server/ui "$site"/prefect/server/ui-v2 "$site"/*.data
find "$site" -name __pycache__ -type d -prune -exec rm -rf {} +
mkdir -p "$dir"
tar -C "$site" -cf - . | xz -9 -T2 >"$dir/site.tar.xz"
echo "$(ls "$wheels" | wc -l) packages, $(du -sh "$site" | cut -f1) unpacked: $(du -h "$dir/site.tar.xz" | cut -f1) $dir/site.tar.xz"
