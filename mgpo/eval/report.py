"""The human-readable side of ``results.json``: a markdown report. Pure."""

from __future__ import annotations


def pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def num(x: float | None, digits: int = 1) -> str:
    return "–" if x is None else f"{x:,.{digits}f}"


def _table(title: str, rows: dict[str, dict]) -> list[str]:
    lines = [f"### {title}", "", "| group | n | correct | accuracy (%) |", "|---|---:|---:|---:|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['n']} | {r['correct']} | {pct(r['accuracy'])} |")
    return lines + [""]


def markdown(results: dict) -> str:
    """A report: the protocol, the headline scores, MGPO extras, then each breakdown table."""
    p, s = results["protocol"], results["scores"]
    d = p["decoding"]
    head = [
        f"# {p['benchmark']} ({p['variant']}) — {p['mode']}",
        "",
        f"- model: `{p['model']}`" + (f" + adapter `{p['adapter']}`" if p.get("adapter") else ""),
        f"- mode: {p['mode']}, max turns {p['max_turns']}, box rule {p['box_rule']}, prompts {p['prompts']}",
        f"- pixels: min {p['min_pixels']:,}, max {p['max_pixels']:,}",
        f"- decoding: temperature {d['temperature']}, top_p {d['top_p']}, top_k {d['top_k']}, "
        f"max_new_tokens {d['max_new_tokens']}, seed {d['seed']}",
        f"- answers: {p['answer_extraction']}",
        f"- items: {p['items']} ({results['errors']} unreadable), date {p['date']}",
        *(f"- note: {n}" for n in p.get("data_notes", [])),
        "",
        "| metric | value |",
        "|---|---:|",
    ]
    rows = [("accuracy (%)" if p["benchmark"] != "hrbench" else "accuracy, cycle-averaged (%)", pct(s["overall"]))]
    if p["benchmark"] == "hrbench":
        rows += [("FSP (%)", pct(s.get("FSP"))), ("FCP (%)", pct(s.get("FCP"))),
                 ("plain accuracy over rows (%)", pct(s["accuracy"]))]
    b = results["behaviour"]
    rows += [("valid-box ratio (%)", pct(b["valid_box_ratio"])), ("mean turns", num(b["mean_turns"], 2))]
    if results.get("crop_only"):
        c = results["crop_only"]
        rows += [(f"crop-only accuracy, {c['n']} items with a valid crop (%)", pct(c["accuracy"])),
                 ("crop-only accuracy over all items (%)", pct(c["accuracy_all"]))]
    if results.get("grounding"):
        g = results["grounding"]
        rows += [(f"mean IoU with the hidden box (the answer's box), {g['n_boxed']} items with a valid box", num(g["mean_iou"], 3)),
                 ("mean IoU over all items (no box = 0)", num(g["mean_iou_all"], 3)),
                 (f"boxes with IoU ≥ 0.5 — hits, {g['hits']} items (% of all items)", pct(g["hit_rate"])),
                 ("accuracy after a hit (%)", pct(g.get("accuracy_after_hit"))),
                 ("accuracy without a hit (%)", pct(g.get("accuracy_after_miss")))]
        if "wrong_card_rate" in g:
            rows.append((f"boxes on another card (IoU ≥ 0.5), {g['wrong_card']} items (%)", pct(g["wrong_card_rate"])))
    lat = results["latency"]
    rows += [("mean visual tokens", num(b["mean_visual_tokens"], 0)),
             ("mean native visual tokens", num(b["mean_native_visual_tokens"], 0)),
             ("mean new tokens", num(b["mean_new_tokens"], 1)),
             ("mean seconds per item (in batch)", num(lat["mean_seconds"], 2)),
             ("mean batch seconds per item", num(lat["mean_batch_seconds_per_item"], 2))]
    lines = head + [f"| {k} | {v} |" for k, v in rows] + [""]
    lines += ["Answers read by: " + ", ".join(f"{k} {v}" for k, v in results["answers"].items()), ""]
    for name, t in s.get("tables", {}).items():
        lines += _table(f"by {name}", t)
    slots = (results.get("grounding") or {}).get("slots")
    if slots:
        lines += ["### turn-1 boxes by the target's board slot", "",
                  "| slot | n | hits | misses boxed in |", "|---|---:|---:|---|"]
        for name, r in slots.items():
            where = ", ".join(f"{k} ({v})" for k, v in r["missed_to"].items()) or "–"
            lines.append(f"| {name} | {r['n']} | {r['hits']} | {where} |")
        lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"
