#!/usr/bin/env python3
"""nnkit GPU training throughput on a large config, without the end-of-run checkpoint.

  python3 bench/gpu_train_bench.py --nnkit build-gpu/bin/nnkit --config configs/cuda-nn-6.9b.yaml
      --steps 12 --warmup 4 [--label NAME] -- [overrides...]

Runs `nnkit train CONFIG --data DATA --out TMP overrides... train.steps=STEPS
train.eval_every=0 train.eval_batches=1 train.checkpoint_every=0 train.final_checkpoint=false
train.log_every=LOG_EVERY (default 10, the trainer's default)` to the end (a multi-GB final checkpoint is not what is being measured; with
NNKIT_CUDA_PROFILE=1 in --env the backend's op profile is printed at exit). Throughput = tokens of steps warmup+1..steps / the elapsed_s between
them (the trainer stamps every metrics line). Peak device memory is sampled with nvidia-smi
every 200 ms while the run lasts (it includes nnkit's cache of freed blocks). Prints one JSON line.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time


def sample_memory(stop, peak):
    while not stop.is_set():
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, timeout=5).stdout.split()
            if out:
                peak[0] = max(peak[0], int(out[0]))
        except (OSError, subprocess.SubprocessError, ValueError):
            pass
        stop.wait(0.2)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--nnkit", default="build-gpu/bin/nnkit")
    ap.add_argument("--config", default="configs/cuda-nn-6.9b.yaml")
    ap.add_argument("--data", default="data/demo.tokens")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--timeout", type=float, default=400)
    ap.add_argument("--label", default="nnkit")
    # Every step writes its metrics line (loss, elapsed_s) either way; on logged steps the MoE
    # statistics are also read from the device (one small copy per layer).
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--env", action="append", default=[], help="NAME=value for the nnkit process")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()

    out = tempfile.mkdtemp(prefix="nnkit-gpu-bench-")
    cmd = [args.nnkit, "train", args.config, "--data", args.data, "--out", out + "/run",
           f"train.steps={args.steps}", "train.eval_every=0", "train.eval_batches=1",
           "train.checkpoint_every=0", "train.final_checkpoint=false",
           f"train.log_every={args.log_every}"] + args.overrides
    env = dict(os.environ)
    for item in args.env:
        name, _, value = item.partition("=")
        env[name] = value
    log = open(out + "/log.txt", "w")
    stop, peak = threading.Event(), [0]
    sampler = threading.Thread(target=sample_memory, args=(stop, peak), daemon=True)
    sampler.start()
    start = time.time()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    lines = []
    metrics = out + "/run/metrics.jsonl"
    try:
        proc.wait(timeout=args.timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    finally:
        stop.set()
        sampler.join()
        log.close()
    if os.path.exists(metrics):
        with open(metrics) as f:
            lines = [json.loads(l) for l in f if l.strip().endswith("}")]
    wall = time.time() - start
    text = open(out + "/log.txt").read()
    steps = [l for l in lines if "loss" in l]
    result = {"label": args.label, "overrides": args.overrides, "wall_s": round(wall, 1),
              "peak_device_mib": peak[0], "steps_seen": len(steps), "exit_code": proc.returncode}
    if len(steps) >= args.steps:
        first, last = steps[args.warmup - 1], steps[args.steps - 1]
        tokens = last["tokens"] - first["tokens"]
        seconds = last["elapsed_s"] - first["elapsed_s"]
        result.update(tokens_per_s=round(tokens / seconds, 1),
                      ms_per_step=round(1000 * seconds / (args.steps - args.warmup), 2),
                      tokens_per_step=steps[0]["tokens"], loss_first=steps[0]["loss"],
                      loss_last=last["loss"])
    if len(steps) < args.steps or proc.returncode != 0:
        result["error"] = "run failed or ended early"
        result["log_tail"] = text[-3000:]
    # Whether the trainer recorded the step in a CUDA Graph (or said why it could not).
    result["cuda_graph"] = "recorded in a CUDA Graph" in text
    for line in text.splitlines():
        if "could not record" in line or "runs uncaptured" in line:
            result["cuda_graph_note"] = line[-300:]
            break
    if "op profile" in text:
        result["profile"] = text[text.index("op profile"):][:6000]
    print(json.dumps(result))
    shutil.rmtree(out, ignore_errors=True)
    return 0 if "error" not in result else 1


if __name__ == "__main__":
    sys.exit(main())
