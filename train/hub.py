"""Push a trained LoRA adapter to the Hugging Face Hub with a generated model card.

    python -m train.hub OUTPUT_DIR user/mgpo-qwen2.5-vl-7b-lora [--card card.json] [--private]
    python -m train.hub OUTPUT_DIR user/repo --print-card      # preview the card, push nothing

:func:`push_adapter` uses the real ``huggingface_hub`` client: ``HfApi.create_repo(exist_ok=True)``
then one ``upload_folder`` commit. What is uploaded is a temporary staging folder, not the
adapter directory itself: the adapter files (``adapter_config.json`` and
``adapter_model.safetensors`` or ``.bin``), any ``extra_files`` asked for, and ``README.md`` =
:func:`model_card`. Staged files are hard links (copies across file systems), so a 7B adapter
costs no extra disk; the user's directory is only read — never written, never deleted — and the
README.md that ``peft``'s ``save_pretrained`` leaves there is replaced by the card only in the
upload.

The token comes from the ``token`` argument, else ``HF_TOKEN``, else the login cache
(``huggingface_hub.get_token()``, i.e. ``hf auth login``). It goes only into the client's
``Authorization: Bearer`` header: it is never printed, logged, put in an error message or written
to a file (a card value or an error text that contains it is scrubbed).

Every failure — no token, offline mode, a bad adapter directory, a network error, HTTP
401/403/404/5xx — raises :class:`PushError` whose message says which step failed, why, and that
the local adapter at its directory is intact, so the caller (the training loop) can print it and
carry on.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

import yaml

from mgpo.prompts import get_prompts, render

log = logging.getLogger(__name__)

CONFIG_NAME = "adapter_config.json"
WEIGHT_NAMES = ("adapter_model.safetensors", "adapter_model.bin")
DEFAULT_TAGS = ["mgpo", "lora", "qwen2.5-vl", "grpo", "peft", "multi-turn", "visual-grounding"]
DEFAULT_LICENSE = "apache-2.0"  # Qwen2.5-VL-3B/7B-Instruct's license; override with card["license"]
SECRET_KEY = re.compile(r"token|secret|password|api[_-]?key", re.IGNORECASE)

# The example rendered in the card's prompt section (any multiple-choice question would do).
EXAMPLE_QUESTION = "What is the number on the bus?"
EXAMPLE_CHOICES = ["12", "15", "21", "51"]


class PushError(RuntimeError):
    """A push that did not happen, with what failed; the local adapter is untouched."""


# ------------------------------------------------------------------------------------------------
# Model card (pure: dict in, markdown out)
# ------------------------------------------------------------------------------------------------

def _plain(value: Any) -> Any:
    """``value`` as YAML/JSON-safe plain data: dataclasses → dicts, paths → str, tuples → lists;
    values under keys that look like secrets (token, password, …) → ``"<redacted>"``."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, dict):
        return {str(k): "<redacted>" if SECRET_KEY.search(str(k)) else _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _metrics_table(metrics: dict) -> str:
    rows = ["| metric | value |", "|---|---|"]
    for key, value in _plain(metrics).items():
        if isinstance(value, dict):
            rows += [f"| {_fmt(key)}.{_fmt(k)} | {_fmt(v)} |" for k, v in value.items()]
        else:
            rows.append(f"| {_fmt(key)} | {_fmt(value)} |")
    return "\n".join(rows)


def _fence(text: str, lang: str = "text") -> str:
    return f"```{lang}\n{text.rstrip()}\n```"


def _hub_id(name: str) -> bool:
    """Whether ``name`` reads as a Hub model id (``org/name``) rather than a local path."""
    return bool(re.fullmatch(r"[\w.-]+/[\w.-]+", name)) and not Path(name).exists() and ".." not in name


def _schedule(config: dict) -> str:
    """What the optimizer updates were: on-policy, or the paper's several per rollout batch."""
    m, p, g = config.get("mini_batches"), config.get("prompts_per_step"), config.get("group_size")
    if not isinstance(m, int) or m < 1 or not p:
        return ""
    batch = f"{p} prompts × {g} samples" if g else f"{p} prompts"
    if m == 1:
        text = (f"One optimizer update per rollout batch ({batch} per process): every update is on-policy, "
                "so the PPO ratio is exactly 1, clipping never acts, and the loss is plain policy gradient + "
                "KL + entropy. The paper updates 4 times per rollout batch (512 prompts, 128 at a time).")
    else:
        text = (f"{m} optimizer updates per rollout batch ({batch} per process, {p // m} prompts' groups "
                "each), one PPO epoch — the paper's schedule (512 prompts, updates on 128 at a time). The "
                "first update is on-policy; from the second on the policy has moved since sampling, so the "
                f"PPO ratio departs from 1 and the clip to [{1 - config.get('clip_low', 0.2):g}, "
                f"{1 + config.get('clip_high', 0.2):g}] acts.")
    if config.get("dual_clip"):
        text += f" Dual clip c = {config['dual_clip']:g} on negative advantages (verl's)."
    return text


def model_card(card: dict) -> str:
    """The README.md for an MGPO LoRA adapter: YAML front matter + sections.

    ``card`` keys (only ``base_model`` is required):

    - ``base_model``: Hub id of the base Qwen2.5-VL (e.g. ``Qwen/Qwen2.5-VL-7B-Instruct``); a
      local path is shown as such and left out of the front matter (the Hub expects an id there)
    - ``repo_id``: where the adapter lives (the usage commands use it; ``push_adapter`` sets it)
    - ``title``, ``license`` (default apache-2.0), ``tags`` (added to the MGPO ones),
      ``datasets`` (Hub dataset ids for the front matter)
    - ``data``: the training data — a string, or a dict (source, records, skipped, …)
    - ``config``: the training config (dict or dataclass), shown as a YAML block; keys that look
      like secrets are redacted
    - ``metrics``: final metrics (``{"reward": 0.61, "accuracy": 0.58, ...}``), shown as a table
    - ``step``: the training step the adapter is from (shown above the metrics)
    - ``prompts``: the prompt set name (default ``"mgpo"``, the paper's prompts)
    - ``mode``: ``"mgpo"`` (two turns, default) or ``"direct"`` (the single-turn GRPO baseline)

    Raises ValueError on a card without a base model or with a wrongly typed field.
    """
    if not isinstance(card, dict):
        raise ValueError(f"the model card must be a dict, not {type(card).__name__}")
    base = card.get("base_model")
    if not base or not isinstance(base, str):
        raise ValueError("the model card needs 'base_model': the Hub id or path of the base Qwen2.5-VL model")
    repo = card.get("repo_id") or "<this-repo>"
    for key, kind in (("metrics", dict), ("tags", (list, tuple)), ("datasets", (list, tuple)), ("title", str)):
        if card.get(key) is not None and not isinstance(card[key], kind):
            raise ValueError(f"model card field '{key}' must be a {getattr(kind, '__name__', 'list')}")
    prompts = get_prompts(card.get("prompts") or "mgpo")

    tags = list(dict.fromkeys([*DEFAULT_TAGS, *(card.get("tags") or [])]))
    front: dict[str, Any] = {"base_model": base} if _hub_id(base) else {}
    front |= {
        "library_name": "peft",
        "license": card.get("license") or DEFAULT_LICENSE,
        "pipeline_tag": "image-text-to-text",
        "tags": tags,
    }
    if card.get("datasets"):
        front["datasets"] = list(card["datasets"])
    title = card.get("title") or f"MGPO LoRA adapter for {base}"
    base_md = f"[{base}](https://huggingface.co/{base})" if _hub_id(base) else f"the local checkpoint `{base}`"

    data = card.get("data")
    if isinstance(data, dict):
        data_md = "\n".join(f"- **{_fmt(k)}**: {_fmt(v)}" for k, v in _plain(data).items())
    else:
        data_md = str(data) if data else "Not recorded."
    config = _plain(card.get("config") or {})
    config_md = _fence(yaml.safe_dump(config, sort_keys=False, allow_unicode=True), "yaml") if config else "Not recorded."
    metrics_md = _metrics_table(card["metrics"]) if card.get("metrics") else "Not recorded."
    schedule_md = _schedule(config)

    mode = card.get("mode") or "mgpo"
    if mode not in ("mgpo", "direct"):
        raise ValueError(f"model card field 'mode' must be 'mgpo' or 'direct', not {mode!r}")
    if card.get("step") is not None:
        metrics_md = f"After {card['step']} training steps.\n\n" + metrics_md

    q, ch = EXAMPLE_QUESTION, EXAMPLE_CHOICES
    direct_md = "\n\n".join([
        "This adapter was trained in `direct` mode — the single-turn GRPO baseline, no crop turn — "
        "with this user prompt (`<image>` is the whole image; the chat template's default system prompt):",
        _fence(render(prompts, "direct", q, ch)),
        "The MGPO two-turn prompts below are what the `mgpo` mode would use.",
    ])
    prompt_md = "\n\n".join(([direct_md] if mode == "direct" else []) + [
        "System prompt:", _fence(render(prompts, "system", q, ch)),
        "Turn 1 (user; `<image>` is the whole image, answer choices are not shown):",
        _fence(render(prompts, "grounding", q, ch)),
        "Turn 2 (user) when the turn-1 box is valid — `<image>` is the crop of the original image, enlarged:",
        _fence(render(prompts, "crop", q, ch)),
        "Turn 2 (user) when the box is missing or invalid — `<image>` is the original image again:",
        _fence(render(prompts, "fallback", q, ch)),
    ])

    usage_md = "\n\n".join([
        "The adapter is meant to run inside MGPO's two-turn loop (box → crop → answer), which the "
        "`mgpo` package implements. Command line (one JSON event per line with `--json`):",
        _fence(f'python -m mgpo.infer --model {base} --adapter {repo} \\\n'
               f'    --image photo.jpg --question "What is written on the sign?"', "bash"),
        "The Gradio demo:",
        _fence(f"python app.py --model {base} --adapter {repo}", "bash"),
        "From Python, through the project's engine (streams turn, box, crop and answer events):",
        _fence(
            "from mgpo.engine import Engine\n\n"
            f'engine = Engine.from_pretrained("{base}", adapter="{repo}")\n'
            'for event in engine.run("photo.jpg", "What is written on the sign?"):\n'
            "    print(event.to_dict())", "python"),
        "Or load it with plain `peft` (one turn only; the crop loop is yours to write):",
        _fence(
            "from peft import PeftModel\n"
            "from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration\n\n"
            f'base = Qwen2_5_VLForConditionalGeneration.from_pretrained("{base}", dtype="auto", device_map="auto")\n'
            f'model = PeftModel.from_pretrained(base, "{repo}")\n'
            f'processor = AutoProcessor.from_pretrained("{base}")', "python"),
    ])

    sections = [
        f"# {title}",
        f"A LoRA adapter for {base_md} trained with MGPO on top of "
        "the `mgpo` engine.",
        "## What MGPO is",
        "MGPO (Multi-turn Grounding-based Policy Optimization, arXiv 2507.05920) teaches a "
        "vision-language model to look closer before answering. In turn 1 the model sees the image and "
        "the question and outputs the box of the key image area in Qwen's JSON grounding format; the "
        "box is cropped from the original high-resolution image, enlarged, and fed back as a second "
        "image; in turn 2 the model answers in `\\boxed{}`. It is trained with GRPO from a binary "
        "reward on the final answer only — no box annotations — so grounding emerges from the RL.",
        "## Base model",
        f"{base_md[0].upper() + base_md[1:]}; this repository holds only the LoRA weights "
        "(`adapter_config.json`, `adapter_model.safetensors`).",
        "## Training data", data_md,
        "## Training config", config_md,
        *(["## Update schedule", schedule_md] if schedule_md else []),
        "## Metrics", metrics_md,
        f"## Prompts (`{prompts.name}` set)",
        f"Rendered for an example multiple-choice question (“{q}”, choices {', '.join(ch)}). For an "
        "open question the choice list and the `(A, B, C, D, or E)` hint are left out.",
        prompt_md,
        "## How to use", usage_md,
    ]
    return "---\n" + yaml.safe_dump(front, sort_keys=False, allow_unicode=True) + "---\n\n" + "\n\n".join(sections) + "\n"


# ------------------------------------------------------------------------------------------------
# Push
# ------------------------------------------------------------------------------------------------

def resolve_token(token: str | None = None) -> str | None:
    """The ``token`` argument, else ``HF_TOKEN``, else the login cache (``hf auth login``)."""
    if token:
        return token
    if os.environ.get("HF_TOKEN", "").strip():
        return os.environ["HF_TOKEN"].strip()
    from huggingface_hub import get_token

    try:
        return get_token()
    except Exception:  # e.g. HF_OIDC_RESOURCE set but the OIDC exchange failed
        return None


def _stage(adapter_dir: Path, stage: Path, extra_files: Sequence[str | os.PathLike]) -> list[str]:
    """Hard-link (or copy) the adapter files and ``extra_files`` into ``stage``; their names."""
    sources = [adapter_dir / CONFIG_NAME] + [adapter_dir / n for n in WEIGHT_NAMES if (adapter_dir / n).is_file()]
    for extra in extra_files:
        p = Path(extra) if Path(extra).is_absolute() else adapter_dir / extra
        if not p.is_file():
            raise PushError(f"extra file to upload '{p}' does not exist; nothing was pushed")
        sources.append(p)
    names = []
    for src in sources:
        dst = stage / src.name
        if dst.name == "README.md" or dst.exists():
            continue  # the card is README.md; the first file with a given name wins
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)
        names.append(dst.name)
    return names


def _describe(err: Exception, repo_id: str, endpoint: str) -> str:
    """Why a Hub call failed, in a sentence, from the client's exception."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if isinstance(err, OfflineModeIsEnabled):
        return "offline mode is on (HF_HUB_OFFLINE=1); unset it to push"
    if isinstance(err, HfHubHTTPError) and err.response is not None:
        status = err.response.status_code
        server = err.response.headers.get("X-Error-Message") or ""
        why = {
            401: "the token was rejected (HTTP 401) — check HF_TOKEN or run `hf auth login` with a valid token",
            403: f"the token may not write to '{repo_id}' (HTTP 403) — use a token with write access to that "
                 "namespace (user or organisation)",
            404: f"'{repo_id}' was not found (HTTP 404) — check the repo id and that the token can see it",
        }.get(status)
        if why is None and status >= 500:
            why = f"the Hub at {endpoint} had a server error (HTTP {status}); try again later"
        if why is None:
            why = f"the Hub answered HTTP {status}"
        return why + (f" [server: {server}]" if server else "")
    first = str(err).splitlines()[0][:200] if str(err) else ""
    if type(err).__name__ in ("ConnectError", "ConnectTimeout", "ReadTimeout", "TimeoutException", "NetworkError") \
            or isinstance(err, (ConnectionError, TimeoutError)):
        return f"could not reach {endpoint} ({type(err).__name__}: {first})"
    return f"{type(err).__name__}: {first}"


def push_adapter(
    adapter_dir: str | os.PathLike,
    repo_id: str,
    *,
    card: dict,
    token: str | None = None,
    private: bool = False,
    commit_message: str = "Upload MGPO LoRA adapter",
    endpoint: str | None = None,
    extra_files: Sequence[str | os.PathLike] = (),
) -> str:
    """Create ``repo_id`` (if needed) and upload the adapter in ``adapter_dir`` with a model card.

    One commit holds ``adapter_config.json``, the adapter weights, ``extra_files`` (names relative
    to ``adapter_dir`` or absolute paths, uploaded at the repo root) and ``README.md`` =
    ``model_card({**card, "repo_id": repo_id})``. ``endpoint`` defaults to ``HF_ENDPOINT`` (read
    now), else the client's default (https://huggingface.co). Returns the repo URL.

    Raises :class:`PushError` (the message says what failed; the local adapter is intact).
    """
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    adapter_dir = Path(adapter_dir)
    endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")
    where = f"Pushing the adapter at {adapter_dir} to '{repo_id}' on {endpoint} failed"
    intact = f"The local adapter at {adapter_dir} is intact."

    if not adapter_dir.is_dir():
        raise PushError(f"{where}: {adapter_dir} is not a directory. Nothing was pushed.")
    missing = [CONFIG_NAME] if not (adapter_dir / CONFIG_NAME).is_file() else []
    if not any((adapter_dir / n).is_file() for n in WEIGHT_NAMES):
        missing.append(" or ".join(WEIGHT_NAMES))
    if missing:
        raise PushError(f"{where}: {adapter_dir} is not a PEFT adapter directory (missing {', '.join(missing)}). "
                        "Nothing was pushed.")
    try:
        validate_repo_id(repo_id)
    except (HFValidationError, TypeError) as e:
        raise PushError(f"{where}: invalid repo id ({str(e).splitlines()[0]}); use 'user-or-org/name'. {intact}") from None
    try:
        if not isinstance(card, dict):
            raise ValueError(f"the card must be a dict, not {type(card).__name__}")
        text = model_card({**card, "repo_id": repo_id})
    except ValueError as e:
        raise PushError(f"{where}: bad model card: {e}. {intact}") from None

    token = resolve_token(token)
    if not token:
        raise PushError(f"{where}: no Hugging Face token — pass token=, set HF_TOKEN, or run `hf auth login`. {intact}")
    if constants.is_offline_mode():
        raise PushError(f"{where}: offline mode is on (HF_HUB_OFFLINE=1); unset it to push. {intact}")

    def scrub(s: str) -> str:
        return s.replace(token, "<token>")

    text = scrub(text)
    api = HfApi(endpoint=endpoint, token=token, library_name="mgpo")
    step = "staging the files"
    try:
        with tempfile.TemporaryDirectory(prefix="mgpo-push-") as tmp:
            stage = Path(tmp)
            names = _stage(adapter_dir, stage, extra_files)
            (stage / "README.md").write_text(text, encoding="utf-8")
            step = "creating the repo"
            url = api.create_repo(repo_id, exist_ok=True, private=private)
            step = f"uploading {', '.join(names + ['README.md'])}"
            info = api.upload_folder(repo_id=repo_id, folder_path=stage, commit_message=commit_message)
    except PushError as e:
        raise PushError(scrub(f"{where}: {e}. {intact}")) from None
    except Exception as e:  # HTTP errors, network errors, malformed responses, disk errors
        raise PushError(scrub(f"{where} while {step}: {_describe(e, repo_id, endpoint)}. {intact}")) from None
    log.info("pushed %s to %s (commit %s)", adapter_dir, url, getattr(info, "oid", "?"))
    return str(url)


# ------------------------------------------------------------------------------------------------
# CLI: push (again) an adapter a training run left behind
# ------------------------------------------------------------------------------------------------

def _base_model_of(adapter_dir: Path) -> str | None:
    try:
        return json.loads((adapter_dir / CONFIG_NAME).read_text()).get("base_model_name_or_path")
    except (OSError, ValueError):
        return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m train.hub", description=__doc__.split("\n\n")[0])
    ap.add_argument("adapter_dir", help="directory with adapter_config.json and adapter_model.safetensors")
    ap.add_argument("repo_id", help="user-or-org/name on the Hub")
    ap.add_argument("--card", help="JSON file with the card fields (base_model, data, config, metrics, ...)")
    ap.add_argument("--base-model", help="base model id (default: from adapter_config.json)")
    ap.add_argument("--extra-file", action="append", default=[], help="another file to upload (repeatable)")
    ap.add_argument("--private", action="store_true")
    ap.add_argument("--endpoint", help="Hub endpoint (default: HF_ENDPOINT or https://huggingface.co)")
    ap.add_argument("--print-card", action="store_true", help="print the model card and push nothing")
    args = ap.parse_args(argv)

    try:
        card = json.loads(Path(args.card).read_text()) if args.card else {}
    except (OSError, ValueError) as e:
        print(f"error: cannot read the card file {args.card}: {e}", file=sys.stderr)
        return 2
    card.setdefault("base_model", args.base_model or _base_model_of(Path(args.adapter_dir)))
    if args.print_card:
        try:
            print(model_card({**card, "repo_id": args.repo_id}))
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        return 0
    try:
        url = push_adapter(args.adapter_dir, args.repo_id, card=card, private=args.private,
                           endpoint=args.endpoint, extra_files=args.extra_file)
    except PushError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"pushed to {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
