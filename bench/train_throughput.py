#!/usr/bin/python3
"""Training throughput, nnkit vs PyTorch, same model / batch / sequence / threads, in one run.

  /usr/bin/python3 bench/train_throughput.py [--config configs/tiny.yaml] [--steps 60]
      [--warmup 10] [--threads 2] [--repeats 1] [--nnkit build-perf/bin/nnkit] [--only nnkit|torch]
      [--device cpu|cuda]

nnkit: `nnkit train CONFIG --data DATA --out TMP train.steps=N train.eval_every=0
train.checkpoint_every=0 train.log_every=1000`; tokens/s is taken from metrics.jsonl: the trainer
closes a timing window every >= 0.5 s and writes its rate on each step line, so the script sums
tokens and seconds over the windows that start after the warm-up steps.
PyTorch: bench/torch_moe.py, one step = forward, CE + aux loss, backward, grad-norm clip, AdamW,
loss.item(); timed with perf_counter over the steps after the warm-up steps.
Both get OMP_NUM_THREADS=threads (and torch.set_num_threads(threads)).
--device cuda runs PyTorch with the model and batches on cuda:0; nnkit follows the config's
`backend:` (use a config with `backend: {type: cuda}`, e.g. bench/gpu-medium.yaml). Both are
fp32: PyTorch keeps TF32 off for fp32 matmuls by default, as backend/cuda does unless
`tf32: true`. --tf32 turns TF32 tensor-core products on for both (PyTorch's
allow_tf32 flags; nnkit `backend={type: cuda, tf32: true}`).
Must run under Debian's /usr/bin/python3 (python3-torch).
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def nnkit_train(args, extra):
    out = tempfile.mkdtemp(prefix="nnkit-bench-train-")
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    cmd = [args.nnkit, "train", args.config, "--data", args.data, "--out", out + "/run",
           f"train.steps={args.steps}", "train.eval_every=0", "train.checkpoint_every=0",
           "train.log_every=1000", "--json"] + extra

    try:
        t0 = time.perf_counter()
        res = subprocess.run(cmd, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if res.returncode != 0:
            sys.exit(f"nnkit failed ({res.returncode}): {' '.join(cmd)}\n{res.stderr[-3000:]}")
        lines = [json.loads(l) for l in open(out + "/run/metrics.jsonl") if l.strip()]
        lines = [l for l in lines if "tokens_per_s" in l]
        per_step = lines[0]["tokens"]  # tokens per optimiser step
        # Window boundaries: the line where the reported rate changes closes a window.
        # The last window is left out too: the final step runs the end-of-training validation.
        tokens = seconds = 0.0
        prev_rate, first_step_of_window = None, 1
        for l in lines[:-1]:
            rate = l["tokens_per_s"]
            if rate != prev_rate:  # this step closed a window [first_step_of_window, step]
                n = l["step"] - first_step_of_window + 1
                if first_step_of_window > args.warmup:
                    tokens += n * per_step
                    seconds += n * per_step / rate
                first_step_of_window = l["step"] + 1
                prev_rate = rate
        summary = json.loads(res.stdout.strip().splitlines()[-1])
        return dict(tokens_per_s=tokens / seconds if seconds > 0 else float("nan"),
                    whole_run_tokens_per_s=summary.get("tokens_per_s"), wall_s=wall,
                    final_loss=lines[-1]["loss"], command=" ".join(cmd))
    finally:
        shutil.rmtree(out, ignore_errors=True)


def read_tokens(path):
    import numpy as np

    with open(path, "rb") as f:
        head = f.read(32)
        width = int.from_bytes(head[12:16], "little")
        count = int.from_bytes(head[16:24], "little")
        data = np.frombuffer(f.read(count * width), dtype=np.uint16 if width == 2 else np.uint32)
    return data.astype(np.int64)


def torch_train(args):
    import numpy as np
    import torch

    sys.path.insert(0, HERE)
    import torch_moe

    torch.set_num_threads(args.threads)
    torch.manual_seed(1234)
    c = torch_moe.load_config(args.config)
    B, T = c["batch"], c["seq"]
    device = torch.device(args.device)
    if args.tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    model = torch_moe.Transformer(c).to(device)
    model.train()
    opt = torch_moe.make_optimizer(model, c)
    tokens = read_tokens(args.data)
    rng = np.random.default_rng(1234)
    params = [p for p in model.parameters()]
    times = []
    loss_value = None
    for step in range(args.steps):
        t0 = time.perf_counter()
        starts = rng.integers(0, len(tokens) - T - 1, size=B)
        window = np.stack([tokens[s:s + T + 1] for s in starts])
        ids = torch.from_numpy(window[:, :-1].copy()).to(device)
        tgt = torch.from_numpy(window[:, 1:].copy()).to(device)
        for g in opt.param_groups:
            g["lr"] = c["lr"] * torch_moe.lr_factor(step, args.steps, c["warmup"], c["min_lr_ratio"])
        opt.zero_grad(set_to_none=True)
        ce, loss = model.loss(ids, tgt)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, c["grad_clip"])
        opt.step()
        loss_value = ce.item()
        times.append(time.perf_counter() - t0)
    timed = times[args.warmup:]
    return dict(tokens_per_s=B * T * len(timed) / sum(timed), final_loss=loss_value,
                torch=torch.__version__, threads=torch.get_num_threads())


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", default=os.path.join(ROOT, "configs/tiny.yaml"))
    p.add_argument("--data", default=os.path.join(ROOT, "data/demo.tokens"))
    p.add_argument("--nnkit", default=os.path.join(ROOT, "build-perf/bin/nnkit"))
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--only", choices=["nnkit", "torch"])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--tf32", action="store_true", help="TF32 tensor-core products on both sides")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("extra", nargs="*", help="key=value overrides passed to nnkit")
    args = p.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)

    if args.child:  # the PyTorch side in its own process (OMP_NUM_THREADS set before import)
        print(json.dumps(torch_train(args)))
        return

    def run_torch():
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
        cmd = [sys.executable, os.path.abspath(__file__), "--child", "--config", args.config,
               "--data", args.data, "--steps", str(args.steps), "--warmup", str(args.warmup),
               "--threads", str(args.threads), "--device", args.device] + (["--tf32"] if args.tf32 else [])
        res = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if res.returncode != 0:
            sys.exit(f"torch failed:\n{res.stderr[-3000:]}")
        return json.loads(res.stdout.strip().splitlines()[-1])

    load = os.getloadavg()[0]
    print(f"config {args.config}, {args.steps} steps ({args.warmup} warm-up excluded), "
          f"threads {args.threads}, load average {load:.2f}")
    nn_rates, pt_rates = [], []
    for r in range(args.repeats):
        if args.only != "torch":
            n = nnkit_train(args, args.extra + (["backend={type: cuda, tf32: true}"] if args.tf32 else []))
            nn_rates.append(n["tokens_per_s"])
            print(f"  [{r + 1}] nnkit   {n['tokens_per_s']:9.0f} tok/s  (whole run incl. warm-up "
                  f"{n['whole_run_tokens_per_s']:.0f}, final loss {n['final_loss']:.3f})")
            if r == 0:
                print(f"      {n['command']}")
        if args.only != "nnkit":
            t = run_torch()
            pt_rates.append(t["tokens_per_s"])
            print(f"  [{r + 1}] pytorch {t['tokens_per_s']:9.0f} tok/s  (torch {t['torch']}, "
                  f"{t['threads']} threads, final loss {t['final_loss']:.3f})")
    result = {"config": args.config, "threads": args.threads, "steps": args.steps,
              "warmup": args.warmup, "load_average": load}
    if nn_rates:
        result["nnkit_tokens_per_s"] = statistics.median(nn_rates)
    if pt_rates:
        result["torch_tokens_per_s"] = statistics.median(pt_rates)
    if nn_rates and pt_rates:
        result["ratio"] = result["nnkit_tokens_per_s"] / result["torch_tokens_per_s"]
        print(f"median: nnkit {result['nnkit_tokens_per_s']:.0f} tok/s, pytorch "
              f"{result['torch_tokens_per_s']:.0f} tok/s, ratio {result['ratio']:.2f}x")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
