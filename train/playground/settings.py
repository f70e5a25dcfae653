"""The playground recipe's settings: the sizes, :class:`RecipeConfig` (one field per flag of
``python -m train.playground``) and the skills curriculum's phases."""

from __future__ import annotations

import re
from dataclasses import dataclass

from mgpo.playground.world import MAX_NEW_TOKENS, N_CARDS, OVERVIEWS, Budgets, check_cards

from ..config import LR_SCHEDULES


# the skills seed range: the text skills' phases read from 0 (PHASE_SPACING apart), the vision probe from VISION_START
VISION_START = 500_000


PHASE_SPACING = 100_000


SIZES: dict[str, dict] = {
    # the CPU recipe (2 cores), the shipped release's: one card per scene in the 280 world; the vision
    # probe, then a base whose only box supervision is referring grounding ("Locate the {name}…"),
    # after the chat template's default system prompt: the board cell with grounding, then grounding
    # with the vision tower training too (VAL referring hit 1.00 by step 800); then reading in MGPO's
    # turn 2 and direct answers after either system prompt, grounding still after the default one
    # (MGPO's turn 1 then writes no box at all); then grounding one example in eight after MGPO's
    # system prompt, a short phase that leaves MGPO's turn 1 boxing about a quarter of its samples.
    # Each phase reads a pool of scenes drawn once. The phases replay the three runs the shipped base
    # came from (docs/playground.md): the second stops its 800-step schedule after 400 steps, and the
    # last two read the scenes those runs read (:start=). Where that balance lies is fragile: with the
    # second phase's schedule run to its end, phase 4 left MGPO's turn 1 boxing nearly always (0.95 of
    # samples at T = 1). RL: 40 steps of 16 prompts × 8 samples at
    # temperature 1, LoRA on the language model and the tower, lr 1e-3 decayed on a cosine, from
    # 0.255 to 0.945 on 200 TEST scenes (docs/playground.md has the run it was measured on).
    "cpu": dict(hidden=256, layers=4, vision_hidden=128, vision_depth=4, vision_steps=60, overview=280,
                curriculum="cell,ground:400:2e-3:0.5:pool=2500 ground:400:1e-3:0.3:vision:pool=2500:schedule=800 "
                           "ground,zoom,answer:400:1e-3:0.3:system=mgpo,default;ground=default:pool=800:start=300000 "
                           "ground,zoom,answer:100:1e-3:0.3:system=mgpo,default;"
                           "ground=default,default,default,default,default,default,default,mgpo:pool=600:start=310000",
                skill_batch=16, skill_prompt="refer", skill_simple=1.0, skill_system="default",
                skill_eval_every=200, skill_eval_scenes=32, train_vision=False, vision_whiten=True, rl_scenes=640,
                rl_steps=40, prompts_per_step=16, group_size=8, rl_lr=1e-3, rl_schedule="cosine",
                rl_temperature=1.0, lora_r=32, rl_vision=True, eval_scenes=200, val_scenes=64),
    # one H200 (not measured: no GPU session yet)
    "gpu": dict(hidden=512, layers=8, vision_hidden=256, vision_depth=6, vision_steps=300, vision_batch=64,
                curriculum="cell:1500:1e-3 cell,ground:2500:5e-4 cell,ground,zoom,answer:2000:5e-4", skill_batch=64,
                skill_prompt="ask,locate,where",
                skill_simple=0.5, skill_system="mgpo", skill_eval_every=1000, skill_eval_scenes=25,
                train_vision=False, vision_whiten=True, rl_scenes=4000, rl_steps=150, prompts_per_step=32,
                group_size=8, rl_lr=5e-4, eval_scenes=200, val_scenes=64),
    # every stage end to end in about a minute (CI): checks the mechanics, not the learning
    "ci": dict(hidden=64, layers=2, vision_hidden=32, vision_depth=2, vocab_size=600, corpus_scenes=8,
               vision_steps=3, vision_batch=4, curriculum="cell,zoom:3:2e-3 cell,ground,zoom,answer:3:1e-3",
               skill_batch=4, skill_eval_every=6, skill_eval_scenes=1, train_vision=True, vision_whiten=True,
               rl_scenes=8, rl_steps=4, prompts_per_step=2, group_size=2, lora_r=8, max_new_tokens=48,
               eval_scenes=2, val_scenes=2, stages="model,skills,rl,eval,ship"),
}


@dataclass
class RecipeConfig:
    out: str = "runs/playground"       # output folder: random/, base/, rl/, eval/, summary.json, release/
    size: str = "cpu"                 # ci | cpu | gpu: the defaults of the fields SIZES sets (flags override them)
    seed: int = 0                     # model init, data order, sampling
    # model (mgpo.tiny.build shapes; 4 attention heads)
    hidden: int = 256                 # text hidden size (a multiple of 8)
    layers: int = 4                   # text decoder layers
    vision_hidden: int = 128          # vision tower hidden size
    vision_depth: int = 4             # vision tower blocks
    embed_std: float = 1.0            # token-embedding init (0: the config's 0.02; see build_model)
    vocab_size: int = 1024            # byte-level BPE learned from the playground's texts (mgpo.playground.skill_examples.corpus)
    corpus_scenes: int = 40           # scenes whose texts the tokenizer learns from
    # base skills, stage 0: the vision tower (a linear probe's targets; see vision.pretrain_vision)
    vision_steps: int = 0             # probe pretraining steps of the vision tower (0: none)
    vision_batch: int = 16            # scenes per probe step
    vision_lr: float = 2e-3           # the probe stage's learning rate
    train_vision: bool = False        # the text skills also train the vision tower (else it stays as stage 0 left it)
    vision_whiten: bool = False       # after the probe, keep only its directions, whitened (see vision.whiten_merger)
    # base skills (supervised)
    skill_steps: int = 60             # optimizer steps (without a curriculum)
    skill_batch: int = 16             # examples per step
    skill_lr: float = 2e-3            # learning rate (without a curriculum)
    skill_prompt: str = "locate,where"   # grounding wordings (mgpo.playground.skill_examples.GROUND_PROMPTS), one per example
    skill_system: str = "mgpo,default"   # system prompts of the skill examples, one drawn per example: mgpo (the
                                      # paper's) | default (the chat template's); "mgpo,default ground=default"
                                      # gives a skill its own; a kind named twice is drawn twice as often
    skill_simple: float = 0.3         # share of clutter-free skill scenes
    skill_buffer: int = 8             # scenes shuffled together in the example stream
    skill_pool: int = 0               # > 0: each phase renders this many scenes once and cycles over their examples,
                                      # reshuffled each pass (a scene costs more to draw than a step of the cpu model
                                      # learns from it); 0: fresh scenes all the way
    skill_eval_every: int = 0         # held-out skill scores every N steps (0: at the end only if > 0 steps)
    skill_eval_scenes: int = 12       # VAL scenes of each held-out skill evaluation
    skills: str = "ground,read,answer,cell"   # mgpo.playground.skill_examples.SKILLS in the mix (without a curriculum)
    curriculum: str = ""              # phases "SKILLS:STEPS:LR[:SIMPLE][:vision]" separated by spaces, e.g.
                                      # "cell:600:2e-3 cell,ground:900:5e-4 ground:300:3e-4:0.3:vision": each phase
                                      # trains its skills (earlier ones kept by naming them again) with its own
                                      # learning rate, share of clutter-free scenes (else skill_simple) and, with
                                      # ":vision", the vision tower too; "" = one phase of skills / skill_steps / skill_lr
    label_first: bool = False         # grounding/cell replies name the card first (mgpo.playground.skill_examples.bbox_json)
    min_cards: int = N_CARDS[0]       # cards per scene, at least (the world's default)
    max_cards: int = N_CARDS[1]       # cards per scene, at most (the world's default)
    overview: int = OVERVIEWS[0]      # the overview's side the world is drawn for: 224 (2048² scenes) or 280 (2560²,
                                      # board slots at 0/70/140/210 — no two rows or columns share a first digit)
    cards: int = 1                    # cards a task scene (RL, eval, the release's world), each its own colour and
                                      # stripes; the question names one (skills: min_cards, max_cards)
    turns: int = 2                    # MGPO turns in RL, eval and the release: 2 = the paper's; 3 = turn 1 boxes a region,
                                      # turn 2 the card inside its enlarged crop, turn 3 answers (the paper's Table 6)
    skills_from: str = ""             # continue the skills stage from this checkpoint ("" = OUT/random)
    skill_start: int = 0              # first scene index in the skills seed range (a continuation reads fresh scenes)
    # RL (train.loop)
    rl_scenes: int = 64               # scenes of the "train" split
    rl_steps: int = 12                # optimizer steps; LoRA snapshots at 1/8 (early), 1/4, 1/2 (middle), 3/4 and the last (late)
    prompts_per_step: int = 4         # scenes per step
    group_size: int = 8               # samples per scene (GRPO's group)
    rl_lr: float = 1e-3               # LoRA learning rate
    rl_schedule: str = "constant"     # constant | cosine (down to 0 at the last step) | linear
    rl_mini_batches: int = 1          # optimizer updates per RL step, one PPO epoch over the rollouts split in this many
                                      # slices (1: on-policy, ratio 1, what the shipped release was made with; the paper: 4)
    lora_r: int = 64                  # LoRA rank (alpha = rank) on the language model
    rl_vision: bool = False           # RL's LoRA also on the vision tower's blocks (the reward then shapes the features)
    kl_coef: float = 0.0              # the small model's base is our own SFT; no KL anchor needed
    max_new_tokens: int = MAX_NEW_TOKENS   # per turn: a bbox_2d JSON block is ≈ 80 byte tokens
    rl_temperature: float = 1.0       # rollout temperature (the paper's 1.0)
    entropy_coef: float = 0.0         # with all-equal rewards the bonus alone moves the policy (observed)
    # eval (mgpo.eval on held-out test seeds)
    eval_scenes: int = 16             # TEST scenes per checkpoint (direct and MGPO): the numbers reported
    val_scenes: int = 16              # VAL scenes per checkpoint (MGPO): the release's checkpoint is chosen on these
    eval_seed: int = 0                # first test-scene index
    workers: int = -1                 # processes rendering scenes ahead of training (-1: CPUs - 1 with a GPU, else 0)
    stages: str = "model,skills,rl,eval"   # comma-separated, in this order: model, skills, rl, eval, ship; a stage
                                      # finished in OUT with the same settings is not run again (rerun the same
                                      # command after an interruption: RL resumes from its newest checkpoint)
    release: str = ""                 # the ship stage's folder ("" = OUT/release)

    @classmethod
    def for_size(cls, size: str, **overrides) -> "RecipeConfig":
        if size not in SIZES:
            raise ValueError(f"unknown size {size!r}; choose one of {', '.join(SIZES)}")
        return cls(size=size, **{**SIZES[size], **{k: v for k, v in overrides.items() if v is not None}})

    def check(self) -> "RecipeConfig":
        from mgpo.playground.skill_prompts import GROUND_PROMPTS, SKILLS

        problems = []
        for name in ("hidden", "layers", "vision_hidden", "vision_depth", "skill_batch", "rl_scenes",
                     "prompts_per_step", "group_size", "lora_r", "max_new_tokens", "eval_scenes", "val_scenes"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1")
        if self.hidden % 8:
            problems.append("hidden must be a multiple of 8 (4 heads with an even M-RoPE split)")
        for name in ("skill_steps", "rl_steps", "skill_eval_every", "skill_start", "skill_pool"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be ≥ 0")
        if self.skill_start >= VISION_START:
            problems.append(f"skill_start must be below {VISION_START} (the vision probe reads the skills range from there)")
        if not set(w.strip() for w in self.skill_prompt.split(",")) <= set(GROUND_PROMPTS):
            problems.append(f"skill_prompt must be one or more of {', '.join(GROUND_PROMPTS)} (comma-separated)")
        try:
            self.skill_systems("ground")
        except ValueError as e:
            problems.append(str(e))
        try:
            phases = self.phases()
        except ValueError as e:
            problems.append(str(e))
            phases = []
        bad = sorted({n for ph in phases for n in ph.skills if n not in SKILLS})
        if bad:
            problems.append(f"unknown skill(s) {', '.join(bad)}; choose from {', '.join(SKILLS)}")
        if any(ph.steps < 0 or ph.lr <= 0 or not ph.skills or (ph.pool or 0) < 0 or (ph.schedule or ph.steps) < ph.steps
               or not 0 <= (ph.start or 0) < VISION_START for ph in phases):
            problems.append("every curriculum phase needs skills, steps ≥ 0, a learning rate > 0, a pool ≥ 0, a "
                            f"schedule no shorter than its steps and a start below {VISION_START}")
        if not all(0.0 <= v <= 1.0 for v in [self.skill_simple, *(ph.simple for ph in phases if ph.simple is not None)]):
            problems.append("the share of clutter-free scenes (skill_simple, a phase's SIMPLE) must be within [0, 1]")
        if self.overview not in OVERVIEWS:
            problems.append(f"overview must be one of {', '.join(map(str, OVERVIEWS))}, not {self.overview!r}")
        try:
            check_cards(self.cards)
        except ValueError as e:
            problems.append(str(e))
        if self.turns not in (2, 3):
            problems.append(f"turns must be 2 (the paper's MGPO) or 3 (a look inside the crop first), not {self.turns!r}")
        if self.rl_mini_batches < 1 or self.prompts_per_step % self.rl_mini_batches:
            problems.append(f"rl_mini_batches must be at least 1 and divide prompts_per_step ({self.prompts_per_step}): "
                            "each update takes whole groups")
        if self.rl_schedule not in LR_SCHEDULES:   # checked here too: before the stages that come first
            problems.append(f"rl_schedule must be one of {', '.join(LR_SCHEDULES)}, not {self.rl_schedule!r}")
        unknown = [s for s in self.stage_list() if s not in STAGES]
        if unknown:
            problems.append(f"unknown stage(s) {', '.join(unknown)}; choose from {', '.join(STAGES)}")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def budgets(self) -> Budgets:
        """The world's geometry this recipe trains and evaluates in (scene side, pixel budgets)."""
        return Budgets.for_overview(self.overview)

    def phases(self) -> list[Phase]:
        """The skills stage's phases: the curriculum, or one phase of skills / skill_steps / skill_lr."""
        if not self.curriculum.strip():
            return [Phase(_names(self.skills), self.skill_steps, self.skill_lr)]
        out = []
        for part in self.curriculum.split():
            try:
                names, steps, lr, *rest = part.split(":")
                opts = dict(r.partition("=")[::2] for r in rest if "=" in r)
                rest = [r for r in rest if "=" not in r]
                vision = rest[-1:] == ["vision"]
                simple = rest[:-1] if vision else rest
                if len(simple) > 1 or not set(opts) <= {"system", "pool", "start", "schedule"} \
                        or len(opts) < sum("=" in r for r in part.split(":")):
                    raise ValueError
                system = opts.get("system")
                if system is not None:
                    _parse_systems(system)
                num = {k: int(opts[k]) for k in ("pool", "start", "schedule") if k in opts}
                out.append(Phase(_names(names), int(steps), float(lr), float(simple[0]) if simple else None, vision,
                                 system, num.get("pool"), num.get("start"), num.get("schedule")))
            except ValueError:
                raise ValueError(f"curriculum phase {part!r} is not SKILLS:STEPS:LR[:SIMPLE][:vision][:system=KINDS]"
                                 "[:pool=N][:start=N][:schedule=N] (e.g. cell,ground:900:5e-4, ground:300:2e-3:0.3 for "
                                 "30 % clutter-free scenes, ground:300:3e-4:0.3:vision to train the vision tower too, "
                                 "zoom,ground:100:1e-3:system=mgpo,default;ground=default for the phase's own system "
                                 "prompts (skill_system's syntax, ';' for its spaces), :pool=600 for its own pool, "
                                 ":start=300000 for its first scene index, :schedule=800 for a learning-rate schedule "
                                 "planned that long and stopped after STEPS)") from None
        return out

    def skill_systems(self, skill: str, phase: "Phase | None" = None) -> tuple[str, ...]:
        """The system prompts ``skill``'s examples carry, one drawn per example: ``skill_system`` (or
        ``phase``'s own ``system=``) is one list for every skill ("mgpo,default"), then any skill's
        own ("ground=default"); a kind listed n times is drawn n times as often
        ("ground=default,default,default,mgpo")."""
        every, own = _parse_systems(phase.system if phase is not None and phase.system else self.skill_system)
        return own.get(skill, every)

    def skill_pool_of(self, phase: "Phase | None" = None) -> int:
        """The scenes ``phase`` draws once and cycles over (its ``pool=``, else ``skill_pool``; 0: fresh scenes)."""
        return phase.pool if phase is not None and phase.pool is not None else self.skill_pool

    def skill_list(self) -> tuple[str, ...]:
        """Every skill the stage trains, in the order they first appear."""
        return tuple(dict.fromkeys(name for ph in self.phases() for name in ph.skills))

    def stage_list(self) -> list[str]:
        return [s.strip() for s in self.stages.split(",") if s.strip()]


STAGES = ("model", "skills", "rl", "eval", "ship")


@dataclass(frozen=True)
class Phase:
    """One phase of the skills stage."""

    skills: tuple[str, ...]
    steps: int
    lr: float
    simple: float | None = None   # this phase's share of clutter-free scenes (None: cfg.skill_simple)
    vision: bool = False          # this phase trains the vision tower too, even where the run keeps it frozen
    system: str | None = None     # this phase's system prompts, skill_system's syntax (None: cfg.skill_system)
    pool: int | None = None       # this phase's pool of scenes (None: cfg.skill_pool)
    start: int | None = None      # its first scene index in the skills range (None: phase_start's)
    schedule: int | None = None   # the length its learning-rate schedule is planned for (None: steps)


def _parse_systems(spec: str) -> tuple[tuple[str, ...], dict[str, tuple[str, ...]]]:
    """``(every skill's kinds, {skill: its own kinds})`` of a system-prompt spec: "mgpo,default
    ground=default" (parts apart by spaces or ';')."""
    from mgpo.playground.skill_prompts import SKILLS

    every, own = None, {}
    for part in re.split(r"[\s;]+(?=[\w-]+=)", spec.strip()):
        name, _, kinds = part.rpartition("=")
        listed = tuple(k.strip() for k in kinds.split(",") if k.strip())
        if not listed or not set(listed) <= {"mgpo", "default"} or (name and name not in SKILLS) \
                or (name in own if name else every is not None):
            every = None
            break
        if name:
            own[name] = listed
        else:
            every = listed
    if every is None:
        raise ValueError(f"skill_system {spec!r} is not KINDS [SKILL=KINDS ...] with KINDS mgpo, "
                         "default or both, comma-separated (e.g. \"mgpo,default ground=default\")")
    return every, own


def _names(text: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in text.split(",") if s.strip())


def phase_start(cfg: RecipeConfig, index: int) -> int:
    """The first scene index phase ``index`` reads: each phase its own part of the skills seed range,
    from ``skill_start`` on, ``PHASE_SPACING`` apart and below the vision probe's ``VISION_START``;
    past it the parts wrap round a quarter spacing further on (a ``cpu`` phase reads under 10 000
    scenes, so its wrapped parts stay apart) — or the phase's own ``:start=``."""
    own = cfg.phases()[index].start if index < len(cfg.phases()) else None
    if own is not None:
        return own
    n = cfg.skill_start + index * PHASE_SPACING
    return n % VISION_START + PHASE_SPACING // 4 * (n // VISION_START % 4)


def vision_frozen(cfg: RecipeConfig) -> bool:
    """Whether the text skills leave the vision tower (merger included) as it is: a probed or
    continued tower stays, unless ``train_vision`` asks to train it too (or a phase does: :func:`trains_vision`)."""
    return not cfg.train_vision and bool(cfg.vision_steps or cfg.skills_from)


def trains_vision(cfg: RecipeConfig, phase: Phase) -> bool:
    """Whether this phase of the text skills trains the vision tower too (the run's rule, or the phase's ``:vision``)."""
    return phase.vision or not vision_frozen(cfg)
