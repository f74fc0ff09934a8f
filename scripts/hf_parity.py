#!/usr/bin/env python3
"""Parity of nnkit with Hugging Face transformers, both directions, fp32 on the CPU.

For a small random MixtralForCausalLM (multi-query: num_key_value_heads=1) and LlamaForCausalLM:
  (a) transformers builds the model and save_pretrained()s it; `nnkit convert import-hf` reads it
      and `nnkit logits` must give the same logits as transformers on the same ids;
  (c) nnkit trains a model of the same shape for a few steps (MoE with NTK alpha 2, which export
      folds into rope_theta), `nnkit convert export-hf` writes it (sharded, and again in bf16) and
      transformers' from_pretrained() must give the logits `nnkit logits` gives.
Pass: max |nnkit - hf| <= 1e-4 * max |hf logit| for every comparison.
Needs torch and transformers; usage: python3 scripts/hf_parity.py [--nnkit build/bin/nnkit]
[--json results.json]. Exit status 0 when every comparison passes.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import torch
import transformers
from safetensors import safe_open
from transformers import (AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, MixtralConfig,
                          MixtralForCausalLM)

IDS = [2, 17, 255, 4, 99, 123, 7, 299, 3, 42, 42, 5, 310, 1, 64, 200, 150, 151, 9, 77]
TOLERANCE = 1e-4  # relative to the largest |logit|


def run(nnkit, *args):
    proc = subprocess.run([nnkit, *args, "--log-level", "warn"], capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"$ nnkit {' '.join(args)}\n{proc.stdout}{proc.stderr}", flush=True)
        raise SystemExit(f"nnkit {args[0]} failed with status {proc.returncode}")
    return proc.stdout


def nnkit_logits(nnkit, run_dir):
    out = run(nnkit, "logits", "--checkpoint", run_dir, "--ids", ",".join(map(str, IDS)), "--json")
    return torch.tensor(json.loads(out)["logits"], dtype=torch.float64)


def hf_logits(model):
    with torch.no_grad():
        return model(torch.tensor([IDS])).logits[0].to(torch.float64)


def load_hf(path):
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    except TypeError:  # transformers 4 spells it torch_dtype
        model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32)
    return model.eval()


def safetensors_keys(folder):
    keys = []
    for name in sorted(os.listdir(folder)):
        if name.endswith(".safetensors"):
            with safe_open(os.path.join(folder, name), "pt") as f:
                keys += list(f.keys())
    return keys


RESULTS = []


def compare(label, ours, theirs):
    diff = (ours - theirs).abs().max().item()
    scale = theirs.abs().max().item()
    ok = ours.shape == theirs.shape and diff <= TOLERANCE * max(scale, 1e-12)
    RESULTS.append({"check": label, "max_abs_diff": diff, "logit_scale": scale,
                    "relative": diff / scale if scale else float("inf"), "pass": ok})
    print(f"{'PASS' if ok else 'FAIL'}  {label}: max |diff| {diff:.3e}, max |logit| {scale:.3e}, "
          f"relative {diff / scale:.3e}", flush=True)


def hf_to_nnkit(nnkit, tmp, name, model):
    # Norm weights of 1 would hide a swapped norm: randomise them.
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "norm" in pname:
                p.uniform_(0.5, 1.5)
    folder = os.path.join(tmp, f"hf-{name}")
    model.save_pretrained(folder)
    keys = safetensors_keys(folder)
    print(f"{name}: save_pretrained wrote {len(keys)} tensors, e.g. {keys[:3]} ... "
          f"{[k for k in keys if 'expert' in k][:2]}", flush=True)
    run_dir = os.path.join(tmp, f"run-{name}")
    print(run(nnkit, "convert", "import-hf", folder, "-o", run_dir).strip(), flush=True)
    compare(f"(a) {name}: transformers save_pretrained -> nnkit import-hf",
            nnkit_logits(nnkit, run_dir), hf_logits(model))


NNKIT_CONFIG = """seed: 5
model:
  vocab_size: 320
  hidden_dim: 64
  n_layers: 2
  max_seq_len: 128
  norm: {{type: rmsnorm, eps: 1.0e-5}}
  attention: {{type: mqa, n_heads: 4, n_kv_heads: {kv}, head_dim: 16, rope: {{base: 10000, ntk_alpha: {alpha}}}}}
{block}
backend: {{type: cpu}}
tokenizer: {{type: byte}}
train: {{steps: 30, batch_size: 8, seq_len: 64, checkpoint_every: 0, eval_every: 0, log_every: 10,
         optimizer: {{type: adamw, lr: 3.0e-3}}}}
"""
MOE_BLOCK = """  moe:
    router: {type: topk, top_k: 2, renormalize: true, aux_loss_weight: 0.01, capacity_factor: null}
    experts: {type: swiglu, n_experts: 4, ffn_dim: 96}"""
DENSE_BLOCK = "  ffn: {type: swiglu, ffn_dim: 128}"


def nnkit_to_hf(nnkit, tmp, name, config_text, data):
    config = os.path.join(tmp, f"{name}.yaml")
    with open(config, "w") as f:
        f.write(config_text)
    run_dir = os.path.join(tmp, f"trained-{name}")
    tokens = data + ".tokens"
    run(nnkit, "data", "prepare", data, "-o", tokens)
    run(nnkit, "train", config, "--data", tokens, "--out", run_dir)
    ours = nnkit_logits(nnkit, run_dir)
    folder = os.path.join(tmp, f"export-{name}")
    print(run(nnkit, "convert", "export-hf", run_dir, "-o", folder, "--shard-size", "100KB").strip(),
          flush=True)
    assert os.path.exists(os.path.join(folder, "model.safetensors.index.json"))
    compare(f"(c) {name}: nnkit train + export-hf (sharded) -> transformers from_pretrained",
            ours, hf_logits(load_hf(folder)))
    # bf16: both sides read the same rounded weights, so they must agree as tightly as in f32.
    bf16 = os.path.join(tmp, f"export-{name}-bf16")
    run(nnkit, "convert", "export-hf", run_dir, "-o", bf16, "--dtype", "bf16")
    back = os.path.join(tmp, f"reimported-{name}-bf16")
    run(nnkit, "convert", "import-hf", bf16, "-o", back)
    theirs = hf_logits(load_hf(bf16))
    compare(f"(c) {name}: export-hf --dtype bf16 -> transformers vs nnkit import-hf",
            nnkit_logits(nnkit, back), theirs)
    diff = (ours - theirs).abs().max().item()
    print(f"      bf16 rounding moved the logits by at most {diff:.3e} "
          f"(max |logit| {ours.abs().max().item():.3e})", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nnkit", default="build/bin/nnkit")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(max(1, min(8, os.cpu_count() or 1)))
    print(f"torch {torch.__version__}, transformers {transformers.__version__}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        common = dict(vocab_size=320, hidden_size=64, num_hidden_layers=2,
                      num_attention_heads=4, max_position_embeddings=128,
                      tie_word_embeddings=False)
        moe = MixtralForCausalLM(MixtralConfig(**common, intermediate_size=96,
                                               num_key_value_heads=1, num_local_experts=4,
                                               num_experts_per_tok=2, rms_norm_eps=1e-5,
                                               sliding_window=None)).eval()
        hf_to_nnkit(args.nnkit, tmp, "mixtral", moe)
        dense = LlamaForCausalLM(LlamaConfig(**common, intermediate_size=128,
                                             num_key_value_heads=2, rms_norm_eps=1e-6)).eval()
        hf_to_nnkit(args.nnkit, tmp, "llama", dense)

        data = os.path.join(tmp, "data.txt")
        with open(data, "w") as f:
            here = os.path.dirname(os.path.abspath(__file__))
            for doc in ("README.md", "docs/conventions.md", "docs/config.md"):
                path = os.path.join(here, "..", doc)
                if os.path.exists(path):
                    f.write(open(path, encoding="utf-8", errors="replace").read())
        nnkit_to_hf(args.nnkit, tmp, "mixtral",
                    NNKIT_CONFIG.format(kv=1, alpha=2, block=MOE_BLOCK), data)
        nnkit_to_hf(args.nnkit, tmp, "llama",
                    NNKIT_CONFIG.format(kv=2, alpha=1, block=DENSE_BLOCK), data)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"torch": torch.__version__, "transformers": transformers.__version__,
                       "tolerance_relative": TOLERANCE, "results": RESULTS}, f, indent=2)
    failed = [r for r in RESULTS if not r["pass"]]
    print(f"{len(RESULTS) - len(failed)}/{len(RESULTS)} comparisons pass", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
