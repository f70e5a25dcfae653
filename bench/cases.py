"""The benchmark's cases (:data:`bench.speed.CASES`), each timed twice — the project's code and
:class:`bench.baseline.Baseline`, plain transformers — on the model :mod:`bench.shapes` builds;
:mod:`bench.speed` runs them and writes the report (:mod:`bench.report`)."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .hardware import Floors, sync, timed
from .report import Row

if TYPE_CHECKING:
    from .speed import BenchConfig

QUESTION = "What is written on the sign?"
PROSE = "The question asks about a small detail, so I look for the region that shows it. "


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
