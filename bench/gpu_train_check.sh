#!/usr/bin/env bash
# One GPU lease of the mixed-precision training work (issue: GPU training at full speed): build
# Release with the CUDA backend, then the stages named in STAGES (comma list, default all):
#   tests    test_backend_cuda (every op in fp32/bf16/fp16 against the CPU) + test_cli's CUDA tests
#   bench    the 8-layer seed model (configs/cuda-nn-6.9b.yaml model.n_layers=8) at 8 x 2048:
#            nnkit bf16 and nnkit fp32+TF32
#   hf       the same model and batch in HF transformers (bench/hf_train.py), same lease
#   capacity the 8-layer seed model with router capacity_factor 1.25, bf16: the padded layout
#            recorded in a CUDA Graph vs the compact layout uncaptured (cuda_graphs false)
#   profile  NNKIT_CUDA_PROFILE=1 per-op GPU time of the 8-layer bf16 step
#   full     the full 30-layer 6.9B model, bf16, activation checkpointing, batch 4 x 2048
#   track    (inside tests: test_cli CudaTraining.*) bf16/fp16 vs fp32 over 300 gpu-medium steps
#   bash bench/gpu_train_check.sh [OUT_DIR] [STAGES]     (needs data/demo.tokens)
# Every result goes to OUT_DIR (default build-gpu/out), one file per stage.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-build-gpu/out}
stages=${2:-tests,bench,capacity,profile,full,hf}
mkdir -p "$out"
has() { [[ ",$stages," == *",$1,"* ]]; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$out/gpu.txt" 2>&1
start=$(date +%s)
stamp() { echo "[$(( $(date +%s) - start )) s] $*"; }

cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 \
  -DNNKIT_TEST_AREAS="backend_cuda;cli" > "$out/build.txt" 2>&1 &&
  cmake --build build-gpu -j "$(nproc)" >> "$out/build.txt" 2>&1 || { tail -60 "$out/build.txt"; exit 1; }
stamp "built"

bench=(python3 bench/gpu_train_bench.py --nnkit build-gpu/bin/nnkit --config configs/cuda-nn-6.9b.yaml)
seed8=(model.n_layers=8 train.batch_size=8 train.seq_len=2048)

if has tests; then
  timeout 300 build-gpu/bin/test_backend_cuda > "$out/cuda_tests.txt" 2>&1
  echo "test_backend_cuda exit $?" >> "$out/cuda_tests.txt"
  grep -E "^\[  (FAILED|PASSED) |exit" "$out/cuda_tests.txt" | tail -30
  stamp "cuda tests"
  if [ "${SKIP_CLI_TESTS:-0}" != "1" ]; then
    timeout 400 build-gpu/bin/test_cli --gtest_filter="${CLI_TEST_FILTER:-*Cuda*}" > "$out/cuda_cli_tests.txt" 2>&1
    echo "test_cli (CUDA) exit $?" >> "$out/cuda_cli_tests.txt"
    grep -E "^\[  (FAILED|PASSED) |OK \]|exit" "$out/cuda_cli_tests.txt" | tail -12
    stamp "cli tests"
  fi
fi

if has bench; then
  "${bench[@]}" --steps 14 --warmup 4 --label nnkit-bf16 -- "${seed8[@]}" \
    'backend={type: cuda, precision: bf16}' > "$out/bench_nnkit_bf16.json" 2> "$out/bench_nnkit_bf16.err"
  cut -c1-600 "$out/bench_nnkit_bf16.json"
  stamp "nnkit bf16"
  "${bench[@]}" --steps 8 --warmup 3 --label nnkit-fp32-tf32 -- "${seed8[@]}" \
    'backend={type: cuda, precision: fp32, tf32: true}' > "$out/bench_nnkit_tf32.json" 2>&1
  cut -c1-400 "$out/bench_nnkit_tf32.json"
  stamp "nnkit tf32"
fi

if has capacity; then
  "${bench[@]}" --steps 14 --warmup 4 --label nnkit-bf16-capacity-graphs -- "${seed8[@]}" \
    model.moe.router.capacity_factor=1.25 'backend={type: cuda, precision: bf16}' \
    > "$out/bench_capacity_graphs.json" 2> "$out/bench_capacity_graphs.err"
  cut -c1-600 "$out/bench_capacity_graphs.json"
  grep -h "CUDA Graph\|uncaptured" "$out/bench_capacity_graphs.err" | head -3
  "${bench[@]}" --steps 14 --warmup 4 --label nnkit-bf16-capacity-uncaptured -- "${seed8[@]}" \
    model.moe.router.capacity_factor=1.25 'backend={type: cuda, precision: bf16, cuda_graphs: false}' \
    > "$out/bench_capacity_plain.json" 2>&1
  cut -c1-600 "$out/bench_capacity_plain.json"
  stamp "capacity"
fi

if has profile; then
  "${bench[@]}" --steps 6 --warmup 2 --label nnkit-bf16-profile --env NNKIT_CUDA_PROFILE=1 -- \
    "${seed8[@]}" 'backend={type: cuda, precision: bf16}' > "$out/profile_bf16.json" 2>&1
  python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(r.get('profile', r)[:3500])" \
    "$out/profile_bf16.json"
  stamp "profile"
fi

if has full; then
  "${bench[@]}" --steps 5 --warmup 2 --timeout 300 --label nnkit-6.9b-bf16 -- train.batch_size=4 \
    train.seq_len=2048 train.activation_checkpointing=true \
    'backend={type: cuda, precision: bf16}' > "$out/bench_full.json" 2>&1
  cut -c1-1500 "$out/bench_full.json"
  stamp "full 6.9B"
fi

if has hf; then
  timeout 420 python3 bench/hf_train.py --config configs/cuda-nn-6.9b.yaml --layers 8 --batch 8 \
    --seq 2048 --warmup 3 --steps 8 --experts "${HF_EXPERTS:-grouped_mm_bf16,eager}" \
    > "$out/bench_hf.txt" 2>&1
  echo "hf exit $?" >> "$out/bench_hf.txt"
  grep -E "hf_train: .*(tokens/s|error|experts=|FLOPs by dtype)|exit" "$out/bench_hf.txt" | cut -c1-400
  stamp "hf"
fi
