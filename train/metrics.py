"""Per-step metrics: JSONL (``metrics.jsonl``), TensorBoard (``tb/``), and a PNG of the curves.

Started by the main process only; nothing happens at import.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

CURVES = [  # (key, title) drawn in curves.png, in this order
    ("reward", "mean reward"), ("accuracy", "accuracy"), ("valid_box", "valid-box ratio"),
    ("iou", "IoU with the hidden box (analysis)"), ("hit", "boxes on the target, IoU ≥ 0.5 (analysis)"),
    ("wrong_card", "boxes on another card (analysis)"),
    ("crop_area", "mean crop area / image"), ("kl", "KL to base (k3)"), ("entropy", "entropy"),
    ("clip_frac", "clip fraction"), ("grad_norm", "grad norm"), ("turn1_tokens", "turn-1 tokens"),
    ("final_tokens", "final-turn tokens"), ("step_seconds", "step time (s)"), ("tokens_per_s", "train tokens/s"),
]


class MetricsLog:
    """Appends one JSON line per step and mirrors scalars to TensorBoard."""

    def __init__(self, out_dir: str | Path, tensorboard: bool = True, resume_step: int | None = None):
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "metrics.jsonl"
        self.samples_path = self.dir / "samples.jsonl"
        for path in (self.path, self.samples_path):
            if resume_step is not None and path.exists():   # the steps after the checkpoint run again
                keep = [line for line in path.read_text().splitlines()
                        if line.strip() and json.loads(line).get("step", 0) <= resume_step]
                path.write_text("".join(line + "\n" for line in keep))
            elif resume_step is None and path.exists():
                path.unlink()
        self.tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(self.dir / "tb"), purge_step=(resume_step + 1) if resume_step else None)

    def log(self, step: int, metrics: dict) -> None:
        row = {"step": step, **{k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                                for k, v in metrics.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if self.tb is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                    self.tb.add_scalar(f"train/{k}", v, step)

    def samples(self, step: int, rows: list[dict]) -> None:
        """One JSON line per rollout of ``step`` (:func:`train.rollouts.sample_rows`)."""
        with self.samples_path.open("a") as f:
            for row in rows:
                f.write(json.dumps({"step": step, **row}) + "\n")

    def close(self) -> None:
        if self.tb is not None:
            self.tb.flush()
            self.tb.close()


def read(path: str | Path) -> list[dict]:
    p = Path(path)
    if not p.exists():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def plot(metrics_path: str | Path, png_path: str | Path, curves: list[tuple[str, str]] | None = None,
         cols: int = 3) -> Path | None:
    """Draw the curves of ``metrics.jsonl`` into a PNG (None when there is nothing to draw);
    ``curves``: the (key, title) panels, :data:`CURVES` by default."""
    rows = read(metrics_path)
    keys = [(k, t) for k, t in (curves or CURVES) if any(isinstance(r.get(k), (int, float)) for r in rows)]
    if not rows or not keys:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(cols, len(keys))
    nrows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4 * cols, 2.6 * nrows), squeeze=False)
    for ax, (k, title) in zip(axes.flat, keys):
        pts = [(r["step"], r[k]) for r in rows if isinstance(r.get(k), (int, float))]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], lw=1.2)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.tight_layout()
    png = Path(png_path)
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png
