#!/usr/bin/env bash
# One GPU lease of the decoding work (issue: GPU decoding at memory speed): build Release with the
# CUDA backend, then
#   tests   test_backend_cuda's decode/sort cases + test_cli's CudaGenerate.* (GPU == CPU greedy
#           tokens, graph replay == uncaptured)
#   bench   the 6.9B seed model, 16-token prompts, 128 new tokens, greedy, bf16: nnkit vs HF
#           transformers (bench/gpu_decode_bench.py), batch 1 and 8
#   tiny    configs/tiny.yaml decoding at batch 1 on the GPU vs the CPU backend
#   profile NNKIT_CUDA_PROFILE=1 decode of the 6.9B model (uncaptured: per-op time, launches)
#   ncu     Nsight Compute's duration of every kernel of steady-state decode steps of the 6.9B
#           model at batch 1, run uncaptured in the recorded step's layout
#           (NNKIT_GRAPHS_NO_REPLAY=1): the kernels a replayed step runs, one by one
#   ab      the bench's nnkit side again under each of AB_ENVS (space-separated VAR=VALUE
#           switches, e.g. "NNKIT_FUSED_EXPERTS=0 NNKIT_PDL=0"), to compare in one lease
#   memory  the 6.9B model generating at bf16 with inference-only weights and with
#           --keep-f32-masters: peak device memory (nvidia-smi, 200 ms samples), weight bytes,
#           decode tok/s, and whether both generate the same ids
#   grouped bench/grouped_bw.cu: the grouped expert products' variants (k split, load stages)
#           against a plain streaming read of the same bytes, at batch 1 and 8 shapes
#   gaps    bench/graph_gap.cu: per-node cost of a recorded chain of kernels, with and without
#           programmatic dependent launch
#   timeline the 6.9B model at batch 1 and 8 under bench/kernel_timeline.cpp (CUPTI kernel
#           records of every replayed graph node): per-kernel duration and critical-path increment
#           of steady-state steps (bench/kernel_timeline.py), and decode tok/s traced vs untraced
#   ncudetail Nsight Compute's detail pages (warp stalls, scheduler, occupancy, source hot spots)
#           of NCU_DETAIL_COUNT (1) decode-step launches of each kernel in NCU_DETAIL_KERNELS (name
#           regexes) past the first NCU_DETAIL_SKIP (100), batch 1
#   long    long context on the 6.9B model: a 32K-token prompt (alpha 1, max_seq_len 32768) and a
#           128K-token prompt with model.attention.rope.ntk_alpha=8, 128 new tokens each;
#           prefill/decode tok/s and peak device memory (nvidia-smi, 200 ms samples)
#   bash bench/gpu_decode_check.sh [OUT_DIR] [STAGES]
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-build-gpu/out}
stages=${2:-tests,bench,tiny,profile}
mkdir -p "$out"
has() { [[ ",$stages," == *",$1,"* ]]; }
start=$(date +%s)
stamp() { echo "[$(( $(date +%s) - start )) s] $*"; }
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 \
  -DNNKIT_TEST_AREAS="${TEST_AREAS-backend_cuda;cli}" > "$out/build.txt" 2>&1 &&
  cmake --build build-gpu -j "$(nproc)" >> "$out/build.txt" 2>&1 || { tail -60 "$out/build.txt"; exit 1; }
stamp "built"
nnkit=build-gpu/bin/nnkit
prompt16="The quick brown "
# The 6.9B config names the CPU backend (it runs anywhere); every GPU stage overrides it.
gpu_backend='backend={type: cuda, precision: bf16}'

if has tests; then
  timeout 300 build-gpu/bin/test_backend_cuda --gtest_filter="${CUDA_TEST_FILTER:-*}" \
    > "$out/cuda_tests.txt" 2>&1
  echo "test_backend_cuda exit $?" >> "$out/cuda_tests.txt"
  grep -E "^\[  (FAILED|PASSED) |Failure|exit" "$out/cuda_tests.txt" | tail -30
  timeout 400 build-gpu/bin/test_cli --gtest_filter="${CLI_TEST_FILTER:-*CudaGenerate*}" \
    > "$out/cuda_cli_tests.txt" 2>&1
  echo "test_cli exit $?" >> "$out/cuda_cli_tests.txt"
  grep -E "^\[  (FAILED|PASSED) |OK \]|Failure|exit" "$out/cuda_cli_tests.txt" | tail -20
  stamp "tests"
fi

if has bench; then
  timeout 500 python3 bench/gpu_decode_bench.py --nnkit "$nnkit" --batch 1 8 \
    ${DECODE_BENCH_ARGS:-} > "$out/bench_decode.txt" 2>&1
  echo "decode bench exit $?" >> "$out/bench_decode.txt"
  cut -c1-400 "$out/bench_decode.txt"
  stamp "bench"
fi

if has ab; then
  for switch in ${AB_ENVS:-NNKIT_FUSED_EXPERTS=0}; do
    echo "== $switch" | tee -a "$out/bench_ab.txt"
    env "$switch" timeout 300 python3 bench/gpu_decode_bench.py --nnkit "$nnkit" --batch 1 8 \
      --skip-hf --repeats "${AB_REPEATS:-3}" >> "$out/bench_ab.txt" 2>&1
    echo "exit $?" >> "$out/bench_ab.txt"
  done
  cut -c1-300 "$out/bench_ab.txt"
  stamp "ab"
fi

if has memory; then
  for mode in inference --keep-f32-masters; do
    flag=""; [ "$mode" != inference ] && flag=$mode
    ( peak=0; while true; do m=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1); [ "$m" -gt "$peak" ] 2>/dev/null && peak=$m && echo "$peak" > /tmp/mem_peak; sleep 0.2; done ) &
    sampler=$!
    timeout 200 "$nnkit" generate configs/cuda-nn-6.9b.yaml --random-init --prompt "$prompt16" \
      --max-new-tokens 128 --seed 1 --json 'decode=[{type: greedy}]' "$gpu_backend" $flag \
      > "$out/memory_$mode.json" 2> "$out/memory_$mode.err"
    echo "exit $?" >> "$out/memory_$mode.err"
    kill $sampler 2>/dev/null; wait $sampler 2>/dev/null
    python3 -c "import json,sys; r=json.loads(open(sys.argv[1]).readline()); print(sys.argv[2], 'peak MiB', open('/tmp/mem_peak').read().strip(), 'weight_bytes', r.get('weight_bytes'), 'in use', r.get('device_memory_in_use_bytes'), 'decode tok/s', round(r['decode_tokens_per_s'],1))" "$out/memory_$mode.json" "$mode" 2>&1 | tee -a "$out/memory.txt" || tail -5 "$out/memory_$mode.err"
  done
  python3 -c "import json,sys; a,b=[json.loads(open(f).readline())['ids'] for f in sys.argv[1:]]; print('same ids', a==b)" "$out/memory_inference.json" "$out/memory_--keep-f32-masters.json" 2>&1 | tee -a "$out/memory.txt"
  stamp "memory"
fi

if has tiny; then
  # TINY_ENVS: extra runs of the GPU side under each VAR=VALUE switch.
  for run in 'backend={type: cuda, precision: bf16}' 'backend={type: cpu}' \
      ${TINY_ENVS:-NNKIT_DECODE_LOOKAHEAD=0}; do
    backend=$run; switch=NNKIT_NONE=1
    case "$run" in backend=*) ;; *) switch=$run; backend='backend={type: cuda, precision: bf16}' ;; esac
    for repeat in 1 2 3; do
      env "$switch" "$nnkit" generate configs/tiny.yaml --random-init --prompt "$prompt16" --max-new-tokens 200 \
        --seed 7 --json 'decode=[{type: greedy}]' "$backend" 2>/dev/null |
        python3 -c "import json,sys; r=json.loads(sys.stdin.readline()); print(sys.argv[1], sys.argv[2], 'decode', round(r['decode_tokens_per_s'],1), 'tok/s graph', r.get('decode_graph'))" "$backend" "$switch"
    done
  done | tee "$out/tiny_decode.txt"
  stamp "tiny"
fi

if has long; then
  # LONG_SPECS: comma-separated CHARS:ALPHA pairs.
  for spec in $(echo "${LONG_SPECS:-32000:1,128000:8}" | tr ',' ' '); do
    set -- ${spec/:/ }
    python3 -c "import sys; t='The quick brown fox jumps over the lazy dog. '; print((t*(int(sys.argv[1])//len(t)+1))[:int(sys.argv[1])])" "$1" > /tmp/long_prompt.txt
    ( peak=0; while true; do m=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1); [ "$m" -gt "$peak" ] 2>/dev/null && peak=$m && echo "$peak" > /tmp/long_peak; sleep 0.2; done ) &
    sampler=$!
    timeout "${LONG_TIMEOUT:-300}" "$nnkit" generate configs/cuda-nn-6.9b.yaml --random-init --prompts /tmp/long_prompt.txt \
      --max-new-tokens 128 --seed 1 --json 'decode=[{type: greedy}]' "model.attention.rope.ntk_alpha=$2" \
      "$gpu_backend" \
      > /tmp/long_out.json 2> "$out/long_$1.err"
    echo "exit $?" >> "$out/long_$1.err"
    kill $sampler 2>/dev/null; wait $sampler 2>/dev/null
    python3 -c "import json,sys; r=json.loads(open('/tmp/long_out.json').readline()); print('prompt', len(r['prompt_ids']), 'alpha', sys.argv[2], 'prefill tok/s', round(r['prefill_tokens_per_s'],1), 'decode tok/s', round(r['decode_tokens_per_s'],1), 'graph', r['decode_graph'], 'generated', len(r['ids']), 'peak MiB', open('/tmp/long_peak').read().strip())" "$1" "$2" 2>&1 | tee -a "$out/long.txt" || tail -5 "$out/long_$1.err"
  done
  stamp "long"
fi

if has profile; then
  NNKIT_CUDA_PROFILE=1 "$nnkit" generate configs/cuda-nn-6.9b.yaml --random-init --log-level info \
    --prompt "$prompt16" --max-new-tokens 64 --seed 1 'decode=[{type: greedy}]' "$gpu_backend" \
    > "$out/profile_decode.txt" 2>&1
  grep -A40 "op profile" "$out/profile_decode.txt" | head -45
  stamp "profile"
fi

if has ncu; then
  # NCU_BATCHES: the batch sizes profiled (each its own ncu run); NCU_METRICS: extra metrics
  # (e.g. dram__bytes_read.sum,launch__registers_per_thread,sm__warps_active.avg.pct_of_peak_sustained_active).
  for batch in ${NCU_BATCHES:-1}; do
    python3 -c "import sys; t='The quick brown fox jumps over the lazy dog while the cat sleeps. '*4; [print(t[i*5:i*5+16]) for i in range(int(sys.argv[1]))]" "$batch" > /tmp/ncu_prompts.txt
    NNKIT_GRAPHS_NO_REPLAY=1 timeout 400 ncu --clock-control none --cache-control none \
      --metrics "gpu__time_duration.sum${NCU_METRICS:+,$NCU_METRICS}" --csv \
      --launch-skip "${NCU_SKIP:-4000}" --launch-count "${NCU_COUNT:-1000}" \
      "$nnkit" generate configs/cuda-nn-6.9b.yaml --random-init --prompts /tmp/ncu_prompts.txt \
      --max-new-tokens 12 --seed 1 'decode=[{type: greedy}]' "$gpu_backend" \
      > "$out/ncu_decode_b$batch.csv" 2> "$out/ncu_decode_b$batch.err"
    echo "ncu exit $?" >> "$out/ncu_decode_b$batch.err"
    tail -3 "$out/ncu_decode_b$batch.err"
    echo "== batch $batch"
    python3 bench/ncu_kernel_table.py "$out/ncu_decode_b$batch.csv" \
      --step-kernel attention_decode_kernel --per-step 30 | head -40
  done
  stamp "ncu"
fi

if has timeline; then
  cuda_root=$(dirname "$(dirname "$(command -v nvcc)")")
  cupti_lib=$(dirname "$(find "$cuda_root/" /usr/local/cuda*/ -name 'libcupti.so*' 2>/dev/null | head -1)")
  g++ -O2 -std=c++17 -shared -fPIC bench/kernel_timeline.cpp -I"$cuda_root/include" \
    -L"$cupti_lib" -Wl,-rpath,"$cupti_lib" -lcupti -o build-gpu/libkernel_timeline.so ||
    echo "kernel_timeline did not build"
  for batch in ${TIMELINE_BATCHES:-1 8}; do
    python3 -c "import sys; t='The quick brown fox jumps over the lazy dog while the cat sleeps. '*4; [print(t[i*5:i*5+16]) for i in range(int(sys.argv[1]))]" "$batch" > /tmp/timeline_prompts.txt
    for traced in 0 1; do
      preload=""; [ "$traced" = 1 ] && preload=build-gpu/libkernel_timeline.so
      NNKIT_TIMELINE_OUT="$out/timeline_b$batch.csv" LD_PRELOAD="$preload" timeout 200 \
        "$nnkit" generate configs/cuda-nn-6.9b.yaml --random-init --prompts /tmp/timeline_prompts.txt \
        --max-new-tokens 128 --seed 1 --json 'decode=[{type: greedy}]' "$gpu_backend" \
        2> "$out/timeline_b${batch}_$traced.err" |
        python3 -c "import json,sys; r=json.loads(sys.stdin.readline()); print('batch', sys.argv[1], 'traced', sys.argv[2], 'decode tok/s', round(r['decode_tokens_per_s'],1))" "$batch" "$traced"
    done
    python3 bench/kernel_timeline.py "$out/timeline_b$batch.csv" --top 30 | tee "$out/timeline_b$batch.txt"
  done
  stamp "timeline"
fi

if has ncudetail; then
  printf '%s\n' "The quick brown " > /tmp/ncu_detail_prompt.txt
  for kernel in ${NCU_DETAIL_KERNELS:-moe_route_decode_kernel add_rmsnorm_warp_kernel}; do
    # Launch 100 of the kernel: past the prefill and the first steps.
    NNKIT_GRAPHS_NO_REPLAY=1 timeout 300 ncu --clock-control none --kernel-name "regex:$kernel" \
      --launch-skip "${NCU_DETAIL_SKIP:-100}" --launch-count "${NCU_DETAIL_COUNT:-1}" --section SpeedOfLight \
      --section LaunchStats --section Occupancy --section SchedulerStats --section WarpStateStats \
      --section SourceCounters --page details \
      "$nnkit" generate configs/cuda-nn-6.9b.yaml --random-init --prompts /tmp/ncu_detail_prompt.txt \
      --max-new-tokens 12 --seed 1 'decode=[{type: greedy}]' "$gpu_backend" \
      > "$out/ncu_detail_$kernel.txt" 2>&1
    echo "== $kernel (exit $?)"
    grep -E "grouped_mma|Duration|Registers Per|Grid Size|Waves Per SM|Block Limit|Theoretical Occ|Stall|Warp Cycles Per Issued|Issued Warp|No Eligible|Dynamic Shared|Static Shared|Achieved Occupancy|stall|DRAM Throughput|Memory Throughput" "$out/ncu_detail_$kernel.txt" | head -${NCU_DETAIL_LINES:-40}
  done
  stamp "ncudetail"
fi

if has grouped; then
  nvcc -O3 -arch=sm_90 -std=c++20 --expt-relaxed-constexpr -I core/include -I plugins/backend/cuda \
    bench/grouped_bw.cu -o build-gpu/grouped_bw && build-gpu/grouped_bw | tee "$out/grouped_bw.txt"
  stamp "grouped"
fi

if has gaps; then
  # The cost of a CUDA Graph's kernel nodes back to back, with and without programmatic
  # dependent launch (bench/graph_gap.cu).
  nvcc -O2 -arch=sm_90 -std=c++17 bench/graph_gap.cu -o build-gpu/graph_gap &&
    build-gpu/graph_gap | tee "$out/graph_gap.txt"
  stamp "gaps"
fi
