"""The README and docs/ as a reader meets them: every relative link and picture resolves, the
Space front matter is there, and nothing points outside the repository."""

from __future__ import annotations

import re

import yaml
from conftest import ROOT

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def test_every_relative_link_and_picture_resolves():
    checked = 0
    for doc in DOCS:
        for target in LINK.findall(doc.read_text(encoding="utf-8")):
            if re.match(r"^[a-z]+://|^#|^mailto:", target):
                continue
            path = (doc.parent / target.split("#")[0]).resolve()
            assert path.exists(), f"{doc.relative_to(ROOT)} links to {target}, which does not exist"
            checked += 1
    assert checked >= 8
    pictures = [t for t in LINK.findall((ROOT / "README.md").read_text()) if t.endswith((".jpg", ".png"))]
    assert len(pictures) == 3 and all((ROOT / p).stat().st_size < 300_000 for p in pictures)


def test_readme_front_matter_makes_a_gradio_space():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    front = yaml.safe_load(text.split("---\n")[1])
    assert front["sdk"] == "gradio" and front["app_file"] == "app.py"


def test_no_text_points_outside_the_repository():
    outside = ["../" + "shared", "MGPO_" + "SPEC", "PERF" + ".md", "NOTES" + ".md", "STYLE" + ".md"]   # split: not hits here
    pattern = re.compile("|".join(map(re.escape, outside)) + r"|\bissue #?\d+\b|the [a-z-]+ issue\b")
    files = DOCS + sorted(ROOT.glob("mgpo/**/*.py")) + sorted(ROOT.glob("train/**/*.py")) + [ROOT / "app.py"]
    hits = [f"{f.relative_to(ROOT)}: {m.group()}" for f in files for m in pattern.finditer(f.read_text(encoding="utf-8"))]
    assert hits == []
