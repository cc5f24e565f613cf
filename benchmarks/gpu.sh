#!/usr/bin/env bash
# The frozen setting's GPU figures in one command: the frozen/fine-tune steps, the backbone forward, the
# feature cache and the shared multi-task pass at the paper's sizes, then the goals they meet.
# The frozen backbone is also timed with timm's fused window attention and under torch.compile.
#
#   bash benchmarks/gpu.sh [RESULTS_DIR]     # default: $OUT if set, else benchmarks/results
#
# Sized for one 10-minute run on a single H100 or H200: each stage has its own time limit
# (seconds, in the variables below) and writes its JSON as it goes, so a stage cut short keeps
# what it measured and the next one still runs. The files are named after the GPU
# (heads-h200.json, ..., and the whole output in gpu-h200.log). Needs CUDA and frozenrep's Python
# dependencies; where they cannot be installed (a machine without a registry), wheels in .whl/ are
# installed into /tmp/site first. FROZENREP_BENCH_DEVICE=cpu FROZENREP_BENCH_SIZES=default run the
# same stages on a CPU (a smoke test).
set -uo pipefail
cd "$(dirname "$0")/.."
RESULTS=${1:-${OUT:-benchmarks/results}}
DEVICE=${FROZENREP_BENCH_DEVICE:-cuda}
SIZES=${FROZENREP_BENCH_SIZES:-paper}
STEPS=${FROZENREP_BENCH_STEPS:-10}
COCO_S=${COCO_S:-130}         # Mask R-CNN: frozen, fine-tune, frozen fused, frozen compiled + fused
ENGINES_S=${ENGINES_S:-60}    # Mask R-CNN on torchvision and on Detectron2, frozen and fine-tune (Swin-T, 512 px)
FORWARD_S=${FORWARD_S:-150}   # the backbone forward alone: eager, fused, compiled + fused, two input sizes
CACHE_S=${CACHE_S:-70}        # feature cache: COCO and K400, disk and memory
HEADS_S=${HEADS_S:-100}       # ADE20K and K400: frozen, fine-tune, frozen fused
MULTITASK_S=${MULTITASK_S:-50}
PYTHON=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
mkdir -p "$RESULTS"

if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || { echo "gpu.sh: could not install the wheels in .whl/" >&2; exit 1; }
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
missing=$("$PYTHON" - <<'EOF'
import importlib.util
print(" ".join(m for m in ("torch", "torchvision", "timm", "transformers", "jsonschema", "yaml", "safetensors", "numpy")
               if importlib.util.find_spec(m) is None))
EOF
)
if [ -n "$missing" ]; then
    echo "gpu.sh: missing Python packages: $missing (pip install -r envs/requirements.txt, or put their wheels in .whl/)" >&2
    exit 1
fi
TAG=$("$PYTHON" - "$DEVICE" <<'EOF'
import sys, torch
device = sys.argv[1]
if device.startswith("cuda"):
    if not torch.cuda.is_available():
        sys.exit("gpu.sh: CUDA is not available (FROZENREP_BENCH_DEVICE=cpu for a smoke run on the CPU)")
    words = torch.cuda.get_device_name(0).replace("NVIDIA", "").split()
    print(words[0].lower() if words else "gpu")
else:
    print("cpu-smoke")
EOF
) || exit 1
exec > >(tee "$RESULTS/gpu-$TAG.log") 2>&1
echo "gpu.sh: device $DEVICE ($TAG), sizes $SIZES, results in $RESULTS, $(git rev-parse --short HEAD 2>/dev/null)"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>/dev/null || true

stage() {  # stage NAME SECONDS COMMAND...: run with a time limit, report how it ended
    local name=$1 limit=$2
    shift 2
    local start=$SECONDS
    timeout --kill-after=10 "$limit" "$@"
    local rc=$?
    echo "gpu.sh: $name ended with status $rc after $((SECONDS - start)) s (limit $limit s)"
}

stage "COCO steps" "$COCO_S" "$PYTHON" benchmarks/heads.py --device "$DEVICE" --sizes $SIZES \
    --tasks coco --variants fused compile+fused --no-forward --steps "$STEPS" --warmup 3 --out "$RESULTS/heads-$TAG.json"
stage "detection engines" "$ENGINES_S" "$PYTHON" benchmarks/heads.py --device "$DEVICE" \
    --sizes $([ "$SIZES" = paper ] && echo engines || echo "$SIZES") --tasks coco --engines torchvision detectron2 \
    --no-forward --steps "$STEPS" --warmup 3 --out "$RESULTS/detection-engines-$TAG.json"
stage "backbone forward" "$FORWARD_S" "$PYTHON" benchmarks/heads.py --device "$DEVICE" --sizes $SIZES \
    --tasks --variants fused compile+fused --steps "$STEPS" --warmup 3 --out "$RESULTS/heads-forward-$TAG.json"
stage "feature cache" "$CACHE_S" "$PYTHON" benchmarks/feature_cache.py --device "$DEVICE" --sizes $SIZES \
    --samples 32 --root /tmp --out "$RESULTS/feature-cache-$TAG.json"
stage "ADE20K and K400 steps" "$HEADS_S" "$PYTHON" benchmarks/heads.py --device "$DEVICE" --sizes $SIZES \
    --tasks ade20k k400 --variants fused --no-forward --steps "$STEPS" --warmup 3 --out "$RESULTS/heads-rest-$TAG.json"
stage "shared multi-task pass" "$MULTITASK_S" "$PYTHON" benchmarks/multitask.py --device "$DEVICE" --sizes $SIZES \
    --repeats 10 --warmup 3 --out "$RESULTS/multitask-$TAG.json"

results=$(ls "$RESULTS"/heads-$TAG.json "$RESULTS"/heads-forward-$TAG.json "$RESULTS"/heads-rest-$TAG.json \
    "$RESULTS"/feature-cache-$TAG.json 2>/dev/null)
if [ -z "$results" ]; then
    echo "gpu.sh: no stage wrote a result" >&2
    exit 1
fi
"$PYTHON" benchmarks/goals.py $results --out "$RESULTS/goals-$TAG.json"
