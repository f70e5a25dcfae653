"""The benchmark's report: one :class:`Row` per measured quantity (the project's number, the
baseline's, the hardware floor, the target) and the markdown :func:`table` that ``docs/speed.md``
carries."""

from __future__ import annotations

from dataclasses import asdict, dataclass


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
