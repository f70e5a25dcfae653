"""Token-level conversations over a real Qwen2.5-VL: build turns, prefill, decode, stream.

This is the only place that talks to the network weights. A :class:`Conversations` batch holds
one row per sample: its tokens, the loss mask, the log-probs seen while sampling, the M-RoPE
positions and the images fed so far, plus one shared KV cache. Rows of different lengths live
in the cache with holes (attention mask 0), so any subset of rows can get a new user turn and
keep decoding on top of what is cached — turn 2 reuses turn 1's cache — and the G samples of a
GRPO group share one prefill of their common prompt.

M-RoPE positions are computed here, token by token, the way ``get_rope_index`` computes them
over a whole sequence (text: one position per token on all three axes; an image: its grid on
the t/h/w axes starting at the running position, which then advances by max(h, w) of the
merged grid). They are passed explicitly, so the model never falls back to 1-D positions.
"""

from __future__ import annotations

import inspect
import time

import torch
from PIL import Image

from .parsing import complete_fenced_box
from .conversation import Conversations, FedImage, Generated, Row, Sampling
from .kvcache import new_cache as _new_cache

def unwrap(model):
    """The ``Qwen2_5_VLForConditionalGeneration`` inside a peft wrapper (LoRA layers stay live)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not hasattr(inner, "lm_head") or not hasattr(getattr(inner, "model", None), "language_model"):
        raise TypeError(f"{type(model).__name__} is not a Qwen2.5-VL model")
    return inner


def stop_ids(model, tok) -> list[int]:
    """The ids that end an assistant turn: the checkpoint's ``generation_config.eos_token_id``
    (Qwen2.5-VL-7B-Instruct: ``[151645, 151643]``, ``<|im_end|>`` and ``<|endoftext|>``), so a
    fine-tune that stops on other ids stops right, plus ``<|im_end|>`` — the chat template's end
    of turn, which the engine's turn structure needs. Without a generation config: the
    tokenizer's ``<|im_end|>``, ``<|endoftext|>`` and eos token."""
    end = tok.convert_tokens_to_ids("<|im_end|>")
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if configured is None:
        ids = {end, tok.convert_tokens_to_ids("<|endoftext|>"), tok.eos_token_id}
    else:
        ids = {end, *([configured] if isinstance(configured, int) else configured)}
    return sorted(i for i in ids if isinstance(i, int) and i >= 0)


def cache_keyword(forward) -> str:
    """The keyword a transformers forward takes its KV cache by: ``cache`` from 5.2x on (where
    ``past_key_values`` is deprecated, to go in 5.40), ``past_key_values`` in 5.17."""
    return "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"


class QwenBackend:
    """Conversations with a Qwen2.5-VL model and its processor."""

    def __init__(self, model, processor, kv_reuse: bool = True):
        self.model = model
        self.core = unwrap(model)
        self.processor = processor
        self.tok = processor.tokenizer
        self.kv_reuse = kv_reuse
        cfg = self.core.config
        self.image_token_id = cfg.image_token_id
        self.pad_id = self.tok.pad_token_id if self.tok.pad_token_id is not None else 0
        self.im_end_id = self.tok.convert_tokens_to_ids("<|im_end|>")
        self.eos_ids = stop_ids(self.core, self.tok)
        self._cache_kw = cache_keyword(self.core.model.language_model.forward)
        self._suppress: torch.Tensor | None = None
        self._system_cache: dict[str, str] = {}

    # ----- text and images -> tokens -------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.core.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.core.lm_head.weight.dtype

    def suppressed_ids(self) -> torch.Tensor:
        """(V,) bool: tokens never sampled — every special token but end-of-turn, and the
        padding rows of the embedding table. A sampled ``<|image_pad|>`` would corrupt turn 2."""
        if self._suppress is None:
            vocab = self.core.lm_head.weight.shape[0]
            mask = torch.zeros(vocab, dtype=torch.bool)
            mask[len(self.tok):] = True
            special = set(self.tok.all_special_ids)
            for name in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id"):
                tid = getattr(self.core.config, name, None)
                if tid is not None:
                    special.add(tid)
            for tok in ("<|vision_pad|>", "<|im_start|>"):
                tid = self.tok.convert_tokens_to_ids(tok)
                if isinstance(tid, int) and tid >= 0 and tid != self.tok.unk_token_id:
                    special.add(tid)
            for tid in special - set(self.eos_ids):
                if 0 <= tid < vocab:
                    mask[tid] = True
            self._suppress = mask.to(self.device)
        return self._suppress

    def _template(self, messages: list[dict], generation_prompt: bool) -> str:
        return self.processor.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=generation_prompt
        )

    def render_start(self, messages: list[dict]) -> str:
        """The chat-template text of the first messages, ending with the assistant prompt."""
        return self._template(messages, True)

    def render_user(self, message: dict) -> str:
        """The chat-template text one more user turn adds (after the previous ``<|im_end|>``)."""
        key = "system"
        system = {"role": "system", "content": [{"type": "text", "text": key}]}
        before = self._template([system], False)
        after = self._template([system, message], True)
        if not after.startswith(before):
            raise RuntimeError("the chat template does not render turns incrementally")
        return after[len(before):]

    def feed_image(self, image: Image.Image) -> FedImage:
        """Pixel values for an image already resized to its model frame (no further resize)."""
        w, h = image.size
        if w % 28 or h % 28:
            raise ValueError(f"image must be resized to its model frame first (got {w}×{h})")
        out = self.processor.image_processor(
            images=[image], size={"shortest_edge": w * h, "longest_edge": w * h}, return_tensors="pt"
        )
        grid = tuple(int(v) for v in out["image_grid_thw"][0].tolist())
        if grid[1] * 14 != h or grid[2] * 14 != w:
            raise RuntimeError(f"the image processor resized a {w}×{h} image to grid {grid}")
        return FedImage(image, out["pixel_values"], grid)  # type: ignore[arg-type]

    def _add(self, row: Row, text: str, images: list[FedImage], policy: int = 0) -> None:
        """Append chat text whose ``<|image_pad|>`` placeholders take ``images`` in order."""
        pieces = text.split("<|image_pad|>")
        if len(pieces) - 1 != len(images):
            raise ValueError(f"{len(pieces) - 1} image placeholders for {len(images)} images")
        for i, piece in enumerate(pieces):
            if piece:
                row.add_tokens(self.tok(piece, add_special_tokens=False)["input_ids"], policy)
            if i < len(images):
                row.add_image(images[i], self.image_token_id)

    @staticmethod
    def _content(message: dict) -> list[Image.Image]:
        return [c["image"] for c in message["content"] if c.get("type") == "image"]

    def start(self, prompts: list[list[dict]], group_size: int = 1) -> Conversations:
        """New conversations, one per prompt (a list of chat messages with PIL images in
        ``{"type": "image", "image": img}`` items), each to be sampled ``group_size`` times."""
        rows = []
        for messages in prompts:
            row = Row()
            images = [self.feed_image(img) for m in messages for img in self._content(m)]
            self._add(row, self.render_start(messages), images)
            rows.append(row)
        return Conversations(rows, repeat=group_size)

    def append(self, convs: Conversations, index: int, message: dict) -> None:
        """Queue a user turn (environment tokens, mask 0) on row ``index``.

        The previous assistant turn is closed the way the chat template closes one — its tokens
        as sampled, then ``<|im_end|>\n``: a turn that ended on ``<|im_end|>`` gets ``\n``; one
        that stopped on a box, on the length limit or on another stop id (``<|endoftext|>``)
        gets ``<|im_end|>\n`` after it. The sampled stop token stays where it was sampled (a
        policy token the trainer scores), so sampling and the training forward read the same
        sequence, and the template applied to the turn's tokens gives the same ids.
        """
        row = convs.rows[index]
        close = "\n" if row.tokens and row.tokens[-1] == self.im_end_id else "<|im_end|>\n"
        images = [self.feed_image(img) for img in self._content(message)]
        self._add(row, close + self.render_user(message), images)

    # ----- the forward -----------------------------------------------------------------------

    def image_features(self, fed: list[FedImage]) -> torch.Tensor:
        """(tokens, hidden) the vision tower's merged features of the images, in order."""
        pixel_values = torch.cat([f.pixel_values for f in fed]).to(self.device, self.dtype)
        grid = torch.tensor([f.grid_thw for f in fed], device=self.device)
        out = self.core.model.get_image_features(pixel_values, grid)
        feats = getattr(out, "pooler_output", out)
        if isinstance(feats, (list, tuple)):
            feats = torch.cat(list(feats))
        return feats

    def _forward(self, convs: Conversations, chunks: dict[int, int]) -> torch.Tensor:
        """Feed rows' uncached tokens (``chunks``: row → count) and return the last logits (B, V).

        Chunks are right-aligned: each row's last new token sits in the last column, shorter
        chunks get holes before them, rows not in ``chunks`` get a column of holes.
        """
        rows = convs.rows
        B = len(rows)
        T = max(chunks.values())
        fed: list[FedImage] = []
        if T == 1 and all(rows[b].images_cached == len(rows[b].images) for b in chunks):
            # a decode step (one text token per row): built from plain lists, no per-row tensors
            ids_l, pos_l, attn_l = [self.pad_id] * B, [(0, 0, 0)] * B, [0] * B
            for b, n in chunks.items():
                if n:
                    row = rows[b]
                    ids_l[b], pos_l[b], attn_l[b] = row.tokens[row.cached], row.positions[row.cached], 1
                    row.cached += 1
            ids = torch.tensor(ids_l).unsqueeze(1)
            pos = torch.tensor(pos_l).T.unsqueeze(-1)
            new_attn = torch.tensor(attn_l).unsqueeze(1)
            holes = len(chunks) < B or 0 in attn_l
        else:
            ids = torch.full((B, T), self.pad_id, dtype=torch.long)
            pos = torch.zeros((3, B, T), dtype=torch.long)
            new_attn = torch.zeros((B, T), dtype=torch.long)
            holes = False
            for b, row in enumerate(rows):
                n = chunks.get(b, 0)
                holes = holes or n < T
                if not n:
                    continue
                lo = row.cached
                ids[b, T - n:] = torch.tensor(row.tokens[lo:lo + n])
                pos[:, b, T - n:] = torch.tensor(row.positions[lo:lo + n]).T
                new_attn[b, T - n:] = 1
                n_img = row.tokens[lo:lo + n].count(self.image_token_id)
                while n_img > 0:
                    img = row.images[row.images_cached]
                    fed.append(img)
                    row.images_cached += 1
                    n_img -= img.tokens
                if n_img != 0:
                    raise RuntimeError("a chunk splits an image's tokens")
                row.cached += n
        # a cache without holes needs no mask: plain causal attention (and no mask at all for a
        # one-token step), the path plain transformers decoding takes
        convs.holes = convs.holes or holes
        ids, pos, new_attn = ids.to(self.device), pos.to(self.device), new_attn.to(self.device)
        embeds = self.core.model.get_input_embeddings()(ids)
        if fed:
            feats = self.image_features(fed).to(embeds.dtype)
            mask = (ids == self.image_token_id).unsqueeze(-1).expand_as(embeds)
            embeds = embeds.masked_scatter(mask, feats)
        attn = new_attn if convs.attn is None else torch.cat([convs.attn, new_attn], dim=1)
        if convs.cache is None:
            convs.cache = _new_cache(self.core.config.text_config)
        out = self.core.model.language_model(
            inputs_embeds=embeds,
            attention_mask=attn if convs.holes else None,
            position_ids=pos,
            use_cache=True,
            **{self._cache_kw: convs.cache},
        )
        convs.attn = attn
        hidden = out.last_hidden_state[:, -1]            # (B, H) last column only
        return self.core.lm_head(hidden).float()         # (B, V)

    def _expand(self, convs: Conversations, logits: torch.Tensor) -> torch.Tensor:
        """Turn each shared prompt into its group of ``repeat`` rows (cache included)."""
        g = convs.repeat
        convs.rows = [r.copy() if k else r for r in convs.rows for k in range(g)]
        convs.cache.batch_repeat_interleave(g)
        convs.attn = convs.attn.repeat_interleave(g, dim=0)
        convs.repeat = 1
        return logits.repeat_interleave(g, dim=0)

    def reset_cache(self, convs: Conversations) -> None:
        """Forget the KV cache: the next prefill re-encodes every row from its first token."""
        convs.cache, convs.attn, convs.holes = None, None, False
        for row in convs.rows:
            row.cached = 0
            row.images_cached = 0

    # ----- decoding --------------------------------------------------------------------------

    def pick(self, logits: torch.Tensor, s: Sampling, gen: torch.Generator | None, rows: list[int],
             turns: list[list[int]]):
        """Sample (or argmax) the next token of each decoding row; returns ids and their log-probs (B,).

        ``logits`` (B, V): one row per decoding conversation row ``rows[i]``, whose tokens so far in
        this turn are ``turns[i]``. The hook for backends that choose tokens otherwise (tests and
        the benchmark force scripted text): whatever they return, the log-prob must be the
        policy's own ``log_softmax(logits / T)[token]``, which the trainer recomputes. The decode
        loop applies the stop rules (end of turn, length, a complete box) to what comes back."""
        scaled = logits / s.temperature if s.temperature > 0 else logits
        logp = torch.log_softmax(scaled, dim=-1)        # the policy's distribution (trainer recomputes it)
        masked = scaled.masked_fill(self.suppressed_ids(), float("-inf"))
        if s.temperature <= 0:
            ids = masked.argmax(dim=-1)
        else:
            if s.top_k and s.top_k > 0:
                kth = torch.topk(masked, min(s.top_k, masked.shape[-1]), dim=-1).values[:, -1:]
                masked = masked.masked_fill(masked < kth, float("-inf"))
            probs = torch.softmax(masked, dim=-1)
            if s.top_p < 1.0:
                sorted_p, order = probs.sort(dim=-1, descending=True)
                drop = sorted_p.cumsum(-1) - sorted_p > s.top_p
                sorted_p = sorted_p.masked_fill(drop, 0.0)
                probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
            ids = torch.multinomial(probs, 1, generator=gen).squeeze(-1)
        return ids, logp.gather(-1, ids.unsqueeze(-1)).squeeze(-1)

    def generate(self, convs: Conversations, rows: list[int], sampling: Sampling, stop_on_box: set[int] = frozenset()):
        """Prefill what is queued and generate one assistant turn for ``rows``; rows in
        ``stop_on_box`` stop right after a fenced JSON block with a usable box (turn 1).

        A generator: yields ``(row, text_delta)`` while decoding and returns ``{row: Generated}``.
        Closing it stops decoding at once. Each resumption runs in inference mode on the thread that
        resumes it: a server may step one stream from several worker threads, and inference mode is
        per thread (a ``with`` around the whole generator would hold only on the first thread, and
        leak into the consumer's code between steps).
        """
        inner = self._generate(convs, rows, sampling, stop_on_box)
        try:
            while True:
                with torch.inference_mode():
                    try:
                        item = next(inner)
                    except StopIteration as stop:
                        return stop.value
                yield item
        finally:
            with torch.inference_mode():
                inner.close()

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _generate(self, convs, rows, sampling, stop_on_box):
        if convs.generator is None and sampling.seed is not None:
            convs.generator = torch.Generator(device=self.device).manual_seed(sampling.seed)
        gen = convs.generator
        if not self.kv_reuse and convs.cache is not None:
            self.reset_cache(convs)
        t0 = time.perf_counter()
        base = rows if convs.repeat == 1 else sorted({r // convs.repeat for r in rows})
        chunks = {b: len(convs.rows[b].tokens) - convs.rows[b].cached for b in base}
        prefill_tokens = dict(chunks)
        logits = self._forward(convs, chunks)
        if convs.repeat > 1:
            g = convs.repeat
            logits = self._expand(convs, logits)
            prefill_tokens = {r: prefill_tokens[r // g] for r in rows}
        self._sync()
        prefill_s = time.perf_counter() - t0
        t1 = time.perf_counter()

        active = list(rows)
        states = {r: _Detok() for r in rows}
        out: dict[int, Generated] = {}
        row_index = torch.tensor(active, device=self.device)
        while active:
            ids, lps = self.pick(logits[row_index], sampling, gen, active, [states[r].ids for r in active])
            ids_l, lps_l = ids.tolist(), lps.tolist()
            still = []
            for r, tid, lp in zip(active, ids_l, lps_l):
                row, st = convs.rows[r], states[r]
                row.add_tokens([tid], policy=1, logprobs=[lp])
                st.ids.append(tid)
                st.lps.append(lp)
                stop = None
                if tid in self.eos_ids:
                    stop = "eos"
                else:
                    delta = st.step(self.tok)
                    if delta:
                        yield r, delta
                        if r in stop_on_box and "`" in delta and complete_fenced_box(st.text) is not None:
                            stop = "box"
                if stop is None and len(st.ids) >= sampling.max_new_tokens:
                    stop = "length"
                if stop is None:
                    still.append(r)
                    continue
                rest = st.flush(self.tok)
                if rest:
                    yield r, rest
                self._sync()
                out[r] = Generated(
                    text=st.text, token_ids=st.ids, logprobs=st.lps, stop=stop,
                    prefill_tokens=prefill_tokens[r], prefill_seconds=prefill_s,
                    decode_seconds=time.perf_counter() - t1,
                )
            active = still
            if not active:
                break
            row_index = torch.tensor(active, device=self.device)
            logits = self._forward(convs, {r: 1 for r in active})
        return out


class _Detok:
    """Incremental detokenisation of one row's turn: deltas that add up to the turn's text."""

    def __init__(self):
        self.ids: list[int] = []
        self.lps: list[float] = []
        self.text = ""
        self.prefix = 0   # tokens before the window
        self.read = 0     # tokens already turned into text

    def _decode(self, tok, ids):
        return tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def step(self, tok) -> str:
        prefix_text = self._decode(tok, self.ids[self.prefix:self.read])
        new_text = self._decode(tok, self.ids[self.prefix:])
        if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
            delta = new_text[len(prefix_text):]
            self.prefix, self.read = self.read, len(self.ids)
            self.text += delta
            return delta
        return ""

    def flush(self, tok) -> str:
        prefix_text = self._decode(tok, self.ids[self.prefix:self.read])
        new_text = self._decode(tok, self.ids[self.prefix:])
        delta = new_text[len(prefix_text):] if len(new_text) > len(prefix_text) else ""
        self.prefix = self.read = len(self.ids)
        self.text += delta
        return delta
