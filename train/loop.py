"""The training loop: rollouts from the engine → rewards → GRPO update of a LoRA adapter.

One step (per process):

1. draw ``prompts_per_step`` items; ``engine.rollout(requests, group_size=G, sampling=T 1.0)``
   — the engine encodes each prompt once and shares that prefill across its G samples, runs
   turn 1 (box), crops, runs turn 2 (answer), and returns token ids, the loss mask, sampling
   log-probs, M-RoPE positions and images per sample;
2. rewards (:mod:`train.rewards`) → group-normalised advantages (:mod:`train.grpo`);
3. for each of ``mini_batches`` slices of the groups: micro-batches of ``micro_batch`` rollouts
   through the training forward (:mod:`train.logprobs`) with grad, the reference log-probs with
   the adapter disabled (no grad), the clipped loss, backward; then the LoRA gradients are
   averaged over processes (one all-reduce), clipped, and AdamW steps — unless the gradient
   norm is NaN or inf: then the update is skipped (gradients zeroed, the adapter and the
   optimizer state left as they were), counted in the metrics, and after ``max_nonfinite``
   skipped updates in a row the run stops with :class:`NonFiniteError`. The norm is taken after
   the all-reduce, so every process makes the same decision. Weights that are not finite are
   never saved or pushed.

Processes (``accelerate launch``) each roll out their own prompts; nothing but the LoRA
gradients, the token count and the logged metrics crosses processes (:mod:`train.processes`),
so the model is never wrapped in DDP (the engine calls sub-modules directly, which a DDP wrapper
would not see).
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
import warnings
from pathlib import Path

import torch

from mgpo import geometry
from mgpo.engine import Engine, InputError, Request
from mgpo.images import ImageError, load_image
from mgpo.conversation import Sampling

from . import checkpoint as ckpt
from . import processes
from .config import VISION_TARGETS, ConfigError, TrainConfig
from .data import Item, Sampler, load_items
from .grpo import group_advantages, policy_loss
from .logprobs import collate, token_logprobs
from .metrics import MetricsLog, plot
from .rewards import RewardSpec
from .rollouts import completion, rollout_metrics, sample_rows


def _log(msg: str) -> None:
    print(f"[train] {msg}", file=sys.stderr, flush=True)


class NonFiniteError(RuntimeError):
    """Training stopped on NaN/inf: too many skipped updates in a row, or weights not fit to save."""


class Trainer:
    """Holds the model, optimizer, data and engine of one run; :meth:`run` trains.

    ``backend_cls`` builds the engine's backend (default :class:`mgpo.generation.QwenBackend`);
    ``on_step(step, metrics)`` is called after every step (tests interrupt a run with it);
    ``loaded`` (a :class:`mgpo.model.Loaded`) replaces loading ``cfg.model`` (an in-memory model).
    """

    def __init__(self, cfg: TrainConfig, *, backend_cls=None, on_step=None, loaded=None):
        from accelerate import Accelerator
        from peft import LoraConfig, get_peft_model

        from mgpo.generation import QwenBackend
        from mgpo.model import load_model, quiet_peft

        self.cfg = cfg.check()
        self.on_step = on_step
        # no CUDA: CPU processes (gloo when launched as several, e.g. `accelerate launch --multi_gpu`)
        self.acc = Accelerator(cpu=not torch.cuda.is_available())
        self.rank, self.world = self.acc.process_index, self.acc.num_processes
        self.main = self.acc.is_main_process
        self.out = Path(cfg.output_dir)       # created by the first write (metrics, checkpoint)
        if not cfg.resume and ckpt.checkpoints(self.out):
            raise ConfigError(f"{self.out} already holds checkpoints of a run: pass --resume to continue it, "
                              "or choose a new --output-dir")
        torch.manual_seed(cfg.seed)     # the same LoRA initialisation on every process

        # data first: a typo in the path should not cost a model load
        self.items, self.report = load_items(cfg.data, cfg.data_format, image_root=cfg.image_root,
                                             split=cfg.hf_split, columns=cfg.columns, max_records=cfg.max_records)
        if self.main:
            _log(self.report.summary())
        self.sampler = Sampler(len(self.items), cfg.seed, self.rank, self.world)
        self.skipped: dict[str, list[str]] = {}       # rule → ids of items skipped while training
        self.rewards = RewardSpec(dict(cfg.rewards))

        if loaded is None:
            loaded = load_model(cfg.model, device=str(self.acc.device), dtype=cfg.dtype or None,
                                min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels)
        self.dtype = loaded.dtype
        base = loaded.model
        base.requires_grad_(False)
        targets = cfg.lora_targets + (f"|{VISION_TARGETS}" if cfg.train_vision else "")
        self.lora_config = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                      target_modules=targets, bias="none")
        try:
            with quiet_peft():
                self.model = get_peft_model(base, self.lora_config)
        except ValueError as e:             # peft: the target regex matched nothing
            reason = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
            raise ConfigError(f"LoRA targets {targets!r} do not fit {cfg.model}: {reason}") from None
        # the Qwen2_5_VLForConditionalGeneration with LoRA layers injected in place
        self.core = self.model.get_base_model()
        if cfg.gradient_checkpointing:
            if hasattr(self.core, "activation_checkpointing_enable"):      # transformers ≥ 5.2x
                self.core.activation_checkpointing_enable({"use_reentrant": False})
            else:
                self.core.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        if not self.params:
            raise ConfigError(f"the LoRA target regex {targets!r} matched no module of {cfg.model}")
        processes.broadcast_from_first(self.params, self.world)   # every replica starts from process 0's weights
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        total = cfg.steps * cfg.mini_batches
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda k: cfg.lr_factor(k, total))

        backend_cls = backend_cls or QwenBackend
        self.backend = backend_cls(self.core, loaded.processor)
        self.engine = Engine(self.backend, cfg.engine_config(), name=cfg.model)
        self.processor = loaded.processor
        self.step = 0
        self.last_metrics: dict = {}
        self.step_samples: list[dict] = []    # this step's samples.jsonl rows (cfg.log_samples)
        self.nonfinite_in_a_row = 0           # optimizer updates skipped in a row (NaN/inf gradient norm)
        self.nonfinite_total = 0
        if self.main and cfg.mini_batches == 1:
            _log("mini_batches = 1: one update per rollout batch, so the update is on-policy (ratio 1, "
                 "clipping inert); the paper updates 4 times per batch (--mini-batches 4)")

    # ----- data --------------------------------------------------------------------------------

    def _draw(self, n: int) -> list[Item]:
        """The next ``n`` usable items, images opened; unusable images are skipped and counted
        (``self.skipped``: rule → item ids), so one bad file never stops a run."""
        out: list[Item] = []
        for _ in range(n + len(self.items)):
            if len(out) == n:
                return out
            item = self.items[self.sampler.next()]
            try:
                image = load_image(item.image)
                geometry.model_frame(image.size, self.cfg.min_pixels, self.cfg.max_pixels)
            except ImageError as e:
                self._skip("unreadable image", item, e)
                continue
            except ValueError as e:                    # an aspect ratio Qwen2.5-VL refuses
                self._skip("image shape", item, e)
                continue
            out.append(dataclasses.replace(item, image=image))
        if len(out) == n:
            return out
        raise RuntimeError(f"not enough usable images left in the data (skipped: {self.skipped})")

    def _skip(self, rule: str, item: Item, error: Exception) -> None:
        ids = self.skipped.setdefault(rule, [])
        if item.id not in ids:
            ids.append(item.id)
            _log(f"skipping {item.id} ({rule}): {error}")

    # ----- one step ------------------------------------------------------------------------------

    def _sampling(self, step: int) -> Sampling:
        # one seed per (run, step, process): a resumed run samples exactly what the first would have
        seed = (self.cfg.seed * 1_000_003 + step * 1_009 + self.rank) % (2**63)
        return Sampling(temperature=self.cfg.temperature, top_p=self.cfg.top_p,
                        max_new_tokens=self.cfg.max_new_tokens, seed=seed)

    def rollout(self, step: int):
        cfg = self.cfg
        items = self._draw(cfg.prompts_per_step)
        requests = [Request(it.image, it.question, it.choices, it.answer, it.id) for it in items]
        self.model.eval()
        t0 = time.perf_counter()
        try:
            rollouts = self.engine.rollout(requests, group_size=cfg.group_size, mode=cfg.mode,
                                           sampling=self._sampling(step))
        except InputError as e:
            raise RuntimeError(f"the engine refused a batch at step {step}: {e}") from None
        return items, rollouts, time.perf_counter() - t0

    def _forward(self, batch, want_ref: bool):
        T = self.cfg.temperature
        ref = None
        if want_ref:
            with torch.no_grad(), self.model.disable_adapter():
                ref, _ = token_logprobs(self.core, batch, T, with_entropy=False)
        logp, ent = token_logprobs(self.core, batch, T, with_entropy=True)
        return logp, ent, ref

    def _apply_update(self, step: int, m: int) -> float:
        """Clip and step on the (all-reduced) gradients, or skip the update when their norm is not
        finite. Returns the norm; the scheduler advances either way (its count is updates tried)."""
        cfg = self.cfg
        norm = float(torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip).item())
        if math.isfinite(norm):
            self.optimizer.step()
            self.nonfinite_in_a_row = 0
        else:
            self.nonfinite_in_a_row += 1
            self.nonfinite_total += 1
            if self.main:
                _log(f"step {step}, update {m + 1}/{cfg.mini_batches}: gradient norm {norm}; update skipped, "
                     f"the adapter is unchanged ({self.nonfinite_in_a_row} in a row, {self.nonfinite_total} in all)")
        with warnings.catch_warnings():   # torch warns when the schedule moves before any optimizer step
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.nonfinite_in_a_row >= cfg.max_nonfinite:
            last = ckpt.latest(self.out)
            raise NonFiniteError(
                f"{self.nonfinite_in_a_row} optimizer updates in a row had a NaN/inf gradient norm (the last at "
                f"step {step}); stopping. None of them touched the adapter: "
                + (f"{last} holds the newest checkpoint. " if last else "no checkpoint was written yet. ")
                + "A resumed run replays the same seeded steps: lower --lr or --grad-clip, train in float32, "
                "or check the data before resuming.")
        return norm

    def update(self, items, rollouts, step: int = 0) -> dict:
        """Rewards, advantages and ``mini_batches`` optimizer updates on one step's rollouts."""
        cfg = self.cfg
        G = cfg.group_size
        comps = [completion(r, len(items[r.request].choices or ()), cfg.max_new_tokens) for r in rollouts]
        scored = [self.rewards.score(c, items[r.request].answer) for c, r in zip(comps, rollouts)]
        rewards = torch.tensor([s[0] for s in scored], dtype=torch.float32)
        adv = group_advantages(rewards, G, cfg.adv_eps, cfg.scale_advantages)
        if cfg.log_samples and self.main and step % cfg.log_samples == 0:   # only the main process writes them
            self.step_samples = sample_rows(items, rollouts, scored, adv)
        pad_id = getattr(self.backend, "pad_id", 0)
        image_id = self.core.config.image_token_id

        recompute = cfg.old_logprobs == "recompute" or (cfg.old_logprobs == "auto" and self.dtype != torch.float32)
        if recompute:
            self.model.eval()
            olds = []                                                   # per rollout, (T_i,)
            with torch.no_grad():
                for k in range(0, len(rollouts), cfg.micro_batch):
                    chunk = rollouts[k:k + cfg.micro_batch]
                    b = collate(chunk, pad_id, image_id, self.acc.device, self.dtype)
                    lp = token_logprobs(self.core, b, cfg.temperature, with_entropy=False)[0].cpu()
                    olds += [lp[j, :len(r.token_ids)] for j, r in enumerate(chunk)]
        self.model.train()
        per_mb = len(rollouts) // cfg.mini_batches                      # whole groups per mini-batch
        stats = {"loss": 0.0, "pg_loss": 0.0, "kl": 0.0, "entropy": 0.0, "clip_frac": 0.0, "dual_clip_frac": 0.0,
                 "ratio_max": 0.0, "ratio_min": math.inf}
        tokens_seen = 0
        grad_norms, skipped = [], 0
        t0 = time.perf_counter()
        for m in range(cfg.mini_batches):
            mb = list(range(m * per_mb, (m + 1) * per_mb))
            local = sum(sum(rollouts[i].loss_mask) for i in mb)
            # token-mean over the whole mini-batch on all processes: gradients are averaged over
            # the W processes afterwards, so each divides its token sum by (global tokens / W)
            denom = max(processes.sum_over(self.acc, self.world, float(local)) / self.world, 1.0)
            for k in range(0, len(mb), cfg.micro_batch):
                idx = mb[k:k + cfg.micro_batch]
                batch = collate([rollouts[i] for i in idx], pad_id, image_id, self.acc.device, self.dtype)
                if recompute:
                    old = torch.zeros_like(batch.old_logprobs)
                    for j, i in enumerate(idx):
                        old[j, :len(olds[i])] = olds[i].to(old.device)
                else:
                    old = batch.old_logprobs
                logp, ent, ref = self._forward(batch, want_ref=cfg.kl_coef > 0)
                parts = policy_loss(logp, old, adv[idx].to(logp.device), batch.loss_mask, ref=ref, entropy=ent,
                                    clip_low=cfg.clip_low, clip_high=cfg.clip_high, kl_coef=cfg.kl_coef,
                                    entropy_coef=cfg.entropy_coef, denom=denom, dual_clip=cfg.dual_clip)
                parts.loss.backward()
                w = parts.tokens
                tokens_seen += batch.tokens
                stats["loss"] += float(parts.loss.item())
                for key, val in (("pg_loss", parts.pg), ("kl", parts.kl), ("entropy", parts.entropy),
                                 ("clip_frac", parts.clip_frac), ("dual_clip_frac", parts.dual_clip_frac)):
                    stats[key] += val * w
                stats["ratio_max"] = max(stats["ratio_max"], parts.ratio_max)
                stats["ratio_min"] = min(stats["ratio_min"], parts.ratio_min)
            processes.allreduce_grads(self.params, self.world)
            norm = self._apply_update(step, m)
            if math.isfinite(norm):
                grad_norms.append(norm)
            else:
                skipped += 1
        train_s = time.perf_counter() - t0
        n_policy = max(sum(sum(r.loss_mask) for r in rollouts), 1)
        for key in ("pg_loss", "kl", "entropy", "clip_frac", "dual_clip_frac"):
            stats[key] /= n_policy
        stats["loss"] /= cfg.mini_batches
        if not math.isfinite(stats["ratio_min"]):
            stats["ratio_min"] = 0.0

        return {**rollout_metrics(rollouts, items, comps, scored, rewards, G), **stats,
                "grad_norm": sum(grad_norms) / len(grad_norms) if grad_norms else math.nan,
                "skipped_updates": skipped, "lr": self.scheduler.get_last_lr()[0],
                "train_seconds": train_s, "tokens_per_s": tokens_seen / train_s if train_s > 0 else 0.0,
                "skipped_items": sum(len(v) for v in self.skipped.values())}

    # ----- checkpoints and pushes -----------------------------------------------------------------

    def _nonfinite(self) -> list[str]:
        """Names of the trained tensors holding NaN/inf on this process."""
        return [n for n, p in self.model.named_parameters() if p.requires_grad and not torch.isfinite(p).all()]

    def _check_finite(self, what: str) -> None:
        """Refuse to ``what`` (save, push) LoRA weights holding NaN/inf; decided on all processes
        together (the count of bad tensors is summed), so none waits on another."""
        bad = self._nonfinite()
        if processes.sum_over(self.acc, self.world, float(len(bad))) > 0:
            where = f" (e.g. {bad[0]})" if bad else " on another process"
            raise NonFiniteError(f"refusing to {what}: LoRA weights hold NaN/inf{where}. The newest checkpoint in "
                                 f"{self.out} and any pushed adapter are left as they were.")

    def save(self, step: int) -> Path | None:
        self._check_finite(f"save the step-{step} checkpoint")
        tmp = ckpt.tmp_dir(self.out, step)
        checksums = processes.replica_checksums(self.acc, self.world, self.params)
        if self.main:
            ckpt.begin(self.out, step)
            ckpt.write_main(tmp, step, self.model, self.optimizer, self.scheduler,
                            {"config": self.cfg.to_dict(), "metrics": self.last_metrics, "world": self.world,
                             "replica_checksums": checksums})
        self.acc.wait_for_everyone()
        ckpt.write_rank(tmp, self.rank, self.sampler.state())
        self.acc.wait_for_everyone()
        path = ckpt.commit(self.out, step, self.cfg.keep_last) if self.main else None
        self.acc.wait_for_everyone()
        return path

    def resume(self) -> int:
        path = ckpt.latest(self.out)
        if path is None:
            if self.main:
                _log(f"--resume: no checkpoint in {self.out}; starting from step 0")
            return 0
        state = ckpt.load(path, self.rank, self.model, self.optimizer, self.scheduler)
        if state.get("world", self.world) != self.world:
            raise RuntimeError(f"{path} was written by {state.get('world')} processes; this run has {self.world}")
        self.sampler.load_state(state["sampler"])
        self.last_metrics = state.get("metrics", {})
        if self.main:
            _log(f"resumed from {path} (step {state['step']})")
        return int(state["step"])

    def push(self, folder: Path, step: int, extra_files: tuple = ()) -> str | None:
        """Push an adapter folder with its model card; a failure is reported, the folder kept."""
        if not (self.cfg.push_to_hub and self.main):
            return None
        bad = self._nonfinite()
        if bad:
            _log(f"not pushing step {step}: LoRA weights hold NaN/inf (e.g. {bad[0]}); the Hub repo is unchanged")
            return None
        try:
            from .hub import PushError, push_adapter
        except ImportError as e:
            _log(f"cannot push: train/hub.py is not available ({e}); the adapter stays in {folder}")
            return None
        metrics = {k: v for k, v in self.last_metrics.items()
                   if isinstance(v, (int, float)) and math.isfinite(v)}
        card = {"base_model": self.cfg.model, "config": self.cfg.to_dict(), "metrics": metrics, "step": step,
                "prompts": "mgpo", "mode": self.cfg.mode,
                "data": {"source": self.cfg.data, "records": len(self.items),
                         "skipped while loading": self.report.n_skipped}}
        try:
            url = push_adapter(str(folder), self.cfg.push_to_hub, card=card, private=self.cfg.hub_private,
                               commit_message=f"MGPO LoRA adapter, step {step}",
                               extra_files=[str(f) for f in extra_files if Path(f).is_file()])
        except PushError as e:                      # its message says what failed and that the adapter is intact
            _log(str(e))
            return None
        except ValueError as e:                     # a model card the hub module refused
            _log(f"push to {self.cfg.push_to_hub} failed: {e}. The adapter is kept in {folder}")
            return None
        _log(f"pushed step {step} to {url}")
        return url

    # ----- the run --------------------------------------------------------------------------------

    def run(self) -> dict:
        cfg = self.cfg
        start = self.resume() if cfg.resume else 0
        log = MetricsLog(self.out, cfg.tensorboard, resume_step=start if cfg.resume else None) if self.main else None
        bar = None
        if self.main and cfg.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=cfg.steps, initial=start, desc="mgpo", dynamic_ncols=True)
        try:
            for step in range(start + 1, cfg.steps + 1):
                t0 = time.perf_counter()
                items, rollouts, roll_s = self.rollout(step)
                metrics = self.update(items, rollouts, step)
                metrics["rollout_seconds"] = roll_s
                metrics["step_seconds"] = time.perf_counter() - t0
                metrics["samples"] = len(rollouts)
                metrics = processes.average_metrics(self.acc, self.world, metrics)
                self.step, self.last_metrics = step, metrics
                if log is not None:
                    log.log(step, metrics)
                    if self.step_samples:
                        log.samples(step, self.step_samples)
                self.step_samples = []
                if bar is not None:
                    bar.update(1)
                    extra = {"skipped": self.nonfinite_total} if self.nonfinite_total else {}
                    bar.set_postfix(reward=f"{metrics['reward']:.3f}", kl=f"{metrics['kl']:.4f}",
                                    box=f"{metrics['valid_box']:.2f}", **extra)
                if self.on_step is not None:
                    self.on_step(step, metrics)
                if (cfg.save_every and step % cfg.save_every == 0) or step == cfg.steps:
                    path = self.save(step)
                    if path is not None and cfg.push_every and step % cfg.push_every == 0 and step != cfg.steps:
                        self.push(path / "adapter", step)
        finally:
            if bar is not None:
                bar.close()
            if log is not None:
                log.close()
        final = self.out / "adapter"
        self._check_finite("save the final adapter")
        if self.main:
            self.model.save_pretrained(str(final), save_embedding_layers=False)
            (self.out / "train_config.yaml").write_text(cfg.to_yaml())
            if cfg.plot:
                plot(self.out / "metrics.jsonl", self.out / "curves.png")
        self.acc.wait_for_everyone()
        url = self.push(final, self.step, extra_files=tuple(self.out / n for n in
                                                            ("curves.png", "metrics.jsonl", "train_config.yaml")))
        return {"step": self.step, "adapter": str(final), "metrics": self.last_metrics, "url": url, "main": self.main}


def train(cfg: TrainConfig, **kwargs) -> dict:
    """Build a :class:`Trainer` and run it."""
    return Trainer(cfg, **kwargs).run()
