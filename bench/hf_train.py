#!/usr/bin/env python3
"""Hugging Face baseline for GPU training throughput: transformers' MixtralForCausalLM built with
the dimensions of an nnkit YAML config, trained on random tokens, timed per step.

  python3 bench/hf_train.py [--config configs/cuda-nn-6.9b.yaml] [--layers 8] [--batch 8]
      [--seq 2048] [--warmup 3] [--steps 10] [--experts grouped_mm,grouped_mm_bf16,eager]
      [--compile] [--tf32] [--peak-tflops 790]

Needs a CUDA GPU, torch >= 2.9 and transformers >= 5 (the version that has the experts
implementation switch), plus PyYAML.

The model. MixtralConfig gets the config's vocab_size, hidden_dim, experts.ffn_dim, n_layers (or
--layers), n_heads, n_kv_heads, head_dim, n_experts, top_k, rms eps and aux_loss_weight; RoPE
theta is nnkit's NTK-scaled base, base * ntk_alpha^(D / (D - 2)); untied LM head; the aux loss is
on (output_router_logits), so the loss that is back-propagated is CE + aux_loss_weight * aux, as
in nnkit. The total parameter count is checked against nnkit's formula for the same config.

The step (what nnkit's CUDA backend does with precision bf16): fp32 master weights, forward under
torch.autocast(bfloat16), backward, clip_grad_norm_(train.grad_clip), fused AdamW with the
config's train.optimizer values (cuda-nn-6.9b: lr 1e-4, betas 0.9/0.95, eps 1e-8, weight decay
0.1, off for norms and the embedding as nnkit's adamw default), zero_grad(set_to_none=True),
loss.item() every step.
Batches are torch.randint on the device, new each step. Warm-up steps are untimed; each timed
step is perf_counter around a step that ends in loss.item() (a device sync).

--experts picks transformers' experts implementation; a comma list runs each in a fresh process
(clean memory and peak statistics) and prints one JSON line each:
  eager            transformers' per-expert loop (F.linear: autocast runs it in bf16).
  grouped_mm       transformers' grouped GEMM path. torch._grouped_mm is not autocast-enabled,
                   so with fp32 master weights transformers runs these products in fp32 (its
                   input is cast to the weight dtype): the number HF gives for this recipe.
  grouped_mm_bf16  the same transformers function, handed bf16 casts of the expert weights (what
                   autocast would do if it covered grouped GEMMs): the fairest HF number for a
                   bf16 comparison. Registered through transformers' public experts registry.
Any other name registered in transformers' registry is accepted; an unknown one fails before
anything is built, listing the valid names.

MFU. FLOPs per token = 6 * P_matmul + attention, against --peak-tflops (default 790 TFLOP/s):
  P_matmul = parameters that enter a matrix product per token: every weight matrix except the
             input embedding (a row gather), with expert weights counted at top_k / n_experts;
             norm vectors are left out. `mfu_with_embedding` also counts the embedding
             (the "active parameters" convention: non-expert + top_k/E of expert parameters).
  attention (causal, per token, per layer): QK^T and PV are H * D * (seq / 2) multiply-adds
             each (a query attends to seq / 2 keys on average), 2 FLOPs per multiply-add:
             forward 2 * 2 * (seq / 2) * H * D = 2 * seq * H * D; backward is 2x forward;
             training = 3x forward = 6 * seq * H * D per layer, times n_layers.
A precision probe (one extra untimed step under a dispatcher mode) adds up the FLOPs of the
matrix products that actually ran, by dtype: it shows which share ran in bf16 and cross-checks
6 * P_matmul.

Output: human-readable lines prefixed "hf_train:" and one JSON line per run (the line starting
with "{"); a failed run prints a JSON line with "error" and the script exits 1.
"""
import argparse
import json
import math
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DEFAULT_CONFIG = os.path.join(ROOT, "configs", "cuda-nn-6.9b.yaml")
DEFAULT_EXPERTS = "grouped_mm,grouped_mm_bf16,eager"
# Our name for the bf16-weight variant of transformers' grouped_mm function (see the docstring).
BF16_GROUPED = "grouped_mm_bf16"


class BenchError(Exception):
    """A problem the user can act on; printed as one line, no traceback."""


def say(text):
    print(f"hf_train: {text}", flush=True)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=DEFAULT_CONFIG, help="nnkit YAML config (model dims)")
    p.add_argument("--layers", type=int, default=None, help="override model.n_layers")
    p.add_argument("--batch", type=int, default=8, help="sequences per step")
    p.add_argument("--seq", type=int, default=2048, help="tokens per sequence")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument("--experts", default=DEFAULT_EXPERTS,
                   help="experts implementation(s), comma-separated: eager, grouped_mm, "
                        f"{BF16_GROUPED}, or another name in transformers' registry")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (off)")
    p.add_argument("--tf32", action="store_true",
                   help="allow TF32 tensor cores for fp32 products (off, as nnkit's default)")
    p.add_argument("--peak-tflops", type=float, default=790.0,
                   help="peak dense bf16 TFLOP/s the MFU is relative to")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--no-probe", action="store_true", help="skip the precision probe step")
    args = p.parse_args(argv)
    for name in ("batch", "seq", "steps"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1")
    if args.warmup < 0:
        p.error("--warmup must be >= 0")
    if args.layers is not None and args.layers < 1:
        p.error("--layers must be >= 1")
    args.experts_list = [e.strip() for e in args.experts.split(",") if e.strip()]
    if not args.experts_list:
        p.error("--experts is empty")
    if not os.path.isfile(args.config):
        p.error(f"--config {args.config}: no such file")
    return args


# ---------------------------------------------------------------------------------------------
# The nnkit config -> model dimensions


def read_dims(args):
    """Model dimensions from the nnkit config, via bench/torch_moe.py's reader, plus the keys it
    does not read (RoPE's NTK alpha and the plugin choices this baseline must match)."""
    try:
        import yaml
    except ImportError:
        raise BenchError("PyYAML is missing (pip install pyyaml)")
    sys.path.insert(0, HERE)
    from torch_moe import load_config

    try:
        dims = load_config(args.config)
        with open(args.config) as f:
            raw = yaml.safe_load(f)
        attention = raw["model"]["attention"]
        router = raw["model"]["moe"]["router"]
    except (KeyError, TypeError) as e:
        raise BenchError(f"{args.config}: not an nnkit MoE config (missing key {e})")
    rope = attention.get("rope") or {}
    dims["ntk_alpha"] = float(rope.get("ntk_alpha", 1.0))
    dims["rope_base"] = float(rope.get("base", 10000.0))
    if args.layers is not None:
        dims["layers"] = args.layers
    # Mixtral is exactly: MQA/GQA attention, softmax top-k router with renormalised gates,
    # dropless SwiGLU experts, no z-loss. Say so when the config asks for something else.
    mismatches = []
    if attention.get("type", "mqa") != "mqa":
        mismatches.append(f"attention.type={attention.get('type')}")
    if router.get("type", "topk") != "topk" or not router.get("renormalize", True):
        mismatches.append("router is not topk with renormalize: true")
    if router.get("capacity_factor") is not None:
        mismatches.append(f"capacity_factor={router.get('capacity_factor')} (HF is dropless)")
    if float(router.get("z_loss_weight", 0) or 0) != 0:
        mismatches.append("z_loss_weight != 0 (HF Mixtral has no z-loss)")
    if mismatches:
        say("warning: HF Mixtral differs from this config: " + "; ".join(mismatches))
    return dims


def ntk_rope_theta(base, alpha, head_dim):
    # nnkit's NTK-aware scaling (docs/config.md, attention/mqa rope.ntk_alpha).
    return base * alpha ** (head_dim / (head_dim - 2))


def nnkit_parameter_count(d):
    """Total parameters of the nnkit model for these dims (core/src/model + plugins)."""
    C, F, E = d["hidden"], d["ffn"], d["experts"]
    H, Hkv, D = d["heads"], d["kv_heads"], d["head_dim"]
    attention = C * H * D * 2 + C * Hkv * D * 2  # q, o + k, v
    per_layer = attention + C * E + E * 3 * C * F + 2 * C  # + router, experts, two norms
    return d["vocab"] * C * 2 + C + d["layers"] * per_layer  # embed + head, final norm


# ---------------------------------------------------------------------------------------------
# transformers' experts implementations


def experts_registry():
    try:
        from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS
    except ImportError as e:
        import transformers

        raise BenchError(f"transformers {transformers.__version__} has no experts "
                         f"implementation switch (transformers.integrations.moe: {e}); "
                         "--experts needs transformers >= 5")
    return ALL_EXPERTS_FUNCTIONS


class _ExpertsWithCastWeights:
    """Stands in for an experts module inside transformers' experts function: attribute reads
    go to the module, except its 3-D floating-point weights, which come back cast to `dtype`
    (autograd flows through the cast to the fp32 master weights, like autocast's cast)."""

    def __init__(self, experts, dtype):
        object.__setattr__(self, "_experts", experts)
        object.__setattr__(self, "_dtype", dtype)
        object.__setattr__(self, "_casts", {})

    def __getattr__(self, name):
        value = getattr(self._experts, name)
        if not (hasattr(value, "dim") and value.dim() == 3 and value.is_floating_point()):
            return value
        if name not in self._casts:
            self._casts[name] = value.to(self._dtype)
        return self._casts[name]


def register_bf16_grouped(registry, calls):
    """Registers BF16_GROUPED: transformers' own grouped_mm function, run on bf16 casts of the
    expert weights and input while autocast is on. `calls` counts invocations, so the run can
    prove the implementation was dispatched."""
    import torch

    try:
        grouped = registry["grouped_mm"]
    except KeyError:
        raise BenchError(f"transformers' experts registry has no 'grouped_mm' (has: "
                         f"{', '.join(sorted(registry.keys()))})")

    def forward(experts, hidden_states, top_k_index, top_k_weights):
        calls[0] += 1
        if not torch.is_autocast_enabled("cuda"):
            return grouped(experts, hidden_states, top_k_index, top_k_weights)
        dtype = torch.get_autocast_dtype("cuda")
        view = _ExpertsWithCastWeights(experts, dtype)
        return grouped(view, hidden_states.to(dtype), top_k_index, top_k_weights)

    if hasattr(registry, "register"):
        registry.register(BF16_GROUPED, forward)
    else:
        registry[BF16_GROUPED] = forward


def check_experts_name(name, registry):
    valid = ["eager"] + sorted(set(registry.keys()) | {BF16_GROUPED})
    if name not in valid:
        raise BenchError(f"--experts {name}: not an experts implementation of this "
                         f"transformers; valid: {', '.join(valid)}")


# ---------------------------------------------------------------------------------------------
# Building the model


def build_model(dims, args, experts_name):
    import torch
    from transformers import MixtralConfig, MixtralForCausalLM

    theta = ntk_rope_theta(dims["rope_base"], dims["ntk_alpha"], dims["head_dim"])
    # Explicit casts: MixtralConfig is a strictly typed dataclass in transformers 5.
    config = MixtralConfig(
        vocab_size=int(dims["vocab"]),
        hidden_size=int(dims["hidden"]),
        intermediate_size=int(dims["ffn"]),
        num_hidden_layers=int(dims["layers"]),
        num_attention_heads=int(dims["heads"]),
        num_key_value_heads=int(dims["kv_heads"]),
        head_dim=int(dims["head_dim"]),
        num_local_experts=int(dims["experts"]),
        num_experts_per_tok=int(dims["top_k"]),
        max_position_embeddings=int(max(args.seq, dims["max_seq"])),
        rms_norm_eps=float(dims["eps"]),
        rope_parameters={"rope_type": "default", "rope_theta": float(theta)},
        tie_word_embeddings=False,
        output_router_logits=True,
        router_aux_loss_coef=float(dims["aux_weight"]),
        router_jitter_noise=0.0,
        attention_dropout=0.0,
        use_cache=False,
        attn_implementation="sdpa",
        experts_implementation=experts_name,
    )
    try:
        # Built on the GPU directly: initialising ~2B fp32 parameters on the CPU takes minutes.
        with torch.device("cuda"):
            model = MixtralForCausalLM(config)
    except (ValueError, ImportError) as e:
        raise BenchError(f"transformers refused experts_implementation={experts_name!r} "
                         f"or the config: {e}")
    model.train()

    got = getattr(model.config, "_experts_implementation", None)
    if got != experts_name:
        raise BenchError(f"asked for experts implementation {experts_name!r}, the model uses "
                         f"{got!r} (transformers fell back)")
    if model.config._attn_implementation != "sdpa":
        raise BenchError(f"attention implementation is {model.config._attn_implementation!r}, "
                         "not sdpa")
    bad = sorted({str(p.dtype) for p in model.parameters() if p.dtype != torch.float32})
    if bad:
        raise BenchError(f"master weights must be fp32; found {bad}")
    check_rope(model, theta, dims["head_dim"])
    return model, theta


def check_rope(model, theta, head_dim):
    """The rotary frequencies the model computes must be those of the NTK-scaled theta."""
    import torch

    rotary = getattr(getattr(model, "model", None), "rotary_emb", None)
    inv_freq = getattr(rotary, "inv_freq", None)
    if inv_freq is None:
        say("warning: model.model.rotary_emb.inv_freq not found; RoPE theta not verified")
        return
    expected = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    got = inv_freq.detach().double().cpu()
    if got.shape != expected.shape or not torch.allclose(got, expected, rtol=1e-4, atol=0.0):
        raise BenchError(f"RoPE: the model's inv_freq does not match theta={theta:.1f} "
                         "(rope_parameters not honoured by this transformers?)")


def count_parameters(model, dims):
    embedding = model.get_input_embeddings().weight
    total = expert = norms = 0
    for name, p in model.named_parameters():
        total += p.numel()
        if ".experts." in name or name.endswith(".experts"):
            expert += p.numel()
        elif p.dim() < 2:
            norms += p.numel()
    if expert == 0:
        raise BenchError("no expert parameters found (names with '.experts.'): cannot count "
                         "active parameters")
    active_expert = expert * dims["top_k"] / dims["experts"]
    non_expert = total - expert
    active = non_expert + active_expert
    matmul_active = active - embedding.numel() - norms
    return dict(total_params=total, expert_params=expert, non_expert_params=non_expert,
                active_params=int(active), matmul_active_params=int(matmul_active),
                embedding_params=embedding.numel())


def make_optimizer(model, args, dims):
    import torch

    embedding = model.get_input_embeddings().weight
    decay, no_decay = [], []
    for p in model.parameters():
        (decay if p.dim() >= 2 and p is not embedding else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": dims["weight_decay"]},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=dims["lr"], betas=(dims["beta1"], dims["beta2"]),
                             eps=dims["adam_eps"], fused=True)


# ---------------------------------------------------------------------------------------------
# The precision probe


def make_probe_mode():
    """A dispatcher mode that adds up matrix-product FLOPs by the dtype they ran in."""
    from collections import Counter

    from torch.utils._python_dispatch import TorchDispatchMode

    def product_flops(op, args):
        tensors = [a for a in args if hasattr(a, "dim")]
        if op in ("aten::mm", "aten::bmm"):
            a, b = tensors[0], tensors[1]
        elif op in ("aten::addmm", "aten::baddbmm"):
            a, b = tensors[1], tensors[2]
        elif "grouped_mm" in op:
            a, b = tensors[0], tensors[1]
            if a.dim() == 2 and b.dim() == 3:  # (S, K) x (E, K, N): forward and input grad
                return 2 * a.shape[0] * a.shape[1] * b.shape[2], a.dtype
            if a.dim() == 2 and b.dim() == 2:  # (K, S) x (S, N) -> (E, K, N): weight grad
                return 2 * a.shape[0] * a.shape[1] * b.shape[1], a.dtype
            if a.dim() == 3 and b.dim() == 3:
                return 2 * a.shape[0] * a.shape[1] * a.shape[2] * b.shape[2], a.dtype
            return None
        else:
            return None
        if a.dim() == 2:
            return 2 * a.shape[0] * a.shape[1] * b.shape[1], a.dtype
        return 2 * a.shape[0] * a.shape[1] * a.shape[2] * b.shape[2], a.dtype

    class MatmulPrecisionTally(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.flops = Counter()
            self.attention_calls = Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            schema = getattr(func, "_schema", None)
            op = schema.name if schema is not None else str(func)
            counted = product_flops(op, args)
            if counted is not None:
                self.flops[str(counted[1]).replace("torch.", "")] += counted[0]
            elif "scaled_dot_product" in op or "flash_attention" in op:
                first = next((a for a in args if hasattr(a, "dtype")), None)
                dtype = str(first.dtype).replace("torch.", "") if first is not None else "?"
                self.attention_calls[f"{op}/{dtype}"] += 1
            return func(*args, **kwargs)

    return MatmulPrecisionTally()


# ---------------------------------------------------------------------------------------------
# One run


def run_one(args, experts_name):
    try:
        import torch
    except ImportError:
        raise BenchError("PyTorch is missing")
    try:
        import transformers
    except ImportError:
        raise BenchError("transformers is missing (needs >= 5)")
    if not torch.cuda.is_available():
        raise BenchError("no CUDA device visible to PyTorch")
    if not torch.cuda.is_bf16_supported():
        raise BenchError("this GPU has no bf16 support")

    registry = experts_registry()
    bf16_calls = [0]
    if experts_name == BF16_GROUPED:
        register_bf16_grouped(registry, bf16_calls)
    check_experts_name(experts_name, registry)

    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    torch.manual_seed(args.seed)

    dims = read_dims(args)
    model, theta = build_model(dims, args, experts_name)
    counts = count_parameters(model, dims)
    expected_total = nnkit_parameter_count(dims)
    if counts["total_params"] != expected_total:
        say(f"warning: HF model has {counts['total_params']:,} parameters, the nnkit model of "
            f"this config {expected_total:,}: the shapes differ")
    experts_module = next((m for n, m in model.named_modules() if n.endswith(".experts")), None)
    say(f"experts={experts_name} ({type(experts_module).__name__}) layers={dims['layers']} "
        f"batch={args.batch} seq={args.seq} params={counts['total_params']:,} "
        f"active={counts['active_params']:,} rope_theta={theta:.1f}")

    train_model = model
    if args.compile:
        train_model = torch.compile(model)
    optimizer = make_optimizer(model, args, dims)
    params = [p for p in model.parameters()]
    generator = torch.Generator(device="cuda")
    generator.manual_seed(args.seed)
    tokens_per_step = args.batch * args.seq

    def step():
        ids = torch.randint(0, dims["vocab"], (args.batch, args.seq), device="cuda",
                            generator=generator)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = train_model(input_ids=ids, labels=ids)
        if out.loss is None:
            raise BenchError("the model returned no loss")
        if out.aux_loss is None:  # the loss would silently lack the load-balancing term
            raise BenchError("the model returned no aux loss (router logits not recorded)")
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, dims["grad_clip"])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return out.loss.item(), out.aux_loss

    torch.cuda.reset_peak_memory_stats()
    t_warmup = time.perf_counter()
    for _ in range(args.warmup):
        step()
    torch.cuda.synchronize()
    warmup_s = time.perf_counter() - t_warmup

    step_ms, losses = [], []
    aux = None
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        t_step = time.perf_counter()
        loss, aux = step()  # loss.item() inside: the step ends with a device sync
        step_ms.append((time.perf_counter() - t_step) * 1e3)
        losses.append(loss)
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    peak_alloc = torch.cuda.max_memory_allocated()
    peak_reserved = torch.cuda.max_memory_reserved()
    if experts_name == BF16_GROUPED and bf16_calls[0] == 0:
        raise BenchError(f"{BF16_GROUPED} was registered but transformers never called it")

    tokens_per_s = tokens_per_step * args.steps / elapsed
    L, H, D, T = dims["layers"], dims["heads"], dims["head_dim"], args.seq
    attention_flops = 6 * L * T * H * D  # per token, training: see the docstring
    flops_per_token = 6 * counts["matmul_active_params"] + attention_flops
    flops_with_embedding = 6 * (counts["matmul_active_params"] + counts["embedding_params"]) + \
        attention_flops
    peak = args.peak_tflops * 1e12
    sorted_ms = sorted(step_ms)

    result = dict(
        bench="hf_train", experts=experts_name,
        experts_class=type(experts_module).__name__ if experts_module is not None else None,
        config=os.path.relpath(args.config, ROOT) if args.config.startswith(ROOT) else args.config,
        layers=dims["layers"], batch=args.batch, seq=args.seq, warmup=args.warmup,
        steps=args.steps, compile=args.compile, tf32=args.tf32,
        vocab=dims["vocab"], hidden=dims["hidden"], n_heads=H, n_kv_heads=dims["kv_heads"],
        head_dim=D, n_experts=dims["experts"], top_k=dims["top_k"], ffn_dim=dims["ffn"],
        rope_theta=theta, aux_loss_weight=dims["aux_weight"],
        **counts, nnkit_total_params=expected_total,
        param_count_matches_nnkit=counts["total_params"] == expected_total,
        tokens_per_step=tokens_per_step, tokens_per_s=tokens_per_s,
        ms_per_step=elapsed / args.steps * 1e3, median_ms_per_step=sorted_ms[len(sorted_ms) // 2],
        min_ms_per_step=sorted_ms[0], max_ms_per_step=sorted_ms[-1], step_ms=step_ms,
        warmup_s=warmup_s,
        flops_per_token=flops_per_token, attention_flops_per_token=attention_flops,
        peak_tflops=args.peak_tflops, achieved_tflops=tokens_per_s * flops_per_token / 1e12,
        mfu=tokens_per_s * flops_per_token / peak,
        mfu_with_embedding=tokens_per_s * flops_with_embedding / peak,
        peak_memory_allocated_gib=peak_alloc / 2**30,
        peak_memory_reserved_gib=peak_reserved / 2**30,
        first_loss=losses[0], last_loss=losses[-1],
        last_aux_loss=float(aux.item()) if hasattr(aux, "item") else aux,
        losses_finite=all(math.isfinite(x) for x in losses),
        torch=torch.__version__, transformers=transformers.__version__,
        cuda=torch.version.cuda, gpu=torch.cuda.get_device_name(0),
    )

    if not args.no_probe and not args.compile:
        result.update(precision_probe(step, tokens_per_step, counts))

    say(f"{args.steps} steps: {result['ms_per_step']:.1f} ms/step (median "
        f"{result['median_ms_per_step']:.1f}), {tokens_per_s:,.0f} tokens/s, "
        f"MFU {result['mfu'] * 100:.1f}% of {args.peak_tflops:.0f} TFLOP/s "
        f"({result['achieved_tflops']:.0f} TFLOP/s), peak memory "
        f"{result['peak_memory_allocated_gib']:.1f} GiB, loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    if "probe_matmul_flops_share" in result:
        shares = ", ".join(f"{k} {v * 100:.1f}%"
                           for k, v in result["probe_matmul_flops_share"].items())
        say(f"matrix-product FLOPs by dtype: {shares}; measured "
            f"{result['probe_matmul_flops_per_token'] / 1e9:.2f} GFLOP/token vs 6 * P_matmul = "
            f"{6 * counts['matmul_active_params'] / 1e9:.2f}")
    print(json.dumps(result), flush=True)


def precision_probe(step, tokens_per_step, counts):
    try:
        mode = make_probe_mode()
        with mode:
            step()
        total = sum(mode.flops.values())
        if total == 0:
            return {"probe_error": "no matrix products seen"}
        return dict(
            probe_matmul_flops_share={k: v / total for k, v in sorted(mode.flops.items())},
            probe_matmul_flops_per_token=total / tokens_per_step,
            probe_attention_calls=dict(mode.attention_calls),
        )
    except Exception as e:  # the probe is informational: never lose the timed numbers to it
        return {"probe_error": f"{type(e).__name__}: {e}"}


# ---------------------------------------------------------------------------------------------


def main(argv):
    args = parse_args(argv)
    if len(args.experts_list) > 1:
        # One fresh process per implementation: no memory or allocator state carried over.
        failed = []
        for name in args.experts_list:
            child = [sys.executable, os.path.abspath(__file__)] + strip_experts(argv) + \
                ["--experts", name]
            if subprocess.run(child).returncode != 0:
                failed.append(name)
        if failed:
            say(f"failed: {', '.join(failed)}")
            return 1
        return 0

    name = args.experts_list[0]
    try:
        run_one(args, name)
        return 0
    except BenchError as e:
        message = str(e)
    except Exception as e:  # e.g. CUDA out of memory: report it as this run's result
        import traceback

        traceback.print_exc()
        message = f"{type(e).__name__}: {e}"
    say(f"experts={name}: error: {message}")
    print(json.dumps(dict(bench="hf_train", experts=name, layers=args.layers, batch=args.batch,
                          seq=args.seq, error=message)), flush=True)
    return 1


def strip_experts(argv):
    """argv without its --experts option, so a child can be given exactly one."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--experts":
            skip = True
        elif not a.startswith("--experts="):
            out.append(a)
    return out


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
