"""Shared by the evaluation tests: small benchmark files in each public format (real JPEG /
base64 images) and a scripted model whose right and wrong answers are chosen per item."""

from __future__ import annotations

import base64
import csv
import io
import json
from pathlib import Path

from conftest import BOX_TEXT, noise_image

from mgpo.engine import Engine, EngineConfig
from mgpo.eval import EvalConfig, evaluate
from mgpo.eval.runner import ITEMS
from mgpo.prompts import LETTERS
from mgpo.scripted import ScriptedBackend

W, H = 640, 480            # fixture images; model frame (644, 476) at the paper's pixel limits
GOOD_BOX = (100, 100, 300, 300)   # valid in that frame
BAD_BOX = (0, 0, 10, 10)          # too small → fallback turn, no crop


def jpeg_bytes(seed: int, size=(W, H)) -> bytes:
    buf = io.BytesIO()
    noise_image(*size, seed=seed).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def write_jpeg(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(jpeg_bytes(seed))


# ----- fixture files in each exact public format ------------------------------------------------

OPTIONS = ["red", "blue", "green", "white"]


def make_vstar_folder(root: Path) -> Path:
    """V* pair form: category folders of sa_XXXX.jpg + sa_XXXX.json, options[0] correct."""
    for k, (cat, name) in enumerate([("direct_attributes", "sa_4690"), ("direct_attributes", "sa_4691"),
                                     ("relative_position", "sa_10"), ("relative_position", "sa_11")]):
        write_jpeg(root / cat / f"{name}.jpg", k)
        anno = {"target_object": ["cup"], "bbox": [[10, 20, 30, 40]],
                "question": f"What is the color of the cup number {k}?", "options": OPTIONS[k:] + OPTIONS[:k]}
        (root / cat / f"{name}.json").write_text(json.dumps(anno))
    return root


def make_vstar_jsonl(root: Path) -> Path:
    """V* test_questions.jsonl form (question_id int or string, the choices inside the text)."""
    rows = []
    for k, (cat, label) in enumerate([("direct_attributes", "B"), ("direct_attributes", "D"),
                                      ("relative_position", "A")]):
        write_jpeg(root / cat / f"sa_{k}.jpg", 10 + k)
        choices = "\n".join(f"({LETTERS[i]}) {c}" for i, c in enumerate(OPTIONS if cat == "direct_attributes"
                                                                       else ["left", "right"]))
        rows.append({"image": f"{cat}/sa_{k}.jpg",
                     "text": f"Question {k}: what about the cup?\n{choices}\n"
                             "Answer with the option's letter from the given choices directly.",
                     "category": cat, "question_id": k if k else "q0", "label": label})
    (root / "test_questions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


# HR-Bench plan: (index, question, category, cycle, answer letter); 3 questions, unequal cycles
HR_ROWS = [
    (0, "hr q1", "single", "c0", "A"), (1, "hr q1", "single", "c1", "B"),
    (2, "hr q1", "single", "c2", "C"), (3, "hr q1", "single", "c3", "D"),
    (4, "hr q2", "cross", "c0", "B"), (5, "hr q2", "cross", "c1", "C"),
    (6, "hr q2", "cross", "c2", "D"), (7, "hr q2", "cross", "c3", "A"),
    (8, "hr q3", "cross", "c0", "C"), (9, "hr q3", "cross", "c1", "D"),
]


def make_hrbench_tsv(path: Path, rows=HR_ROWS) -> Path:
    """hr_bench_4k.tsv layout: index, question, A-D, answer, category, cycle_category, image (base64)."""
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter="\t")
        w.writerow(["index", "question", "A", "B", "C", "D", "answer", "category", "cycle_category", "image"])
        for idx, q, cat, cycle, ans in rows:
            w.writerow([idx, q, "opt a", "opt b", "opt c", "opt d", ans, cat, cycle,
                        base64.b64encode(jpeg_bytes(idx)).decode()])
    return path


MME_ITEMS = [  # (Task, Subtask, Category, answer)
    ("Perception", "Monitoring", "Vehicle/attribute/color", "A"),
    ("Perception", "Monitoring", "Vehicle/attribute/orientation", "B"),
    ("Perception", "Diagram and Table", "diagram", "C"),
    ("Reasoning", "Diagram and Table", "diagram", "E"),
]


def make_mme_json(root: Path) -> Path:
    items = []
    for k, (task, sub, cat, gt) in enumerate(MME_ITEMS):
        write_jpeg(root / "imgs" / f"{k}.jpg", 20 + k)
        items.append({"Question_id": f"{task.lower()}/{sub}/{cat}/{k:04d}", "Image": f"imgs/{k}.jpg",
                      "Text": f"MME question {k}?", "Question Type": "Multiple Choice",
                      "Answer choices": [f"({L}) choice {L.lower()}" for L in "ABCDE"], "Ground truth": gt,
                      "Task": task, "Subtask": sub, "Category": cat})
    path = root / "MME_RealWorld.json"
    path.write_text(json.dumps(items, indent=1))
    return path


def make_mme_tsv(path: Path) -> Path:
    """mme_realworld_lite.tsv (VLMEvalKit layout): options as a Python list literal, base64 image."""
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter="\t")
        w.writerow(["index", "question", "multi-choice options", "answer", "category", "l2-category", "image"])
        for k, (task, sub, cat, gt) in enumerate(MME_ITEMS):
            opts = repr([f"({L}) choice {L.lower()}" for L in "ABCDE"])
            w.writerow([100 + k, f"MME question {k}?", opts, gt, f"{task}/{sub}", cat,
                        base64.b64encode(jpeg_bytes(20 + k)).decode()])
    return path


def make_jsonl(root: Path) -> Path:
    rows = [{"image": "a.jpg", "question": "Which shape?", "choices": ["circle", "square"], "answer": "B",
             "category": "shapes"},
            {"image": "b.jpg", "question": "Which colour?", "choices": ["red", "blue", "green"], "answer": "green",
             "category": "colours", "id": "col-1"}]
    write_jpeg(root / "a.jpg", 30)
    write_jpeg(root / "b.jpg", 31)
    path = root / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ----- a scripted model that is right or wrong on purpose ---------------------------------------

class Planned:
    """Scripted replies per question: a box for turn 1, a final letter, a crop-only letter.

    The turn is read from the prompt it is asked with (grounding / sub-image / fallback / direct),
    so one backend serves the multi-turn run and the crop-only re-asks alike.
    """

    def __init__(self, plan: dict[str, dict], mgpo: bool = True, fail_after: int | None = None):
        self.plan = plan                 # question → {"box", "final", "crop"}
        self.mgpo = mgpo                 # in an MGPO run the direct prompt is only the crop-only re-ask
        self.fail_after = fail_after     # raise on the (n+1)-th grounding turn (a crash mid-run)
        self.grounding = 0
        self.crop_images: dict[str, tuple] = {}

    def _entry(self, text: str) -> tuple[str, dict]:
        for q, entry in self.plan.items():
            if q in text:
                return q, entry
        raise AssertionError(f"unplanned prompt: {text[:200]}")

    def __call__(self, sample: int, turn: int, message: dict) -> str:
        text = "".join(c.get("text", "") for c in message["content"])
        q, entry = self._entry(text)
        if "Out the coordinates" in text:                       # turn 1: grounding
            self.grounding += 1
            if self.fail_after is not None and self.grounding > self.fail_after:
                raise RuntimeError("injected crash")
            return "The key area:\n" + BOX_TEXT % entry.get("box", GOOD_BOX)
        if "Output the coordinates" in text:                    # the direct prompt
            if self.mgpo:
                image = next(c["image"] for c in message["content"] if c.get("type") == "image")
                self.crop_images[q] = image.size
                return f"Looking at the crop: \\boxed{{{entry.get('crop') or entry['final']}}}"
            return f"\\boxed{{{entry['final']}}}"
        return f"Reasoning step by step... the answer is \\boxed{{{entry['final']}}}"


def planned_engine(plan, mgpo: bool = True, **kw) -> tuple[Engine, Planned]:
    script = Planned(plan, mgpo, **kw)
    return Engine(ScriptedBackend(script), EngineConfig(), name="scripted"), script


def wrong(letter: str, n: int = 4) -> str:
    return LETTERS[(LETTERS.index(letter) + 1) % n]


def run(engine, bench, tmp_path, name="out", **kw) -> dict:
    cfg = EvalConfig.of(benchmark=bench.name, data=str(bench.path), out=str(tmp_path / name), **kw)
    return evaluate(engine, bench, cfg, progress=False)


def rows_of(tmp_path, name="out") -> list[dict]:
    return [json.loads(ln) for ln in (tmp_path / name / ITEMS).read_text().splitlines()]
