"""LoRA MGPO training on the shared engine: ``python -m train`` (see ``train/__main__.py``).

Files: ``config`` (settings), ``data`` (JSONL / MME-RealWorld / HF datasets), ``rewards``
(pure reward registry), ``rollouts`` (what rewards and metrics read from a rollout), ``grpo``
(advantages and the clipped loss), ``logprobs`` (the training forward), ``loop`` (rollouts →
update), ``processes`` (what crosses processes), ``checkpoint`` (atomic save / exact resume), ``metrics`` (JSONL, TensorBoard, curves),
``hub`` (push with a model card), ``bench`` (a random-weight 7B-shaped run: memory, step time).
"""
