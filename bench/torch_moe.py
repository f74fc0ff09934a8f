"""PyTorch baseline: the same MoE transformer nnkit builds from a config (written for the benchmarks).

Architecture, matching core/src/model/transformer.cpp and the plugins it loads:
  embed (V, C) -> n_layers x [x + MQA(RMSNorm(x)); x + MoE(RMSNorm(x))] -> RMSNorm -> lm_head (V, C)
  MQA: q = x Wq^T (H*D), k = x Wk^T, v = x Wv^T (Hkv*D), rotate-half RoPE on q and k,
       causal softmax(q k^T / sqrt(D)) v, out = attended Wo^T.
  Router: logits = x Wg^T over all E experts, probs = softmax(logits), top-k, gates renormalised
       to sum 1; aux loss (Switch) = E * sum_i f_i * P_i with f_i (share of routed slots) constant.
  Experts: SwiGLU, y_e = W2 (silu(W1 x) * W3 x), sorted gather/scatter dispatch (argsort of the
       chosen experts, one gather, one contiguous slice per expert, one weighted index_add_).
  Loss: mean cross-entropy + aux_loss_weight * sum over layers of the aux loss.
  Optimiser: AdamW (decay off for norms and the embedding), grad clipping, warmup-cosine.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def load_config(path):
    """The few model/train keys the benchmarks need from an nnkit YAML config."""
    import yaml  # python3-yaml

    with open(path) as f:
        cfg = yaml.safe_load(f)
    m = cfg["model"]
    a = m["attention"]
    r = m["moe"]["router"]
    e = m["moe"]["experts"]
    t = cfg.get("train", {})
    o = t.get("optimizer", {})
    return dict(
        vocab=m["vocab_size"], hidden=m["hidden_dim"], layers=m["n_layers"],
        max_seq=m.get("max_seq_len", 512), eps=m["norm"].get("eps", 1e-5),
        heads=a["n_heads"], kv_heads=a.get("n_kv_heads", 1), head_dim=a["head_dim"],
        rope_base=a.get("rope", {}).get("base", 10000.0),
        top_k=r.get("top_k", 2), aux_weight=r.get("aux_loss_weight", 0.01),
        experts=e["n_experts"], ffn=e["ffn_dim"],
        batch=t.get("batch_size", 16), seq=t.get("seq_len", 128),
        lr=o.get("lr", 3e-3), beta1=o.get("beta1", 0.9), beta2=o.get("beta2", 0.95),
        adam_eps=o.get("eps", 1e-8), weight_decay=o.get("weight_decay", 0.1),
        grad_clip=t.get("grad_clip", 1.0),
        warmup=t.get("schedule", {}).get("warmup_steps", 30),
        min_lr_ratio=t.get("schedule", {}).get("min_lr_ratio", 0.1),
    )


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rope_tables(head_dim, base, max_pos):
    inv = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    ang = torch.arange(max_pos, dtype=torch.float64)[:, None] * inv[None, :]
    cos = torch.cat([ang.cos(), ang.cos()], -1).float()  # (P, D)
    sin = torch.cat([ang.sin(), ang.sin()], -1).float()
    return cos, sin


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], -1)


def apply_rope(x, cos, sin):
    # x: (B, heads, T, D); cos/sin: (T, D)
    return x * cos + rotate_half(x) * sin


class MQA(nn.Module):
    def __init__(self, c):
        super().__init__()
        C, H, Hkv, D = c["hidden"], c["heads"], c["kv_heads"], c["head_dim"]
        self.H, self.Hkv, self.D = H, Hkv, D
        self.q_proj = nn.Linear(C, H * D, bias=False)
        self.k_proj = nn.Linear(C, Hkv * D, bias=False)
        self.v_proj = nn.Linear(C, Hkv * D, bias=False)
        self.o_proj = nn.Linear(H * D, C, bias=False)
        self.scale = 1.0 / math.sqrt(D)

    def forward(self, x, cos, sin, cache=None, pos=0):
        B, T, _ = x.shape
        H, Hkv, D = self.H, self.Hkv, self.D
        q = self.q_proj(x).view(B, T, H, D).transpose(1, 2)
        k = self.k_proj(x).view(B, T, Hkv, D).transpose(1, 2)
        v = self.v_proj(x).view(B, T, Hkv, D).transpose(1, 2)
        q = apply_rope(q, cos[pos:pos + T], sin[pos:pos + T])
        k = apply_rope(k, cos[pos:pos + T], sin[pos:pos + T])
        if cache is not None:  # (k_cache, v_cache) preallocated (B, Hkv, cap, D)
            kc, vc = cache
            kc[:, :, pos:pos + T] = k
            vc[:, :, pos:pos + T] = v
            k = kc[:, :, :pos + T]
            v = vc[:, :, :pos + T]
        S = k.shape[2]
        g = H // Hkv
        # Group the query heads that share a KV head: (B, Hkv, g*T, D) against (B, Hkv, S, D).
        qg = q.reshape(B, Hkv, g * T, D)
        scores = torch.matmul(qg, k.transpose(-1, -2)) * self.scale  # (B, Hkv, g*T, S)
        scores = scores.view(B, Hkv, g, T, S)
        if T > 1:
            mask = torch.ones(T, S, dtype=torch.bool, device=scores.device).triu(S - T + 1)
            scores = scores.masked_fill(mask, float("-inf"))
        p = torch.softmax(scores, -1).view(B, Hkv, g * T, S)
        out = torch.matmul(p, v).view(B, H, T, D).transpose(1, 2).reshape(B, T, H * D)
        return self.o_proj(out)


class MoE(nn.Module):
    def __init__(self, c):
        super().__init__()
        C, F_, E = c["hidden"], c["ffn"], c["experts"]
        self.E, self.k = E, c["top_k"]
        self.gate = nn.Linear(C, E, bias=False)
        self.w1 = nn.Parameter(torch.empty(E, F_, C))  # gate proj
        self.w3 = nn.Parameter(torch.empty(E, F_, C))  # up proj
        self.w2 = nn.Parameter(torch.empty(E, C, F_))  # down proj
        for w in (self.w1, self.w2, self.w3):
            nn.init.normal_(w, std=0.02)
        self.aux = None

    def forward(self, x):
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        N = x.shape[0]
        logits = self.gate(x)
        probs = torch.softmax(logits, -1)
        top_p, top_i = probs.topk(self.k, -1)
        gates = top_p / top_p.sum(-1, keepdim=True)
        flat_e = top_i.reshape(-1)
        if self.training:
            frac = torch.bincount(flat_e, minlength=self.E).float() / flat_e.numel()
            self.aux = self.E * (frac * probs.mean(0)).sum()
        order = torch.argsort(flat_e, stable=True)
        counts = torch.bincount(flat_e, minlength=self.E).tolist()
        token = order // self.k
        xs = x.index_select(0, token)
        outs = []
        start = 0
        for e, n in enumerate(counts):
            if n == 0:
                continue
            xe = xs[start:start + n]
            h = F.silu(xe @ self.w1[e].t()) * (xe @ self.w3[e].t())
            outs.append(h @ self.w2[e].t())
            start += n
        ys = torch.cat(outs, 0) * gates.reshape(-1)[order].unsqueeze(1)
        y = torch.zeros_like(x).index_add_(0, token, ys)
        return y.view(shape)


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.attn_norm = RMSNorm(c["hidden"], c["eps"])
        self.attn = MQA(c)
        self.ffn_norm = RMSNorm(c["hidden"], c["eps"])
        self.moe = MoE(c)

    def forward(self, x, cos, sin, cache=None, pos=0):
        x = x + self.attn(self.attn_norm(x), cos, sin, cache, pos)
        return x + self.moe(self.ffn_norm(x))


class Transformer(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        self.embed = nn.Embedding(c["vocab"], c["hidden"])
        self.blocks = nn.ModuleList([Block(c) for _ in range(c["layers"])])
        self.norm = RMSNorm(c["hidden"], c["eps"])
        self.lm_head = nn.Linear(c["hidden"], c["vocab"], bias=False)
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                nn.init.normal_(p, std=0.02)
        cos, sin = rope_tables(c["head_dim"], c["rope_base"], c["max_seq"])
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def forward(self, ids, caches=None, pos=0):
        x = self.embed(ids)
        for i, b in enumerate(self.blocks):
            x = b(x, self.cos, self.sin, None if caches is None else caches[i], pos)
        return self.lm_head(self.norm(x))

    def loss(self, ids, targets):
        logits = self.forward(ids)
        ce = F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1))
        aux = sum(b.moe.aux for b in self.blocks)
        return ce, ce + self.c["aux_weight"] * aux

    def new_caches(self, batch, capacity):
        c = self.c
        return [(torch.zeros(batch, c["kv_heads"], capacity, c["head_dim"]),
                 torch.zeros(batch, c["kv_heads"], capacity, c["head_dim"]))
                for _ in self.blocks]


def make_optimizer(model, c):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if (p.dim() < 2 or name.startswith("embed")) else decay).append(p)
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": c["weight_decay"]},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=c["lr"], betas=(c["beta1"], c["beta2"]), eps=c["adam_eps"])


def lr_factor(step, total, warmup, min_ratio):
    if step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
