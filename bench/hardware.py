"""What the hardware allows: measured matmul rate and copy bandwidth, and the time floors they give.

Floors are lower bounds on time for a case, from two numbers measured in the same process as
the case itself (absolute speed moves between machines; ratios to the floor do not):

- a decode step reads every language-model weight once (the vision tower and the embedding
  table are not read) plus the KV cache of every row: bytes ÷ copy bandwidth, or its FLOPs ÷
  the matmul rate when that is larger (large batches);
- a prefill does 2 FLOPs per language-model parameter per token, 2 per vision parameter per
  patch (4 patches per visual token), and causal attention (QKᵀ and PV: 2 FLOPs each per
  query–key pair per channel), ÷ the matmul rate; the vision tower's attention is ignored;
- training: 6 FLOPs per parameter per token (the MFU convention of ``docs/speed.md``: checkpointing's
  recomputed forward is not counted as useful work).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass


def sync(device) -> None:
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device, reps: int, warmup: int = 1) -> tuple[float, object]:
    """Median wall seconds of ``fn()`` over ``reps`` runs after ``warmup``; and the last result."""
    out = None
    for _ in range(warmup):
        out = fn()
    sync(device)
    times = []
    for _ in range(max(1, reps)):
        t = time.perf_counter()
        out = fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def hardware(device) -> dict:
    """Matmul rate (bf16 on CUDA, float32 on CPU) and copy bandwidth (read + write bytes / s)."""
    import torch

    cuda = str(device).startswith("cuda")
    n, dtype, nbytes = (8192, torch.bfloat16, 2 * 1024**3) if cuda else (512, torch.float32, 64 * 1024**2)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn_like(a)
    t, _ = timed(lambda: a @ b, device, reps=10, warmup=3)
    flops = 2 * n**3 / t
    x = torch.empty(nbytes, dtype=torch.uint8, device=device)
    y = torch.empty_like(x)
    t, _ = timed(lambda: y.copy_(x), device, reps=10, warmup=3)
    bandwidth = 2 * nbytes / t
    return {"matmul_tflops": flops / 1e12, "copy_tbps": bandwidth / 1e12, "meaningful": cuda}


@dataclass
class Model:
    """What the floors need to know about the model."""

    params: int               # all parameters
    lm_params: int            # language model + lm_head, without the embedding table
    vision_params: int
    weight_bytes: int         # read once per decode step: lm_params in their dtype
    kv_bytes: int             # per cached token, all layers (K and V)
    attn_width: int           # layers · heads · head_dim: attention FLOPs per (query, key) pair / 4

    @classmethod
    def of(cls, core) -> "Model":
        text = core.config.text_config
        lm = core.model.language_model
        emb = lm.get_input_embeddings().weight
        lm_params = sum(p.numel() for p in lm.parameters()) - emb.numel() + core.lm_head.weight.numel()
        size = core.lm_head.weight.element_size()
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        return cls(params=sum(p.numel() for p in core.parameters()), lm_params=lm_params,
                   vision_params=sum(p.numel() for p in core.model.visual.parameters()),
                   weight_bytes=lm_params * size,
                   kv_bytes=2 * text.num_hidden_layers * text.num_key_value_heads * head_dim * size,
                   attn_width=text.num_hidden_layers * text.num_attention_heads * head_dim)


@dataclass
class Floors:
    """Lower bounds on time from the measured matmul rate and bandwidth (attention FLOPs ignored)."""

    m: Model
    flops: float              # FLOP/s
    bandwidth: float          # bytes/s

    def step(self, batch: int, context: int) -> float:
        """Seconds of one decode step of ``batch`` rows over ``context`` cached tokens."""
        memory = (self.m.weight_bytes + batch * context * self.m.kv_bytes) / self.bandwidth
        return max(memory, 2 * self.m.lm_params * batch / self.flops)

    def prefill(self, tokens: int, visual_tokens: int = 0, context: int = 0) -> float:
        """Seconds to prefill ``tokens`` on ``context`` cached ones: weights (2 FLOPs per parameter
        per token; the vision tower's 4 patches per visual token) + causal attention (QKᵀ and PV,
        2 FLOPs each per query–key pair per channel); the vision tower's attention is ignored."""
        linear = 2 * self.m.lm_params * tokens + 2 * self.m.vision_params * 4 * visual_tokens
        attention = 4 * self.m.attn_width * tokens * (context + tokens / 2)
        return (linear + attention) / self.flops

    def turn(self, prompt: int, visual: int, context: int, new: int) -> float:
        """Prefill of ``prompt`` tokens on ``context`` cached ones, then ``new`` decode steps."""
        return self.prefill(prompt, visual, context) + new * self.step(1, context + prompt)

    def train_tokens_per_s(self) -> float:
        return self.flops / (6 * self.m.params)
