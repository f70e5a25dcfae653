"""LoRA MGPO: GRPO over MGPO's two-turn grounding rollout, on Qwen2.5-VL, with the project's engine.

Launch::

    # one GPU (or CPU)
    python -m train --model Qwen/Qwen2.5-VL-7B-Instruct --data mme_rw_train.jsonl \\
        --output-dir runs/mgpo-lora --steps 200 --group-size 8 --push-to-hub you/mgpo-lora
    # several GPUs / nodes: the same command under accelerate (one process per GPU)
    accelerate launch --num_processes 8 -m train --config cfg.yaml
    # several CPU processes (gloo; what the 2-process test runs)
    accelerate launch --multi_gpu --num_processes 2 -m train --config cfg.yaml
    # resume the newest checkpoint in --output-dir after an interruption
    python -m train --config cfg.yaml --resume
    # a smoke test on CPU with the tiny random model
    python -m mgpo.tiny /tmp/tiny && python -m train --model /tmp/tiny --data data.jsonl \\
        --steps 2 --group-size 2 --prompts-per-step 2 --max-new-tokens 16 --min-pixels 3136 --max-pixels 12544

Every setting is a field of :class:`train.config.TrainConfig` (flags ``--group-size``; YAML keys
``group_size``); ``python -m train --help`` lists them.

The algorithm (per step and process):

1. Draw ``prompts_per_step`` multiple-choice questions (no box annotations).
2. Roll out each ``group_size`` times at temperature 1.0 with the engine's batched call
   (``Engine.rollout``): the prompt and image are encoded once per group; turn 1 asks for the
   key area's box; the engine crops the original image at that box (the paper's box rule),
   feeds the enlarged crop (or the original again when the box is invalid) in turn 2, which
   answers in ``\\boxed{}``. The engine returns, per sample, the token ids, the loss mask
   (1 on the two assistant turns, 0 on the prompt, the inserted user turn and every image
   token), the sampling log-probs and the M-RoPE positions of the whole two-image sequence.
3. Reward (default: the paper's binary accuracy of the last ``\\boxed{}`` letter), advantage
   A = (r − mean_group) / (std_group + ε).
4. Loss per policy token: PPO-clipped ratio (ε = 0.2) + 0.01 · k3 KL to the base model − 0.001 ·
   entropy, averaged over the step's policy tokens; one PPO epoch over ``mini_batches``
   optimizer updates; grad clip 1.0; AdamW on the LoRA parameters only. An update whose
   gradient norm is NaN/inf is skipped (the adapter is left as it was) and counted; after
   ``max_nonfinite`` in a row the run stops; weights that are not finite are never saved.

The update schedule: by default (``mini_batches = 0``) the paper's — it samples 512 prompts and
updates on 128 at a time, 4 updates per rollout batch — so the step's groups are split into 4
mini-batches when ``prompts_per_step`` allows it (else 3, 2 or 1). Only from the second update
on has the policy moved since sampling, so only then does the PPO ratio differ from 1 and the
clip act; with ``--mini-batches 1`` every update is on-policy and the loss is plain policy
gradient + KL + entropy (the trainer says so when it starts). ``--dual-clip 3`` adds verl's
dual clip for negative advantages. ``warmup_steps`` counts optimizer updates, not steps.

Where this departs from the paper (a full-model verl run on 8–32 H100s):

- LoRA (r 32, α 64, no dropout) on the language model's attention and MLP projections, vision
  tower frozen (``--train-vision`` adds LoRA there); lr 2e-5 instead of the full model's 1e-6.
- The KL reference is the same network with the adapter disabled — no second model copy.
- The old-policy log-probs are the engine's sampling log-probs in float32 (they equal the
  training forward's to ~1e-6, tested), and a no-grad training forward as in verl in bf16,
  where the KV-cache path and the full forward round differently (``--old-logprobs``).
- The training forward recomputes nothing about positions: it feeds the rollout's explicit
  M-RoPE positions (= ``get_rope_index`` over both images, with ``mm_token_type_ids``), fixing
  the original code's linear positions after the first image.
- Batch sizes default to what one GPU holds (8 prompts × 8 samples per step and process instead
  of 512 × 8); ``max_new_tokens`` 1024 per turn instead of 8192.
- The loss is a token mean over the step's policy tokens on all processes (verl's
  ``token-mean``); turn 1 stops right after the box's JSON block, so its closing
  ``<|im_end|>`` is part of the inserted user turn (mask 0), as in the paper's rollout.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from .config import ConfigError, from_args
    from .data import DataError

    try:
        cfg = from_args(argv)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        from mgpo.model import ModelLoadError

        from .loop import NonFiniteError, train

        result = train(cfg)
    except (ConfigError, DataError, ModelLoadError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except NonFiniteError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; resume with --resume (from the newest checkpoint)", file=sys.stderr)
        return 130
    if not result.get("main", True):
        return 0
    print(f"done: step {result['step']}, adapter in {result['adapter']}"
          + (f", pushed to {result['url']}" if result.get("url") else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
