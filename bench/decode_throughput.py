#!/usr/bin/python3
"""Decode throughput (KV cache), nnkit vs PyTorch, same model / prompts / threads, in one run.

  /usr/bin/python3 bench/decode_throughput.py [--config configs/tiny.yaml] [--batch 1 8]
      [--prompt-len 16] [--new-tokens 128] [--threads 2] [--repeats 1] [--nnkit build-perf/bin/nnkit]

nnkit: `nnkit generate CONFIG --random-init --prompts FILE --max-new-tokens N --seed S --json`
(FILE holds `batch` prompts of prompt-len bytes; the byte tokenizer adds BOS, so prefill is
prompt-len + 1 tokens). Its decode_tokens_per_s = batch * (N - 1) forward steps / time after the
prefill (sampling included). The seed is advanced until some row runs to the length limit (no
EOS), so the batch steps through all N tokens. Each nnkit run is a fresh process: its numbers include first-step warm-up.
PyTorch: bench/torch_moe.py under torch.inference_mode(), preallocated KV cache, the config's
sampler chain (top-k, temperature, multinomial); one untimed warm-up generation, then the same
count: batch * (N - 1) forward steps timed after the prefill, sampling included.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TEXT = ("The quick brown fox jumps over the lazy dog while the cat sleeps by the warm fire; "
        "a riddle: what has keys but opens no locks? ")


def prompts_for(batch, length):
    return [(TEXT * 4)[i * 7:i * 7 + length] for i in range(batch)]


def nnkit_decode(args, batch):
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write("\n".join(prompts_for(batch, args.prompt_len)) + "\n")
        path = f.name
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    try:
        for seed in range(1, 50):
            cmd = [args.nnkit, "generate", args.config, "--random-init", "--prompts", path,
                   "--max-new-tokens", str(args.new_tokens), "--seed", str(seed), "--json"]
            res = subprocess.run(cmd, env=env, capture_output=True, text=True, errors="replace")
            if res.returncode != 0:
                sys.exit(f"nnkit failed ({res.returncode}): {' '.join(cmd)}\n{res.stderr[-3000:]}")
            rows = []
            for line in res.stdout.splitlines():
                try:
                    rows.append(json.loads(line))
                except ValueError:
                    pass  # generated text with odd bytes: a line we cannot read; next seed
            # One row running to the length limit keeps the whole batch stepping for all N tokens
            # (finished rows are still computed, and counted, by nnkit).
            if len(rows) == batch and any(r["stop_reason"] == "length" for r in rows):
                return dict(decode_tokens_per_s=rows[0]["decode_tokens_per_s"],
                            prefill_tokens_per_s=rows[0]["prefill_tokens_per_s"],
                            command=" ".join(cmd).replace(path, "PROMPTS.txt"))
        sys.exit("every seed hit EOS")
    finally:
        os.unlink(path)


def torch_decode(args, batch):
    import torch

    sys.path.insert(0, HERE)
    import torch_moe

    torch.set_num_threads(args.threads)
    torch.manual_seed(1234)
    c = torch_moe.load_config(args.config)
    model = torch_moe.Transformer(c).eval()
    top_k, temperature = 40, 0.8
    import yaml

    for s in yaml.safe_load(open(args.config)).get("decode", []):
        if s["type"] == "top_k":
            top_k = s["k"]
        elif s["type"] == "temperature":
            temperature = s["value"]
    bos = 2  # tokenizer/byte: pad 0, unk 1, bos 2, eos 3, byte b is id b + 4
    ids = torch.tensor([[bos] + [b + 4 for b in p.encode()]
                        for p in prompts_for(batch, args.prompt_len)])
    gen = torch.Generator().manual_seed(1)

    def sample(logits):
        v, i = torch.topk(logits / temperature, top_k, -1)
        probs = torch.softmax(v, -1)
        return i.gather(-1, torch.multinomial(probs, 1, generator=gen))  # (B, 1)

    def run():
        with torch.inference_mode():
            cap = ids.shape[1] + args.new_tokens
            caches = model.new_caches(batch, cap)
            logits = model(ids, caches, 0)[:, -1]
            t0 = time.perf_counter()
            pos = ids.shape[1]
            out = []
            for step in range(args.new_tokens):
                nxt = sample(logits)
                out.append(nxt)
                if step + 1 == args.new_tokens:
                    break
                logits = model(nxt, caches, pos)[:, -1]
                pos += 1
            return batch * (args.new_tokens - 1) / (time.perf_counter() - t0)

    run()  # warm-up
    return dict(decode_tokens_per_s=run(), torch=torch.__version__)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", default=os.path.join(ROOT, "configs/tiny.yaml"))
    p.add_argument("--nnkit", default=os.path.join(ROOT, "build-perf/bin/nnkit"))
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--only", choices=["nnkit", "torch"])
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)

    if args.child:
        print(json.dumps(torch_decode(args, args.batch[0])))
        return

    def run_torch(batch):
        cmd = [sys.executable, os.path.abspath(__file__), "--child", "--config", args.config,
               "--batch", str(batch), "--prompt-len", str(args.prompt_len), "--new-tokens",
               str(args.new_tokens), "--threads", str(args.threads)]
        res = subprocess.run(cmd, capture_output=True, text=True,
                             env=dict(os.environ, OMP_NUM_THREADS=str(args.threads)))
        if res.returncode != 0:
            sys.exit(f"torch failed:\n{res.stderr[-3000:]}")
        return json.loads(res.stdout.strip().splitlines()[-1])

    load = os.getloadavg()[0]
    print(f"config {args.config}, prompt {args.prompt_len} bytes (+BOS), {args.new_tokens} new "
          f"tokens, threads {args.threads}, load average {load:.2f}")
    results = []
    for batch in args.batch:
        nn_rates, pt_rates = [], []
        for r in range(args.repeats):
            if args.only != "torch":
                n = nnkit_decode(args, batch)
                nn_rates.append(n["decode_tokens_per_s"])
                print(f"  batch {batch} [{r + 1}] nnkit   {n['decode_tokens_per_s']:9.0f} tok/s")
                if r == 0:
                    print(f"      {n['command']}")
            if args.only != "nnkit":
                t = run_torch(batch)
                pt_rates.append(t["decode_tokens_per_s"])
                print(f"  batch {batch} [{r + 1}] pytorch {t['decode_tokens_per_s']:9.0f} tok/s")
        res = {"config": args.config, "batch": batch, "threads": args.threads,
               "load_average": load}
        if nn_rates:
            res["nnkit_tokens_per_s"] = statistics.median(nn_rates)
        if pt_rates:
            res["torch_tokens_per_s"] = statistics.median(pt_rates)
        if nn_rates and pt_rates:
            res["ratio"] = res["nnkit_tokens_per_s"] / res["torch_tokens_per_s"]
            print(f"batch {batch} median: nnkit {res['nnkit_tokens_per_s']:.0f} tok/s, pytorch "
                  f"{res['torch_tokens_per_s']:.0f} tok/s, ratio {res['ratio']:.2f}x")
        results.append(res)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
