#!/usr/bin/env python3
"""GPU decoding throughput on the 6.9B seed model: nnkit vs HF transformers, same lease.

  python3 bench/gpu_decode_bench.py [--config configs/cuda-nn-6.9b.yaml] [--batch 1 8]
      [--prompt-len 16] [--new-tokens 128] [--nnkit build-gpu/bin/nnkit] [--skip-hf]
      [--nnkit-arg OVERRIDE ...] [--repeats 3]

nnkit: `nnkit generate CONFIG --random-init --prompts FILE --max-new-tokens N --seed 1 --json
decode=[{type: greedy}] backend={type: cuda, precision: bf16}`; its decode_tokens_per_s =
batch * (N - 1) steps / the time after the prefill. The first call of each batch size is a
warm-up (CUDA context, plugin load, the first step's allocations are inside the process either
way, so each number is one full process); the decode rate excludes model construction.
HF: MixtralForCausalLM with the config's dimensions (bench/hf_train.py's builder), random init,
cast to bf16, eager experts, SDPA attention, `model.generate(do_sample=False,
max_new_tokens=N, min_new_tokens=N)` with a DynamicCache, timed after one untimed generation;
decode tokens/s = batch * (N - 1) / (total time - one prefill's time).
The bandwidth floor: bytes of bf16 weights read per decode step (attention + router + LM head +
the distinct experts the batch's tokens choose, estimated for uniform routing) / 4.3 TB/s.
nnkit runs --repeats times per batch size (each a full process) and reports the median run's
numbers with every run's decode rate in `decode_runs`: one run varied by ~10% between leases.
Prints one JSON line per measurement; `distinct_ids` counts the distinct generated token ids over
the batch (runs whose text differs read different experts, which moves the rate).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TEXT = "The quick brown fox jumps over the lazy dog while the cat sleeps by the fire. "


def prompts(batch, length):
    return [(TEXT * 4)[i * 5:i * 5 + length] for i in range(batch)]


def bandwidth_floor(dims, batch, hbm_bytes_per_s=4.3e12):
    c, f, e, k = dims["hidden"], dims["ffn"], dims["experts"], dims["top_k"]
    layers, v = dims["layers"], dims["vocab"]
    attn = c * dims["heads"] * dims["head_dim"] * 2 + c * dims["kv_heads"] * dims["head_dim"] * 2
    # Expected distinct experts when batch tokens each choose k of e uniformly.
    distinct = e * (1.0 - (1.0 - k / e) ** batch)
    per_layer = attn + c * e + distinct * 3 * c * f
    total_bytes = 2 * (layers * per_layer + v * c)
    return {"bytes_per_step": total_bytes, "floor_steps_per_s": hbm_bytes_per_s / total_bytes,
            "floor_tokens_per_s": batch * hbm_bytes_per_s / total_bytes}


def run_nnkit(args, batch):
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write("\n".join(prompts(batch, args.prompt_len)) + "\n")
        path = f.name
    cmd = [args.nnkit, "generate", args.config, "--random-init", "--prompts", path,
           "--max-new-tokens", str(args.new_tokens), "--seed", "1", "--json",
           "decode=[{type: greedy}]", "backend={type: cuda, precision: bf16}"] + args.nnkit_arg
    t0 = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    wall = time.time() - t0
    os.unlink(path)
    lines = [json.loads(l) for l in p.stdout.splitlines() if l.startswith("{")]
    if p.returncode != 0 or not lines:
        return {"error": p.stderr[-2000:], "exit_code": p.returncode}
    r = lines[0]
    return {"decode_tokens_per_s": round(r["decode_tokens_per_s"], 1),
            "prefill_tokens_per_s": round(r["prefill_tokens_per_s"], 1),
            "decode_graph": r.get("decode_graph"), "precision": r.get("precision"),
            "generated": len(r["ids"]), "wall_s": round(wall, 1),
            # How varied the generated text is: the experts a step reads depend on it (a batch
            # whose sequences repeat one token reads fewer distinct experts than the floor's
            # uniform routing assumes), so runs that decode different tokens are not comparable.
            "distinct_ids": len({i for line in lines for i in line.get("ids", [])})}


def run_hf(args, dims, batch, model_cache):
    import torch
    sys.path.insert(0, HERE)
    import hf_train

    if "model" not in model_cache:
        ns = argparse.Namespace(seq=args.prompt_len + args.new_tokens + 8)
        model, _ = hf_train.build_model(dims, ns, "eager")
        model = model.to(torch.bfloat16).eval()
        model.config.use_cache = True
        model_cache["model"] = model
    model = model_cache["model"]
    g = torch.Generator(device="cuda").manual_seed(1)
    ids = torch.randint(3, int(dims["vocab"]), (batch, args.prompt_len + 1), device="cuda",
                        generator=g)
    mask = torch.ones_like(ids)
    n = args.new_tokens

    def gen(max_new):
        torch.cuda.synchronize()
        t = time.time()
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False,
                                 max_new_tokens=max_new, min_new_tokens=max_new,
                                 pad_token_id=0)
        torch.cuda.synchronize()
        return time.time() - t, out

    gen(n)  # warm-up
    prefill_s, _ = gen(1)
    total_s, out = gen(n)
    decode_s = max(total_s - prefill_s, 1e-9)
    return {"decode_tokens_per_s": round(batch * (n - 1) / decode_s, 1),
            "prefill_tokens_per_s": round(batch * (args.prompt_len + 1) / prefill_s, 1),
            "generated": int(out.shape[1] - ids.shape[1])}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default=os.path.join(ROOT, "configs", "cuda-nn-6.9b.yaml"))
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--prompt-len", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--nnkit", default=os.path.join(ROOT, "build-gpu", "bin", "nnkit"))
    ap.add_argument("--nnkit-arg", action="append", default=[])
    ap.add_argument("--timeout", type=float, default=400)
    ap.add_argument("--skip-hf", action="store_true")
    ap.add_argument("--repeats", type=int, default=3, help="nnkit runs per batch size (median)")
    args = ap.parse_args()
    sys.path.insert(0, HERE)
    import hf_train
    dims = hf_train.read_dims(argparse.Namespace(config=args.config, layers=None))
    cache = {}
    for batch in args.batch:
        floor = bandwidth_floor(dims, batch)
        runs = [run_nnkit(args, batch) for _ in range(max(1, args.repeats))]
        rates = [x.get("decode_tokens_per_s", 0.0) for x in runs]
        median = sorted(range(len(runs)), key=lambda i: rates[i])[len(runs) // 2]
        r = {"who": "nnkit", "batch": batch, **runs[median], "decode_runs": rates}
        if "decode_tokens_per_s" in r:
            r["fraction_of_floor"] = round(r["decode_tokens_per_s"] / floor["floor_tokens_per_s"], 3)
        r["floor_tokens_per_s"] = round(floor["floor_tokens_per_s"], 1)
        print(json.dumps(r), flush=True)
        if not args.skip_hf:
            try:
                h = {"who": "hf-bf16-eager", "batch": batch, **run_hf(args, dims, batch, cache)}
            except Exception as e:  # report and go on: the nnkit numbers stand alone
                h = {"who": "hf-bf16-eager", "batch": batch, "error": repr(e)[-1500:]}
            print(json.dumps(h), flush=True)


if __name__ == "__main__":
    main()
