"""LoRA adapters on a live engine: who may load which, how much the server holds, switching per run.

One :class:`AdapterStore` owns the adapters on an engine's model. All of them live in one peft
model around the base weights; a run takes the model for its whole length (:meth:`use`), switches
to its adapter (or disables them all for the base model) and generates; loading and dropping
adapters take the same lock, so a run never sees the model change under it.

Two sources, two sets of rules:

- the **operator** (``python app.py --adapter …``, a playground release, ``--adapters`` listed on
  the command line): trusted; a local folder or a Hub id, loaded as given;
- a **visitor** (the page, or its API through ``gradio_client``): only an id the operator listed
  (``AdapterPolicy.allowed``), or any Hub id when ``AdapterPolicy.any_hub`` is on; never a local
  path typed by the visitor (a listed local folder may be picked); the adapter must be a LoRA on
  the language model's linear layers with rank ≤ ``max_rank``, stored as safetensors
  (``adapter_model.bin`` is pickle: refused) of at most ``max_bytes``. Its config and file sizes
  are checked before any weight is downloaded or read, and one download runs at a time.

At most ``max_loaded`` adapters are held; loading one more drops the least recently used, which
loads again (by the same rules) when a run asks for it. A refused or failed load leaves the model
exactly as it was. Every rule is enforced here, on the server side, whatever the page shows.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .model import ModelLoadError, quiet_peft

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9_.-]{1,96}$")


class AdapterRefused(ModelLoadError):
    """A visitor's adapter that the rules refuse; the message names the rule."""


@dataclass(frozen=True)
class AdapterPolicy:
    allowed: tuple[str, ...] = ()       # ids the operator lists: Hub ids or local folders
    any_hub: bool = False               # visitors may also load any Hub id (a Space: off by default)
    max_bytes: int = 1 << 30            # adapter_model.safetensors at most this big (1 GiB)
    max_rank: int = 256                 # LoRA rank (r and every rank_pattern value) at most this
    max_loaded: int | None = 4          # adapters held at once; None: no limit (a playground release)


def is_hub_id(text: str) -> bool:
    """``owner/name`` and nothing that could be a path (no ``..``, no leading ``.``, ``/`` or ``~``)."""
    return bool(HUB_ID.match(text)) and ".." not in text and not text.split("/")[1].startswith(".")


def check_config(config: dict, core, policy: AdapterPolicy, adapter: str) -> None:
    """Refuse (:class:`AdapterRefused`) a config that is not a LoRA on the language model's linear
    layers with rank ≤ ``policy.max_rank``, matching modules of ``core`` (the base
    ``Qwen2_5_VLForConditionalGeneration``) as peft itself matches them."""
    import torch
    from peft import LoraConfig
    from peft.tuners.tuners_utils import check_target_module_exists

    def refuse(why: str):
        raise AdapterRefused(f"the LoRA adapter '{adapter}' is refused: {why}")

    if not isinstance(config, dict):
        refuse(f"{CONFIG} is not a JSON object")
    if str(config.get("peft_type", "")).upper() != "LORA":
        refuse(f"only LoRA adapters may be loaded (this one is {config.get('peft_type')!r})")
    for key in ("modules_to_save", "target_parameters", "trainable_token_indices"):
        if config.get(key):
            refuse(f"'{key}' is set: only LoRA layers on linear modules may be loaded, no other trained weights")
    ranks = [config.get("r", 8), *dict(config.get("rank_pattern") or {}).values()]
    if any(not isinstance(r, int) or r < 1 for r in ranks):
        refuse(f"its rank is not a positive integer ({ranks})")
    if max(ranks) > policy.max_rank:
        refuse(f"rank {max(ranks)} is above this server's limit of {policy.max_rank}")
    known = set(LoraConfig.__dataclass_fields__)
    try:
        lora = LoraConfig(**{k: v for k, v in config.items() if k in known and k != "peft_type"})
    except (TypeError, ValueError) as e:
        refuse(f"{CONFIG} is not a valid LoRA config ({str(e).splitlines()[0][:200]})")
    matched = []
    for name, module in core.named_modules():
        if re.search(r"\.(base_layer|lora_[A-Za-z_]+)(\.|$)", name):   # inside an adapter already loaded
            continue
        hit = check_target_module_exists(lora, name)
        if hit and type(hit).__name__ != "_ExcludedModule":
            matched.append((name, getattr(module, "base_layer", module)))
    if not matched:
        refuse(f"its target modules ({config.get('target_modules')!r}) match no module of this model")
    for name, module in matched:
        if not name.startswith("model.language_model.") or not isinstance(module, torch.nn.Linear):
            refuse(f"it targets '{name}'; only the language model's linear layers may be adapted")


class AdapterStore:
    """The adapters on one engine's model (see the module docstring)."""

    def __init__(self, engine, policy: AdapterPolicy | None = None):
        self.engine = engine
        self.policy = policy or AdapterPolicy()
        # the model: runs, injections and drops. A plain lock, never taken twice by one caller: a
        # run's generator may be resumed on another thread (Gradio's workers), which must release it
        self.lock = threading.Lock()
        self._download = threading.Lock()          # one download at a time
        self.loaded: OrderedDict[str, str] = OrderedDict()   # adapter id → peft name, least recent first
        self.trusted: set[str] = set()             # operator ids (reloaded without the visitor rules)
        self._count = 0
        self.peft = None
        model = getattr(engine.backend, "model", None)
        if model is not None and hasattr(model, "peft_config"):   # adapters put on before: known by name
            self.peft = model
            for name in model.peft_config:
                self.loaded[name] = name
                self.trusted.add(name)

    @property
    def supported(self) -> bool:
        return hasattr(self.engine.backend, "core")

    # ----- loading ---------------------------------------------------------------------------

    def load(self, adapter: str, *, visitor: bool = True) -> str:
        """Load ``adapter`` if it is not held; return its id. A visitor's id goes through the
        rules (:class:`AdapterRefused` names the one it breaks); any failure raises
        :class:`~mgpo.model.ModelLoadError` and leaves the model as it was."""
        adapter = (adapter or "").strip()
        if not adapter:
            raise AdapterRefused("no adapter given: pick one from the list" +
                                 (" or type a Hub id (user/name)" if self.policy.any_hub else ""))
        with self.lock:
            if adapter in self.loaded:
                self.loaded.move_to_end(adapter)
                return adapter
        if not self.supported:
            raise ModelLoadError("this engine has no neural network to put a LoRA adapter on")
        trusted = not visitor or adapter in self.trusted
        with self._download:
            folder = self._fetch_operator(adapter) if trusted else self._fetch_visitor(adapter)
        with self.lock:
            if adapter not in self.loaded:
                self._inject(adapter, folder)
                if trusted:
                    self.trusted.add(adapter)
                self._evict()
            self.loaded.move_to_end(adapter)
        return adapter

    def _fetch_operator(self, adapter: str) -> str:
        from .model import resolve_adapter

        try:
            local = resolve_adapter(adapter)
        except Exception as e:
            raise ModelLoadError(_unreachable(adapter, e)) from None
        if not (Path(local) / CONFIG).is_file():
            raise ModelLoadError(f"Could not load the LoRA adapter '{adapter}': no {CONFIG} in {local}")
        return str(local)

    def _fetch_visitor(self, adapter: str) -> str:
        """A local folder holding the visitor's adapter, checked: the config and the weights' size
        before any weight is downloaded."""
        p = self.policy
        listed = adapter in p.allowed
        if not listed:
            if not is_hub_id(adapter):
                raise AdapterRefused(f"'{adapter}' is not an adapter this server offers: local folders cannot be "
                                     "loaded from the page or its API (the operator lists them with --adapters)")
            if not p.any_hub:
                raise AdapterRefused(f"'{adapter}' is not in this server's list of adapters; pick one from the list "
                                     "(the operator allows other Hub ids with --any-adapter)")
        folder = Path(adapter).expanduser()
        if listed and (folder.is_dir() or not is_hub_id(adapter)):     # a local folder the operator listed
            sizes = {f.name: f.stat().st_size for f in folder.glob("adapter_model.*")} if folder.is_dir() else {}
            self._check_files(adapter, sizes)
            self._check_config_file(adapter, folder / CONFIG)
            return str(folder)
        return self._fetch_hub(adapter)

    def _fetch_hub(self, adapter: str) -> str:
        from huggingface_hub import HfApi, hf_hub_download

        from .model import _offline

        def get(filename: str, offline: bool) -> str:
            return hf_hub_download(adapter, filename, local_files_only=offline)

        try:   # the HF cache first: an adapter loaded before needs no network
            config_path, weights = get(CONFIG, True), get(WEIGHTS, True)
            self._check_files(adapter, {WEIGHTS: os.path.getsize(weights)})
            self._check_config_file(adapter, Path(config_path))
            return str(Path(weights).parent)
        except AdapterRefused:
            raise
        except Exception as e:
            if _offline():
                raise ModelLoadError(_unreachable(adapter, e)) from None
        try:
            sizes = {f.path: getattr(f, "size", 0) or 0 for f in HfApi().list_repo_tree(adapter)
                     if f.path.startswith("adapter_model.")}
        except Exception as e:
            raise ModelLoadError(_unreachable(adapter, e)) from None
        self._check_files(adapter, sizes)
        try:
            config_path = get(CONFIG, False)
        except Exception as e:
            raise ModelLoadError(_unreachable(adapter, e)) from None
        self._check_config_file(adapter, Path(config_path))
        try:
            weights = get(WEIGHTS, False)
        except Exception as e:
            raise ModelLoadError(_unreachable(adapter, e)) from None
        self._check_files(adapter, {WEIGHTS: os.path.getsize(weights)})
        return str(Path(weights).parent)

    def _check_files(self, adapter: str, sizes: dict[str, int]) -> None:
        if WEIGHTS not in sizes:
            found = ", ".join(sorted(sizes)) or "no adapter_model.* file"
            raise AdapterRefused(f"the LoRA adapter '{adapter}' is refused: only safetensors adapters "
                                 f"({WEIGHTS}) may be loaded; it has {found}")
        if sizes[WEIGHTS] > self.policy.max_bytes:
            raise AdapterRefused(f"the LoRA adapter '{adapter}' is refused: {WEIGHTS} is "
                                 f"{sizes[WEIGHTS] / 2**20:,.1f} MB, above this server's limit of "
                                 f"{self.policy.max_bytes / 2**20:,.0f} MB")

    def _check_config_file(self, adapter: str, path: Path) -> None:
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise AdapterRefused(f"the LoRA adapter '{adapter}' is refused: {CONFIG} cannot be read "
                                 f"({type(e).__name__})") from None
        check_config(config, self.engine.backend.core, self.policy, adapter)

    def _inject(self, adapter: str, folder: str) -> None:
        """Put the adapter's weights on the model (under the lock); on failure remove what peft
        added, so the model is as it was."""
        from peft import PeftConfig, PeftModel

        self._count += 1
        name = f"adapter_{self._count}"
        first = self.peft is None
        peft = self.peft
        try:
            if first:   # PeftModel.from_pretrained's two steps, so a failed load can be undone
                with quiet_peft():
                    peft = PeftModel(self.engine.backend.model, PeftConfig.from_pretrained(folder), adapter_name=name)
            peft.load_adapter(folder, adapter_name=name)
        except Exception as e:
            if first and peft is not None:
                peft.base_model.unload()           # the LoRA layers out again: the bare model as it was
                vars(self.engine.backend.model).pop("peft_config", None)
            elif name in getattr(peft, "peft_config", {}):
                peft.delete_adapter(name)
            detail = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
            raise ModelLoadError(f"Could not load the LoRA adapter '{adapter}' ({type(e).__name__}: {detail})") from None
        if first:
            self.peft = peft.eval()
            self.engine.backend.model = self.peft
        self.loaded[adapter] = name

    def _evict(self) -> None:
        limit = self.policy.max_loaded
        while limit is not None and len(self.loaded) > limit:
            adapter, name = self.loaded.popitem(last=False)
            self.peft.delete_adapter(name)

    # ----- runs ------------------------------------------------------------------------------

    @contextmanager
    def use(self, adapter: str | None, *, visitor: bool = True):
        """Hold the model for one run with ``adapter`` active (loaded again by the same rules if it
        was dropped), or the base model for ``None``."""
        for _ in range(3):      # another session may drop it between the load and the lock
            if adapter:
                self.load(adapter, visitor=visitor)
            self.lock.acquire()
            if not adapter or adapter in self.loaded:
                break
            self.lock.release()
        else:
            raise ModelLoadError(f"the LoRA adapter '{adapter}' was dropped again by other sessions' loads; "
                                 "try again")
        try:
            self._activate(adapter)
            yield
        finally:
            self.lock.release()

    def _activate(self, adapter: str | None) -> None:
        if self.peft is None:
            if adapter:
                raise ModelLoadError(f"the LoRA adapter '{adapter}' is not loaded")
            return
        if not adapter:
            self.peft.base_model.disable_adapter_layers()
            return
        self.loaded.move_to_end(adapter)
        self.peft.base_model.enable_adapter_layers()
        self.peft.set_adapter(self.loaded[adapter], inference_mode=True)


def _unreachable(adapter: str, e: Exception) -> str:
    detail = str(e).splitlines()[0][:200] if str(e) else ""
    return (f"Could not load the LoRA adapter '{adapter}': it is not in the HF cache and could not be downloaded "
            f"({type(e).__name__}{': ' + detail if detail else ''})")
