#!/usr/bin/env bash
# The CUDA check: the default pipeline's stages on a GPU, then training throughput there (ours vs
# mlx-lm's trainer vs PyTorch + PEFT), for a Linux machine with an NVIDIA GPU, CUDA 13 and a
# Python that has torch, transformers and peft, but no package registry:
#
#   bash benchmarks/cuda_check.sh WHEELS OUT [QUICK]
#
# WHEELS holds mlx, mlx-cuda-13, mlx-lm and orjson wheels (pip download, see the README); they
# are installed into /tmp/site next to that Python's own packages (the CUDA libraries come from
# its nvidia-* wheels). OUT receives log.txt and metrics.tgz. A third argument 1 (QUICK) shrinks
# everything so the script can be tried on a CPU machine first (MLX's CPU wheels stand in). It runs the
# stages in this checkout and overwrites data/, checkpoints/ and metrics/: use a scratch clone.
set -uo pipefail
wheels=${1:?wheel folder}; out=${2:?output folder}; quick=${3:-0}
mkdir -p "$out"
exec > >(tee -a "$out/log.txt") 2>&1
say() { echo "== $(date +%T) $*"; }
cd "$(dirname "$0")/.."

if [ -n "$(ls "$wheels"/*.whl 2>/dev/null)" ]; then
  say "install MLX next to the system Python's packages"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site "$wheels"/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
# libmlx.so looks for cuBLAS, cuDNN, NCCL and NVRTC in $ORIGIN/../../nvidia (its wheel's RPATH),
# which --target does not give it: point the loader at the nvidia-* wheels torch brought. Do not
# symlink that folder into /tmp/site instead: MLX then also takes its JIT headers from there, and
# nvidia/cu13/include lacks crt/mma.h ("Failed to compile kernel ... qmm_sm90"); the toolkit's
# headers (CUDA_HOME) are complete.
nv=$(python3 -c 'import nvidia; print(list(nvidia.__path__)[0])' 2>/dev/null) &&
  export LD_LIBRARY_PATH=$(ls -d "$nv"/*/lib | tr '\n' ':')${LD_LIBRARY_PATH:-}
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null
python3 - <<'PY'
import importlib.metadata as md, platform
import mlx.core as mx
print("mlx", mx.__version__, "mlx-lm", md.version("mlx-lm"), "device", mx.default_device(),
      "python", platform.python_version())
for p in ("torch", "transformers", "peft"):
    try:
        print(p, md.version(p))
    except md.PackageNotFoundError:
        print(p, "missing")
PY

# 1. The pipeline's stages, as dvc.yaml renders them (qlora.compute auto: quantized on a GPU).
mkdir -p /tmp/cpu_metrics && cp metrics/*.json /tmp/cpu_metrics/  # the committed CPU run
rm -f metrics/{train,fuse,eval}.json  # so a failed stage cannot show the CPU numbers as its own
sets=()
[ "$quick" = 1 ] && sets=(--set train.iters=8 --set train.steps_per_eval=8 --set
  train.steps_per_save=8 --set eval.limit=8 --set split.valid_size=16 --set data.rows=200)
say "stages"
timeout "${STAGES_LIMIT:-240}" python3 benchmarks/run_stages.py "${sets[@]}"
say "stages exit $?"
python3 - <<'PY'
import json, pathlib
for name in ("train", "fuse", "eval"):
    gpu, cpu = (pathlib.Path(d, f"{name}.json") for d in ("metrics", "/tmp/cpu_metrics"))
    if not gpu.is_file():
        print(name, "no metrics"); continue
    g, c = json.loads(gpu.read_text()), json.loads(cpu.read_text())
    for k in sorted(g):
        print(f"{name}.{k}: gpu {g[k]}  cpu(dvc.lock) {c.get(k)}")
PY
[ -f checkpoints/sft_adapter/run_info.json ] &&
  python3 -c 'import json; print(json.load(open("checkpoints/sft_adapter/run_info.json"))["base"])'
tar czf "$out/metrics.tgz" metrics checkpoints/sft_adapter/run_info.json 2>/dev/null

# 2. Training throughput on the same GPU.
if [ "$quick" = 1 ]; then
  bench=(--sizes 20m --seq 128 --warmup 1 --steps 2 --dtype float32)
else
  bench=(--sizes 100m,2b --seq 2048 --warmup 3 --steps 8 --dtype bfloat16)
fi
say "bench_train"
timeout "${BENCH_LIMIT:-330}" python3 benchmarks/bench_train.py "${bench[@]}" --batch 4 \
  --setups ours,ours_q4,direct,direct_q4,torch --torch-python python3
say "bench exit $?"
