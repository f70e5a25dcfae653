"""Speed of the engine and the trainer's LoRA update, side by side with plain transformers.

    python -m bench                                   # GPU: Qwen2.5-VL-7B shapes, bf16 (or python -m mgpo.bench)
    python -m bench --shapes tiny --json /tmp/b.json  # CPU: tiny shapes, a dry run in seconds

One process builds a random-weight Qwen2.5-VL (:mod:`bench.shapes`; speed does not depend on the
weights), measures the hardware (bf16 matmul TFLOP/s, copy bandwidth), then times each case of
``docs/speed.md`` twice — with the project's code (:class:`mgpo.engine.Engine` over the real
:class:`mgpo.generation.QwenBackend` decode loop; :func:`train.logprobs.token_logprobs` for the
update) and with :class:`bench.baseline.Baseline`, a plain transformers forward loop:

- ``decode``: single-stream decode tok/s (one prompt with the 4K overview, 128 new tokens);
- ``two_turn``: the 4K image (3840×2160 noise): turn 1 on the overview (≤1280 visual tokens,
  48 generated tokens ending with a box), turn 2 on the native-resolution crop of a 1/4 × 1/4
  region (~646 visual tokens, 16 generated) — the engine with KV reuse and re-encoding, the
  baseline re-encoding and continuing its cache;
- ``native``: the same image in one turn at native resolution (10,549 visual tokens) + 16 tokens;
- ``group_prefill``: turn-1 prefill of a group of 8 samples of one prompt vs one sample
  (the engine's ``TurnFinished.prefill_seconds``; the baseline's 8 copies of the prompt);
- ``rollout``: rollout decode tok/s of 8 prompts × 8 samples, 128 new tokens, temperature 1;
- ``lora``: one LoRA r=64 update (gradient checkpointing) on 8 rollouts: tokens/s and MFU.

Random weights never write a box and stop at random, so :class:`bench.forced.ForcedBackend`
scripts turn 1 (a prose prefix padded to 48 tokens and a fenced ``json`` box that maps to the
wanted crop) and fixes every answer's length; log-probs stay the model's own.

Each case runs once to warm up, then ``reps`` times; the median counts (``cuda.synchronize``
around every timing). A case that fails is reported as an error and the rest still run. The
baseline gets the same token counts as the engine's turns (the tiny byte-level tokenizer makes
the text part of a prompt about 4× longer than Qwen's BPE would). Floors and MFU come from the
hardware measured in the same run (:mod:`bench.hardware`). Engine times include what a caller
waits for (image resize and processor); the baseline's images are encoded before its clock starts.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mgpo import geometry

from .hardware import Floors, Model, hardware, sync, timed

CASES = ("decode", "two_turn", "native", "group_prefill", "rollout", "lora")
QUESTION = "What is written on the sign?"
PROSE = "The question asks about a small detail, so I look for the region that shows it. "


@dataclass
class BenchConfig:
    shapes: str = "7b"                       # 7b | tiny
    image_size: tuple[int, int] = (3840, 2160)   # (W, H) of the noise image
    min_pixels: int = geometry.MIN_PIXELS    # the paper's pixel limits for the overview / crops
    max_pixels: int = geometry.MAX_PIXELS
    crop_at: tuple[float, float] = (1 / 3, 1 / 3)   # crop's top-left, as fractions of (W, H)
    crop_frac: float = 0.25                  # crop side / image side
    turn1_tokens: int = 48                   # turn 1 = prose + box, exactly this long
    answer_tokens: int = 16                  # a final answer's new tokens
    decode_tokens: int = 128                 # single-stream decode
    group_size: int = 8                      # group_prefill and rollout
    rollout_prompts: int = 8                 # rollout: prompts × group_size rows
    rollout_tokens: int = 128
    lora_rows: int = 8
    lora_r: int = 64
    reps: int = 3                            # timed repetitions after one warm-up
    long_reps: int = 2                       # for the long cases (rollout, lora)
    max_seconds: float = 420.0               # later cases are skipped past this (the device lease)
    cases: tuple[str, ...] = CASES

    @classmethod
    def tiny(cls, **kw) -> "BenchConfig":
        """CPU dry run: the same cases on tiny shapes and a small image (seconds)."""
        base = dict(shapes="tiny", image_size=(640, 360), min_pixels=16 * 28 * 28, max_pixels=64 * 28 * 28,
                    decode_tokens=8, group_size=4, rollout_prompts=2, rollout_tokens=8, lora_rows=2, lora_r=8,
                    reps=1, long_reps=1, max_seconds=120.0)
        base.update(kw)
        return cls(**base)

    @classmethod
    def playground(cls, **kw) -> "BenchConfig":
        """CPU at the playground's size: its model shapes, a 2048² image at its pixel budgets (224²
        overview, 112² crops), and its RL rollouts (16 prompts × 8 samples, 96 new tokens)."""
        from mgpo.playground.world import MAX_NEW_TOKENS, Budgets

        b = Budgets()
        base = dict(shapes="playground", image_size=(2048, 2048), min_pixels=b.crop_min_pixels,
                    max_pixels=b.overview_max_pixels, crop_frac=0.125, turn1_tokens=48, answer_tokens=8,
                    decode_tokens=MAX_NEW_TOKENS, group_size=8, rollout_prompts=16, rollout_tokens=MAX_NEW_TOKENS,
                    lora_rows=16, lora_r=32, reps=3, long_reps=3, max_seconds=600.0)
        base.update(kw)
        return cls(**base)


# Rough wall seconds of each case on an H200 at 7B shapes (docs/speed.md's baseline times × runs):
# printed before the run so a device session knows what it is in for.
EST_7B_SECONDS = dict(build=15, floors=3, decode=22, two_turn=30, native=16, group_prefill=10, rollout=30, lora=70)


# ----- the run --------------------------------------------------------------------------------

@dataclass
class Row:
    """One line of the table. ``higher``: bigger is better (tok/s, MFU) else smaller (seconds)."""

    case: str
    unit: str
    project: float | None
    baseline: float | None = None
    floor: float | None = None
    target: float | None = None
    higher: bool = True
    note: str = ""

    @property
    def speedup(self) -> float | None:
        """How many times better than the baseline (> 1 = the project is faster)."""
        if not self.project or not self.baseline:
            return None
        return self.project / self.baseline if self.higher else self.baseline / self.project

    @property
    def met(self) -> bool | None:
        if self.project is None or self.target is None:
            return None
        return self.project >= self.target if self.higher else self.project <= self.target

    @property
    def of_floor(self) -> float | None:
        """How close to the floor (1 = at the floor)."""
        if not self.project or not self.floor:
            return None
        return self.project / self.floor if self.higher else self.floor / self.project

    def to_dict(self) -> dict:
        return {**asdict(self), "speedup": self.speedup, "of_floor": self.of_floor, "target_met": self.met}


@dataclass
class Bench:
    cfg: BenchConfig
    device: str
    dtype: object
    loaded: object = None
    floors: Floors | None = None
    rows: list[Row] = field(default_factory=list)
    cases: dict = field(default_factory=dict)
    _image: object = None

    # -- inputs --

    @property
    def image(self):
        """The noise image (W×H), made once."""
        if self._image is None:
            import numpy as np
            from PIL import Image

            w, h = self.cfg.image_size
            self._image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8))
        return self._image

    def crop_region(self) -> tuple[int, int, int, int]:
        """(x1, y1, x2, y2) in original-image pixels: the region turn 1's box should select."""
        w, h = self.cfg.image_size
        x1, y1 = int(w * self.cfg.crop_at[0]), int(h * self.cfg.crop_at[1])
        return x1, y1, x1 + int(w * self.cfg.crop_frac), y1 + int(h * self.cfg.crop_frac)

    def turn1_script(self) -> str:
        """Prose padded so that prose + fenced box is exactly ``turn1_tokens`` tokens; the box is
        the crop region in the overview's model frame (the frame turn-1 boxes are read in)."""
        from mgpo import geometry

        w, h = self.cfg.image_size
        fw, fh = geometry.model_frame((w, h), self.cfg.min_pixels, self.cfg.max_pixels)
        x1, y1, x2, y2 = self.crop_region()
        box = [round(x1 * fw / w), round(y1 * fh / h), round(x2 * fw / w), round(y2 * fh / h)]
        fence = '```json\n[{"bbox_2d": [%d, %d, %d, %d]}]\n```' % tuple(box)
        tok = self.loaded.processor.tokenizer
        n_tokens = lambda text: len(tok(text, add_special_tokens=False)["input_ids"])   # noqa: E731
        prose = PROSE * (1 + self.cfg.turn1_tokens // 8)
        k = 0
        while k < len(prose) and n_tokens(prose[:k + 1] + fence) <= self.cfg.turn1_tokens:
            k += 1
        return prose[:k] + fence

    def engine(self, *, script: str | None = None, answer_tokens: int | None = None, kv_reuse: bool = True):
        from mgpo.engine import Engine, EngineConfig
        from .forced import ForcedBackend

        backend = ForcedBackend(self.loaded.model, self.loaded.processor, script=script,
                                answer_tokens=answer_tokens, kv_reuse=kv_reuse)
        cfg = EngineConfig(min_pixels=self.cfg.min_pixels, max_pixels=self.cfg.max_pixels, max_new_tokens=4096)
        return Engine(backend, cfg, name="bench"), backend

    def baseline(self):
        from .baseline import Baseline

        return Baseline(self.loaded.model, self.loaded.processor)

    def timed(self, fn, long: bool = False):
        return timed(fn, self.device, self.cfg.long_reps if long else self.cfg.reps)

    # -- cases --

    def decode_rate(self, hf, ids, pv, grid, new: int, batch: int = 1, long: bool = False) -> tuple[float, float]:
        """Baseline (tok/s after the prefill, prefill seconds): medians over the timed runs."""
        runs = []

        def once():
            t = time.perf_counter()
            hf.prefill_decode(ids, pv, grid, new, batch=batch)
            sync(self.device)
            runs.append((time.perf_counter() - t, hf.prefill_seconds))

        self.timed(once, long=long)
        timed_runs = runs[1:]                       # the first was the warm-up
        rate = statistics.median(batch * (new - 1) / (total - prefill) for total, prefill in timed_runs)
        return rate, statistics.median(prefill for _, prefill in timed_runs)

    def case_decode(self) -> None:
        c = self.cfg
        eng, _ = self.engine(answer_tokens=c.decode_tokens + 1)
        rates = []

        def once():
            done = _finished(_drain(eng.stream(_requests(self.image, 1), mode="direct")))[0]
            rates.append((done.new_tokens - 1) / done.decode_seconds)     # decode steps after the prefill
            return done

        wall, done = self.timed(once)
        project = statistics.median(rates[1:])
        hf = self.baseline()
        pv, grid, n = hf.encode(self.image, c.min_pixels, c.max_pixels)
        ids = hf.prompt(done.prefill_tokens, n)
        baseline, t_prefill = self.decode_rate(hf, ids, pv, grid, c.decode_tokens + 1)
        floor = 1 / self.floors.step(1, done.prefill_tokens + c.decode_tokens // 2)
        self.rows.append(Row("single-stream decode", "tok/s", project, baseline, floor, 200.0,
                             note=f"{done.prefill_tokens}-token prompt, {c.decode_tokens} tok"))
        self.cases["decode"] = {"engine_wall_s": wall, "turn": _turn(done), "baseline_prefill_s": t_prefill}

    def case_two_turn(self) -> None:
        c = self.cfg
        runs = {}
        for kv in (True, False):
            eng, _ = self.engine(script=self.turn1_script(), answer_tokens=c.answer_tokens, kv_reuse=kv)
            wall, events = self.timed(lambda: _drain(eng.stream(_requests(self.image, 1))))
            crop = [e for e in events if e.type == "crop"]
            final = [e for e in events if e.type == "final"]
            if not crop or final[0].turns != 2:
                boxes = [e for e in events if e.type == "box"]
                raise RuntimeError(f"the forced box did not give a crop turn: {boxes[0].reason if boxes else 'no box'}")
            runs[kv] = (wall, _finished(events), crop[0])
        wall, (t1, t2), crop = runs[True]
        # the baseline: the same token counts (turn 1's prompt; its answer + the turn-2 prompt)
        hf = self.baseline()
        pv1, g1, n1 = hf.encode(self.image, c.min_pixels, c.max_pixels)
        pv2, g2, n2 = hf.encode(self.image.crop(self.crop_region()), c.min_pixels, c.max_pixels)
        ids1 = hf.prompt(t1.prefill_tokens, n1)
        text2 = max(2, t2.prefill_tokens - n2 - 2)
        ids_full = _cat(ids1, hf.sequence([t1.new_tokens + text2 // 2, ("img", n2), text2 - text2 // 2]))
        pv_both, g_both = _cat(pv1, pv2, dim=0), _cat(g1, g2, dim=0)
        t_turn1, _ = self.timed(lambda: hf.prefill_decode(ids1, pv1, g1, t1.new_tokens))
        t_turn2, _ = self.timed(lambda: hf.prefill_decode(ids_full, pv_both, g_both, t2.new_tokens))
        pos_full = hf.positions(ids_full, g_both)
        t_reuse, _ = self.timed(lambda: hf.two_turn_reuse(ids1, pv1, g1, t1.new_tokens, ids_full, pv2, g2,
                                                          t2.new_tokens, pos_full))
        f = self.floors
        floor = (f.turn(t1.prefill_tokens, t1.visual_tokens, 0, t1.new_tokens)
                 + f.turn(t2.prefill_tokens, t2.visual_tokens, t1.prefill_tokens + t1.new_tokens, t2.new_tokens))
        note = f"overview {t1.visual_tokens} + {t1.new_tokens} tok, crop {t2.visual_tokens} + {t2.new_tokens} tok"
        self.rows.append(Row("4K two turns, KV reuse", "s", wall, t_reuse, floor, 0.6, higher=False, note=note))
        self.rows.append(Row("4K two turns, re-encode", "s", runs[False][0], t_turn1 + t_turn2, floor, 0.6,
                             higher=False))
        self.cases["two_turn"] = {
            "engine_kv_reuse_s": wall, "engine_reencode_s": runs[False][0],
            "turn1": _turn(t1), "turn2": _turn(t2), "turn2_reencode": _turn(runs[False][1][1]),
            "crop_size": list(crop.crop_size), "crop_fed_size": list(crop.fed_size),
            "baseline_turn1_s": t_turn1, "baseline_turn2_reencode_s": t_turn2, "baseline_kv_reuse_s": t_reuse,
            "baseline_visual_tokens": [n1, n2], "baseline_tokens": [ids1.shape[1], ids_full.shape[1]]}

    def case_native(self) -> None:
        c = self.cfg
        w, h = c.image_size
        native = max(w * h, c.min_pixels)
        eng, _ = self.engine(answer_tokens=c.answer_tokens)
        wall, events = self.timed(lambda: _drain(eng.stream(_requests(self.image, 1), mode="direct",
                                                            max_pixels=native)))
        done = _finished(events)[0]
        hf = self.baseline()
        pv, grid, n = hf.encode(self.image, c.min_pixels, native)
        ids = hf.prompt(done.prefill_tokens, n)
        t_base, _ = self.timed(lambda: hf.prefill_decode(ids, pv, grid, done.new_tokens))
        floor = self.floors.turn(done.prefill_tokens, done.visual_tokens, 0, done.new_tokens)
        self.rows.append(Row("4K one turn, native resolution", "s", wall, t_base, floor, None, higher=False,
                             note=f"{done.visual_tokens} visual tok + {done.new_tokens} tok"))
        self.cases["native"] = {"engine_s": wall, "turn": _turn(done), "baseline_s": t_base,
                                "baseline_visual_tokens": n}

    def case_group_prefill(self) -> None:
        c = self.cfg
        G = c.group_size
        eng, _ = self.engine(answer_tokens=1)
        prefill = {}
        for g in (1, G):
            runs = []

            def once():
                events = _drain(eng.stream(_requests(self.image, 1), g, mode="direct"))
                runs.append(max(e.prefill_seconds for e in _finished(events)))
                return events

            _, events = self.timed(once)
            prefill[g] = statistics.median(runs[1:])
        done = _finished(events)[0]
        hf = self.baseline()
        pv, grid, n = hf.encode(self.image, c.min_pixels, c.max_pixels)
        ids = hf.prompt(done.prefill_tokens, n)
        base = {g: self.timed(lambda: hf.prefill_decode(ids, pv, grid, 1, batch=g))[0] for g in (1, G)}
        floor = self.floors.prefill(done.prefill_tokens, done.visual_tokens)
        self.rows.append(Row(f"group of {G}, turn-1 prefill", "s", prefill[G], base[G], floor, 1.2 * prefill[1],
                             higher=False, note=f"one sample: engine {prefill[1]:.3g} s, baseline {base[1]:.3g} s"))
        self.rows.append(Row(f"group of {G} ÷ one prefill", "×", prefill[G] / prefill[1], base[G] / base[1], 1.0,
                             1.2, higher=False))
        self.cases["group_prefill"] = {"engine_s": {str(k): v for k, v in prefill.items()},
                                       "baseline_s": {str(k): v for k, v in base.items()},
                                       "prefill_tokens": done.prefill_tokens}

    def case_rollout(self) -> None:
        from mgpo.conversation import Sampling

        c = self.cfg
        eng, _ = self.engine(answer_tokens=c.rollout_tokens)
        sampling = Sampling(temperature=1.0, max_new_tokens=4096, seed=0)
        B = c.rollout_prompts * c.group_size
        runs = []

        def once():
            done = _finished(_drain(eng.stream(_requests(self.image, c.rollout_prompts), c.group_size,
                                               mode="direct", sampling=sampling)))
            decode_s = max(e.decode_seconds for e in done)
            runs.append((sum(e.new_tokens - 1 for e in done) / decode_s, decode_s,
                         max(e.prefill_seconds for e in done)))
            return done

        wall, done = self.timed(once, long=True)
        project = statistics.median(r[0] for r in runs[1:])
        hf = self.baseline()
        pv, grid, n = hf.encode(self.image, c.min_pixels, c.max_pixels)
        ids = hf.prompt(done[0].prefill_tokens, n)
        baseline, t_prefill = self.decode_rate(hf, ids, pv, grid, c.rollout_tokens, batch=B, long=True)
        floor = B / self.floors.step(B, done[0].prefill_tokens + c.rollout_tokens // 2)
        self.rows.append(Row(f"rollout decode, batch {B}", "tok/s", project, baseline, floor, 10_000.0,
                             note=f"{c.rollout_prompts} prompts × {c.group_size}, {c.rollout_tokens} tok, T=1"))
        self.cases["rollout"] = {"engine_wall_s": wall, "engine_decode_s": statistics.median(r[1] for r in runs[1:]),
                                 "engine_prefill_s": statistics.median(r[2] for r in runs[1:]),
                                 "prefill_tokens": done[0].prefill_tokens, "baseline_prefill_s": t_prefill}

    def case_lora(self) -> None:
        """Last: peft injects LoRA layers into the model in place."""
        import torch
        from peft import LoraConfig, get_peft_model

        from train.logprobs import collate, token_logprobs

        from train.config import LM_TARGETS
        from mgpo.conversation import Sampling

        c = self.cfg
        eng, backend = self.engine(answer_tokens=c.rollout_tokens)
        rollouts = eng.rollout(_requests(self.image, 1), c.lora_rows, mode="direct",
                               sampling=Sampling(temperature=1.0, max_new_tokens=4096, seed=1))
        base = self.loaded.model
        base.requires_grad_(False)
        model = get_peft_model(base, LoraConfig(r=c.lora_r, lora_alpha=2 * c.lora_r, lora_dropout=0.0,
                                                target_modules=LM_TARGETS, bias="none"))
        core = model.get_base_model()
        if hasattr(core, "activation_checkpointing_enable"):       # as train.loop.Trainer does
            core.activation_checkpointing_enable({"use_reentrant": False})
        else:
            core.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        core.train()
        params = [p for p in model.parameters() if p.requires_grad]
        batch = collate(rollouts, backend.pad_id, backend.image_token_id, self.device, self.dtype)
        opt = torch.optim.AdamW(params, lr=1e-6)

        def step():
            logp, ent = token_logprobs(core, batch, 1.0, with_entropy=True)
            mask = batch.loss_mask.float()
            loss = -(logp * mask).sum() / mask.sum()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            return loss.detach()

        _reset_peak(self.device)
        t_project, loss = self.timed(step, long=True)
        peak_project = _peak(self.device)
        hf = self.baseline()
        pv, grid, n = hf.encode(self.image, c.min_pixels, c.max_pixels)
        B, T = batch.input_ids.shape
        ids = hf.sequence([40, ("img", n), T - n - 42]).repeat(B, 1)
        opt_base = torch.optim.AdamW(params, lr=1e-6)
        _reset_peak(self.device)
        t_base, _ = self.timed(lambda: hf.lora_step(model, opt_base, ids, pv, grid), long=True)
        peak_base = _peak(self.device)
        core.eval()
        tokens, base_tokens = batch.tokens, B * ids.shape[1]
        f = self.floors
        mfu = lambda tok_s: 100 * 6 * f.m.params * tok_s / f.flops    # noqa: E731
        self.rows.append(Row(f"LoRA r={c.lora_r} update", "tok/s", tokens / t_project, base_tokens / t_base,
                             f.train_tokens_per_s(), None, note=f"{B}×{T} tok, gradient checkpointing"))
        self.rows.append(Row("LoRA update MFU", "%", mfu(tokens / t_project), mfu(base_tokens / t_base), 100.0, 35.0))
        self.cases["lora"] = {"rows": B, "seq": T, "tokens": tokens, "step_s": t_project, "baseline_step_s": t_base,
                              "loss": float(loss), "trainable_params": sum(p.numel() for p in params),
                              "peak_memory_gib": peak_project, "baseline_peak_memory_gib": peak_base}


# ----- helpers ---------------------------------------------------------------------------------

def _requests(image, n: int):
    from mgpo.engine import Request

    return [Request(image, QUESTION, id=str(i)) for i in range(n)]


def _drain(stream) -> list:
    """Every event of an engine stream (its rollouts are not needed here)."""
    return list(stream)


def _finished(events) -> list:
    return [e for e in events if e.type == "turn_finished"]


def _turn(e) -> dict:
    return {k: getattr(e, k) for k in ("new_tokens", "stop", "prefill_tokens", "visual_tokens",
                                        "prefill_seconds", "decode_seconds")}


def _cat(*tensors, dim: int = 1):
    import torch

    return torch.cat(tensors, dim=dim)


def _reset_peak(device) -> None:
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def _peak(device) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**30 if str(device).startswith("cuda") else None


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _fmt(v) -> str:
    if v is None:
        return "—"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.3g}"


def table(rows: list[Row], errors: dict) -> str:
    """Markdown table: case | unit | project | baseline | floor | target | ratio (project vs baseline)."""
    lines = ["| case | unit | project | baseline | floor | target | ratio |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        target = "—"
        if r.target is not None:
            target = ("≥" if r.higher else "≤") + _fmt(r.target)
            got = (r.project / r.target) if r.higher else (r.target / r.project) if r.project else None
            target += " met" if r.met else f" missed ({got:.0%} of target)" if got is not None else ""
        speed = f"{r.speedup:.2f}× {'faster' if r.speedup >= 1 else 'slower'}" if r.speedup else "—"
        case = r.case + (f" ({r.note})" if r.note else "")
        floor = _fmt(r.floor) + (f" ({r.of_floor:.0%})" if r.of_floor else "")
        lines.append(f"| {case} | {r.unit} | {_fmt(r.project)} | {_fmt(r.baseline)} | {floor} | {target} | {speed} |")
    for name, err in errors.items():
        lines.append(f"| {name} | error | {err.replace('|', '/')} | | | | |")
    return "\n".join(lines)


def run(cfg: BenchConfig, device: str | None = None, out=print, save=None) -> dict:
    """Build the model, measure the hardware and every case; return the result dict.
    ``save(result)`` is called after every case with what is known so far (a run cut short by
    a time limit still leaves its finished cases)."""
    import torch
    import transformers

    from mgpo.model import pick_device, pick_dtype

    device = pick_device(device)
    dtype = pick_dtype(device)
    t_start = time.perf_counter()
    result: dict = {"config": asdict(cfg), "env": {
        "torch": torch.__version__, "transformers": transformers.__version__, "device": device, "dtype": str(dtype),
        "gpu": torch.cuda.get_device_name() if device.startswith("cuda") else None}}
    if cfg.shapes == "7b":
        est = EST_7B_SECONDS["build"] + EST_7B_SECONDS["floors"] + sum(EST_7B_SECONDS[c] for c in cfg.cases)
        out(f"estimated run time on an H200: ≈{est} s ({', '.join(f'{c} {EST_7B_SECONDS[c]} s' for c in cfg.cases)})")
        result["estimate_s"] = est
    threads = torch.get_num_threads()
    if device == "cpu" and cfg.shapes == "tiny":
        # tiny ops gain nothing from threads, and threads waiting on each other on shared cores
        # made the dry run 10× slower at random
        torch.set_num_threads(1)
    try:
        return _run(cfg, device, dtype, result, t_start, out, save or (lambda r: None))
    finally:
        torch.set_num_threads(threads)


def _run(cfg: BenchConfig, device: str, dtype, result: dict, t_start: float, out, save) -> dict:
    import torch

    from .shapes import SHAPES, build

    bench = Bench(cfg, device, dtype)
    errors: dict[str, str] = {}
    t = time.perf_counter()
    bench.loaded = build(SHAPES[cfg.shapes], device, dtype, cfg.min_pixels, cfg.max_pixels)
    sync(device)
    m = Model.of(bench.loaded.model)
    result["model"] = {**asdict(m), "build_s": time.perf_counter() - t}
    hw = hardware(device)
    result["hardware"] = hw
    bench.floors = Floors(m, hw["matmul_tflops"] * 1e12, hw["copy_tbps"] * 1e12)
    out(f"{cfg.shapes} shapes on {device} ({dtype}): {m.params / 1e9:.3g} B parameters; matmul "
        f"{hw['matmul_tflops']:.3g} TFLOP/s, copy {hw['copy_tbps']:.3g} TB/s"
        + ("" if hw["meaningful"] else " (CPU: floors and targets are meaningless here)"))
    timings: dict[str, float] = {}
    result.update(rows=[], cases=bench.cases, errors=errors, case_seconds=timings)
    for name in cfg.cases:
        spent = time.perf_counter() - t_start
        if spent > cfg.max_seconds:
            errors[name] = f"skipped: {spent:.0f} s spent, over --max-seconds {cfg.max_seconds:.0f}"
            out(f"{name}: {errors[name]}")
            continue
        t = time.perf_counter()
        n_rows = len(bench.rows)
        try:
            getattr(bench, f"case_{name}")()
            bad = [r.case for r in bench.rows[n_rows:]
                   if not all(_finite(v) for v in (r.project, r.baseline) + ((r.floor,) if r.floor is not None else ()))]
            if bad:
                raise RuntimeError(f"non-finite result in {bad}")
        except Exception as e:  # noqa: BLE001 — one broken case must not cost the others' numbers
            del bench.rows[n_rows:]
            errors[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
            traceback.print_exc(file=sys.stderr)
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
        timings[name] = time.perf_counter() - t
        out(f"{name}: {'error: ' + errors[name] if name in errors else 'done'} in {timings[name]:.1f} s")
        result.update(rows=[r.to_dict() for r in bench.rows], total_seconds=time.perf_counter() - t_start)
        save(result)
    if "two_turn" in bench.cases and "native" in bench.cases:
        tt, nat = bench.cases["two_turn"], bench.cases["native"]
        bench.rows.append(Row("two turns ÷ one native pass", "×", tt["engine_kv_reuse_s"] / nat["engine_s"],
                              tt["baseline_kv_reuse_s"] / nat["baseline_s"], None, 0.5, higher=False))
    result.update(rows=[r.to_dict() for r in bench.rows], total_seconds=time.perf_counter() - t_start)
    save(result)
    out(table(bench.rows, errors))
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", choices=("7b", "tiny", "playground"),
                   help="default: 7b with CUDA, tiny without; playground: the playground model's size (CPU)")
    p.add_argument("--json", help="write the result here (default: $OUT/bench.json when $OUT is set)")
    p.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES), metavar="CASE",
                   help=f"which cases to run (default all: {' '.join(CASES)})")
    p.add_argument("--reps", type=int, help="timed repetitions per case (after one warm-up)")
    p.add_argument("--max-seconds", type=float, help="skip cases that would start after this many seconds")
    p.add_argument("--device", help="cuda | cpu (default: cuda when available)")
    args = p.parse_args(argv)

    import os

    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    cuda = (args.device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    shapes = args.shapes or ("7b" if cuda else "tiny")
    if shapes == "7b" and not cuda:
        print("error: --shapes 7b needs a GPU (about 40 GB); on CPU run --shapes tiny (a dry run)", file=sys.stderr)
        return 2
    kw = {"cases": tuple(args.cases)}
    if args.reps is not None:
        if args.reps < 1:
            print("error: --reps must be at least 1", file=sys.stderr)
            return 2
        kw.update(reps=args.reps, long_reps=min(args.reps, 2))
    if args.max_seconds is not None:
        kw["max_seconds"] = args.max_seconds
    # the order of CASES: lora last (it injects LoRA layers into the model)
    kw["cases"] = tuple(c for c in CASES if c in kw["cases"])
    cfg = {"7b": BenchConfig, "tiny": BenchConfig.tiny, "playground": BenchConfig.playground}[shapes](**kw)
    path = args.json or (str(Path(os.environ["OUT"]) / "bench.json") if os.environ.get("OUT") else None)

    def save(result: dict) -> None:
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(json.dumps(result, indent=1, default=str) + "\n")

    try:
        result = run(cfg, args.device, out=lambda line: print(line, flush=True), save=save)
    except Exception as e:  # noqa: BLE001 — building the model or measuring the hardware failed
        traceback.print_exc(file=sys.stderr)
        save({"config": asdict(cfg), "errors": {"setup": f"{type(e).__name__}: {e}"}})
        print(f"error: the benchmark could not start: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    if path:
        print(f"wrote {path}")
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
