#!/usr/bin/env bash
# One pass of GPU work for a machine with an NVIDIA GPU (the project's H200 lease runs exactly
# this): build Release with the CUDA backend, run the CUDA parity tests, train the demo model on
# the GPU for a few steps, and time training against PyTorch on the GPU.
#   bash bench/gpu_check.sh [OUT_DIR]     (needs data/demo.tokens: scripts/setup.sh makes it)
# Logs go to OUT_DIR (default build-gpu/out): cuda_tests.txt, tiny_cuda.txt, generate_cuda.txt,
# cuda_cli_tests.txt, profile.txt / profile_decode.txt (per-op GPU time, NNKIT_CUDA_PROFILE=1),
# bench_gpu.txt (fp32), bench_gpu_tf32.txt.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-build-gpu/out}
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$out/gpu.txt" 2>&1

cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 \
  -DNNKIT_TEST_AREAS="backend_cuda;cli" > "$out/build.txt" 2>&1 &&
  cmake --build build-gpu -j "$(nproc)" >> "$out/build.txt" 2>&1 || { tail -50 "$out/build.txt"; exit 1; }

build-gpu/bin/test_backend_cuda > "$out/cuda_tests.txt" 2>&1
echo "test_backend_cuda exit $?" >> "$out/cuda_tests.txt"
tail -5 "$out/cuda_tests.txt"
# Training on the GPU repeats bit for bit and resumes exactly (tests/cli).
build-gpu/bin/test_cli --gtest_filter='*Cuda*' > "$out/cuda_cli_tests.txt" 2>&1
echo "test_cli (CUDA) exit $?" >> "$out/cuda_cli_tests.txt"
tail -3 "$out/cuda_cli_tests.txt"

# The demo model on the GPU: loss must fall like on the CPU.
build-gpu/bin/nnkit train configs/tiny.yaml 'backend={type: cuda}' \
  --data data/demo.tokens --out build-gpu/runs/tiny train.steps=100 train.eval_every=50 \
  train.checkpoint_every=0 > "$out/tiny_cuda.txt" 2>&1
echo "tiny train exit $?" >> "$out/tiny_cuda.txt"
tail -4 "$out/tiny_cuda.txt"

python3 bench/train_throughput.py --config bench/gpu-medium.yaml --device cuda --steps 30 \
  --warmup 10 --repeats 2 --nnkit build-gpu/bin/nnkit > "$out/bench_gpu.txt" 2>&1
tail -8 "$out/bench_gpu.txt"

# Sampling from the GPU-trained checkpoint (KV-cache decoding on the GPU).
build-gpu/bin/nnkit generate --checkpoint build-gpu/runs/tiny --prompt "The meaning of life is" \
  --max-new-tokens 200 --seed 7 --json > "$out/generate_cuda.txt" 2>&1
echo "generate exit $?" >> "$out/generate_cuda.txt"
NNKIT_CUDA_PROFILE=1 build-gpu/bin/nnkit generate --checkpoint build-gpu/runs/tiny \
  --prompt "The meaning of life is" --max-new-tokens 200 --seed 7 > "$out/profile_decode.txt" 2>&1
grep -A30 "op profile" "$out/profile_decode.txt" | tail -8

# Where the GPU time of a training step goes.
NNKIT_CUDA_PROFILE=1 build-gpu/bin/nnkit train bench/gpu-medium.yaml --data data/demo.tokens \
  --out build-gpu/runs/profile train.steps=20 train.log_every=10 > "$out/profile.txt" 2>&1
grep -A40 "op profile" "$out/profile.txt" | head -40

python3 bench/train_throughput.py --config bench/gpu-medium.yaml --device cuda --tf32 --steps 30 \
  --warmup 10 --repeats 2 --nnkit build-gpu/bin/nnkit > "$out/bench_gpu_tf32.txt" 2>&1
tail -4 "$out/bench_gpu_tf32.txt"
