"""The trainer's configuration: one dataclass with commented defaults.

One override path: defaults ← a YAML file (``--config cfg.yaml``, keys = field names) ← command
line flags (``--group-size 8`` for ``group_size``). Unknown YAML keys and bad values are errors
with a message, never tracebacks.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import io
import math
import tokenize
import typing
from dataclasses import dataclass, field
from pathlib import Path

from mgpo import geometry

DEFAULT_MODEL = "Qwen/Qwen2.5-VL-7B-Instruct"
# LoRA on the language model only: the vision blocks also have gate/up/down_proj.
LM_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
VISION_TARGETS = r".*visual\.blocks.*\.(qkv|proj|gate_proj|up_proj|down_proj)"
LR_SCHEDULES = ("constant", "cosine", "linear")   # after warmup; cosine and linear end at 0


class ConfigError(ValueError):
    """A configuration that cannot run, with what to change."""


@dataclass
class TrainConfig:
    # --- what to train on -----------------------------------------------------------------
    model: str = DEFAULT_MODEL          # Hub id or local directory of a Qwen2.5-VL checkpoint
    data: str = ""                      # JSONL file, MME-RealWorld JSON, or HF dataset (name or saved dir)
    data_format: str = "auto"           # auto | jsonl | mme | hf
    image_root: str = ""                # MME-RealWorld / HF: folder image paths are relative to ("" = next to the file)
    hf_split: str = "train"             # HF datasets: the split
    columns: dict = field(default_factory=dict)   # HF datasets: {our field: their column}, e.g. {"question": "query"}
    max_records: int = 0                # 0 = all; else the first N usable records
    output_dir: str = "runs/mgpo-lora"

    # --- rollouts (the engine; the paper's settings) --------------------------------------
    mode: str = "mgpo"                  # mgpo (two turns) | direct (the single-turn GRPO baseline)
    max_turns: int = 2                  # the paper trains with 2
    group_size: int = 8                 # G samples per prompt (paper: rollout.n 8)
    prompts_per_step: int = 8           # prompts per optimizer step PER PROCESS (paper: 512 in total)
    temperature: float = 1.0            # the paper samples at 1.0, top_p 1.0
    top_p: float = 1.0
    max_new_tokens: int = 1024          # per turn (the paper allows 8192)
    min_pixels: int = geometry.MIN_PIXELS   # 256·28·28: small crops are enlarged to this
    max_pixels: int = geometry.MAX_PIXELS   # 1280·28·28: the overview's budget
    box_rule: str = "paper"             # paper | clamp | pad | clamp+pad (mgpo.geometry)

    # --- GRPO (mgpo/train/grpo.py) ---------------------------------------------------------
    rewards: dict = field(default_factory=lambda: {"accuracy": 1.0})  # name → weight (train.rewards)
    clip_low: float = 0.2               # PPO clip: ratio ∈ [1 − clip_low, 1 + clip_high]
    clip_high: float = 0.2
    kl_coef: float = 0.01               # β on the k3 KL to the base model (adapter disabled); 0 = skip the ref pass
    entropy_coef: float = 0.001         # the paper's entropy bonus coefficient
    scale_advantages: bool = True       # divide by the group std (False: Dr. GRPO's mean-centring)
    adv_eps: float = 1e-6
    mini_batches: int = 0               # optimizer updates per step, one PPO epoch over the rollouts split
                                        # into whole groups. 0 = the paper's 4 (512 prompts, updates on 128)
                                        # when prompts_per_step splits into 4, else the most of 3, 2, 1 that
                                        # split it. With 1 the update is on-policy: the ratio is exactly 1
                                        # and clipping never acts (plain policy gradient + KL + entropy)
    dual_clip: float = 0.0              # verl's dual clip c (3.0 there): a token with a negative advantage
                                        # loses at most −A·c however far its ratio grew; 0 = off
    micro_batch: int = 4                # rollouts per training forward (gradient accumulation inside a mini-batch)
    old_logprobs: str = "auto"          # rollout: the engine's sampling log-probs (equal in fp32) | recompute: a
                                        # no-grad training forward (verl's way; bf16 rounding differs) | auto: rollout
                                        # in float32, recompute otherwise

    # --- LoRA and optimisation ---------------------------------------------------------------
    lora_r: int = 32
    lora_alpha: int = 64
    lora_dropout: float = 0.0           # 0 keeps the training forward equal to the sampling policy
    lora_targets: str = LM_TARGETS      # regex over module names (peft target_modules)
    train_vision: bool = False          # also put LoRA on the vision tower's blocks
    lr: float = 2e-5                    # LoRA needs a higher lr than the paper's full-model 1e-6
    weight_decay: float = 0.0
    lr_schedule: str = "constant"       # constant | cosine | linear (after warmup)
    warmup_steps: int = 0               # counted in optimizer updates (mini_batches per step), not steps
    grad_clip: float = 1.0              # the paper's
    max_nonfinite: int = 5              # stop after this many optimizer updates in a row with a NaN/inf
                                        # gradient norm (each is skipped: the adapter is left as it was)
    gradient_checkpointing: bool = True
    dtype: str = ""                     # "" = bf16 on GPU, float32 on CPU; or float32 | bfloat16 | float16
    steps: int = 200                    # optimizer steps = steps · mini_batches
    seed: int = 0

    # --- outputs -------------------------------------------------------------------------------
    save_every: int = 50                # checkpoint every N steps (and at the end); 0 = only at the end
    keep_last: int = 3                  # checkpoints kept
    resume: bool = False                # continue from the newest checkpoint in output_dir
    log_samples: int = 0                # every N steps, each rollout's texts, box and reward in samples.jsonl (0 = never)
    tensorboard: bool = True
    progress: bool = True               # tqdm bar (main process)
    plot: bool = True                   # curves.png at the end
    push_to_hub: str = ""               # repo id to push the adapter to ("" = no push)
    push_every: int = 0                 # also push every N steps (0 = only at the end)
    hub_private: bool = False

    def check(self) -> "TrainConfig":
        problems = []
        if not self.data:
            problems.append("--data is required (a JSONL file, MME-RealWorld JSON, or a HF dataset)")
        from mgpo.engine import InputError

        try:           # mode, turns, pixel limits, box rule, max_new_tokens: the engine's rules
            self.engine_config().check(self.mode)
        except InputError as e:
            problems.append(str(e))
        if self.data_format not in ("auto", "jsonl", "mme", "hf"):
            problems.append(f"data_format must be auto, jsonl, mme or hf, not {self.data_format!r}")
        for name in ("group_size", "prompts_per_step", "steps", "micro_batch", "lora_r", "max_nonfinite"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1")
        if self.mini_batches < 0:
            problems.append("mini_batches must be at least 1, or 0 for the paper's 4 where the batch allows it")
        elif self.mini_batches == 0 and self.prompts_per_step >= 1:
            self.mini_batches = next(m for m in (4, 3, 2, 1) if self.prompts_per_step % m == 0)
        elif self.prompts_per_step % self.mini_batches:
            problems.append(f"prompts_per_step ({self.prompts_per_step}) must be a multiple of mini_batches "
                            f"({self.mini_batches}): each update takes whole groups")
        if self.dual_clip and self.dual_clip <= 1.0:
            problems.append("dual_clip must be above 1 (verl uses 3.0), or 0 for off")
        if self.old_logprobs not in ("auto", "rollout", "recompute"):
            problems.append("old_logprobs must be auto, rollout or recompute")
        if self.lr_schedule not in LR_SCHEDULES:
            problems.append(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}")
        if self.keep_last < 1:
            problems.append("keep_last must be at least 1")
        if self.temperature <= 0:
            problems.append("GRPO needs sampled rollouts: temperature must be > 0")
        if self.dtype not in ("", "float32", "bfloat16", "float16"):
            problems.append("dtype must be float32, bfloat16 or float16")
        from .rewards import get
        try:
            for name in self.rewards:
                get(name)
        except ValueError as e:
            problems.append(str(e))
        if problems:
            raise ConfigError("; ".join(problems))
        return self

    def engine_config(self):
        """The rollouts' :class:`~mgpo.engine.EngineConfig`: built from this config's rollout
        fields in this one place, and checked by the engine's own rules in :meth:`check`."""
        from mgpo.engine import EngineConfig

        return EngineConfig(max_turns=self.max_turns, min_pixels=self.min_pixels, max_pixels=self.max_pixels,
                            box_rule=self.box_rule, max_new_tokens=self.max_new_tokens,
                            temperature=self.temperature, top_p=self.top_p)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        """The settings as the YAML file ``--config`` reads back."""
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)

    def lr_factor(self, k: int, total: int) -> float:
        """The learning rate's multiplier at optimizer update ``k`` of ``total``: linear warmup
        over ``warmup_steps`` updates, then ``lr_schedule`` (cosine and linear end at 0)."""
        if self.warmup_steps and k < self.warmup_steps:
            return (k + 1) / self.warmup_steps
        if self.lr_schedule == "constant":
            return 1.0
        frac = (k - self.warmup_steps) / max(1, total - self.warmup_steps)
        if self.lr_schedule == "linear":
            return max(0.0, 1.0 - frac)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, frac)))


def _parse_mapping(text: str) -> dict:
    """``a=1,b=2`` → {"a": "1", "b": "2"}."""
    out = {}
    for part in text.split(","):
        if part.strip():
            k, sep, v = part.partition("=")
            if not sep:
                raise ConfigError(f"expected key=value, got {part!r}")
            out[k.strip()] = v.strip()
    return out


def yes_no(text: str) -> bool:
    """A yes/no setting: 1/yes/true/on or 0/no/false/off, any case (else argparse's type error,
    whose message the command line prints as it is)."""
    value = text.strip().lower()
    if value in ("1", "yes", "true", "on"):
        return True
    if value in ("0", "no", "false", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected yes or no, got {text!r}")


def _coerce(name: str, tp, value):
    origin = typing.get_origin(tp) or tp
    try:
        if origin is bool:
            return yes_no(value) if isinstance(value, str) else bool(value)
        if origin is dict:
            value = _parse_mapping(value) if isinstance(value, str) else dict(value)
            if name == "rewards":
                return {str(k): float(v) if v != "" else 1.0 for k, v in value.items()}
            return {str(k): str(v) for k, v in value.items()}
        return origin(value)
    except (TypeError, ValueError, argparse.ArgumentTypeError):
        raise ConfigError(f"bad value for {name}: {value!r}") from None


def _fields() -> dict[str, type]:
    hints = typing.get_type_hints(TrainConfig)
    return {f.name: hints[f.name] for f in dataclasses.fields(TrainConfig)}


def field_help(cls) -> dict[str, str]:
    """Each field's comment in the dataclass's source (the one on its line and the comment-only
    lines right under it), for the command line's ``--help``: the commented defaults are the
    documentation, written once."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):   # no source (a frozen build): flags without help
        return {}
    names = {f.name for f in dataclasses.fields(cls)}
    out: dict[str, str] = {}
    current, line_of = None, -1
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.NAME and tok.start[1] == 4 and tok.string in names and tok.start[0] != line_of:
            current, line_of = tok.string, tok.start[0]
        elif tok.type == tokenize.NAME and tok.start[1] == 4:
            current = None                       # a method, a decorator: no field
        elif tok.type == tokenize.COMMENT and current and (tok.start[0] == line_of or tok.start[1] > 4):
            if tok.start[0] != line_of and not tok.line[:tok.start[1]].isspace():
                continue
            text = tok.string.lstrip("#").strip()
            if text and not text.startswith("---"):
                out[current] = f"{out[current]} {text}" if current in out else text
        elif tok.type == tokenize.COMMENT and tok.start[1] == 4:
            current = None                       # a section comment starts the next group
    return out


def load_yaml(path: str | Path) -> dict:
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p} must hold a mapping of setting: value")
    known = _fields()
    unknown = [k for k in data if k.replace("-", "_") not in known]
    if unknown:
        raise ConfigError(f"unknown settings in {p}: {', '.join(map(str, unknown))}")
    return {k.replace("-", "_"): _coerce(k, known[k.replace("-", "_")], v) for k, v in data.items()}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m train",
        description="LoRA MGPO (GRPO over the two-turn grounding rollout) on Qwen2.5-VL.",
    )
    p.add_argument("--config", help="YAML file of settings (field names as keys); flags override it")
    helps, defaults = field_help(TrainConfig), TrainConfig()
    for name, tp in _fields().items():
        flag = "--" + name.replace("_", "-")
        text = f"{helps.get(name, '')} (default: {getattr(defaults, name)!r})".strip().replace("%", "%%")
        if tp is bool:
            p.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            kind = "key=value,..." if typing.get_origin(tp) is dict or tp is dict else tp.__name__.upper()
            p.add_argument(flag, dest=name, default=None, metavar=kind, help=text)
    return p


def from_args(argv: list[str] | None = None) -> TrainConfig:
    """Defaults ← ``--config`` YAML ← flags; checked."""
    args = parser().parse_args(argv)
    values: dict = {}
    if args.config:
        values.update(load_yaml(args.config))
    known = _fields()
    for name, tp in known.items():
        v = getattr(args, name)
        if v is not None:
            values[name] = _coerce(name, tp, v)
    return TrainConfig(**values).check()
