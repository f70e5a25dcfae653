"""Image features a probe feeds the language model instead of its vision tower's.

The look-up harness (:mod:`train.playground.lookup`) asks whether the language model can learn
the name → card look-up at all, apart from what a tower sees. These features say, per merged
overview token, a card's colour (or none), its row and its column — one-hots through a map into
the model's width — and :func:`feed` makes the model take them in place of its images' features.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

def conversation_images(ex) -> list:
    """Every image of an example's conversation, in order: its context's, then its own."""
    return [image for _, images, _ in ex.context for image in images] + list(ex.images)


class PerfectFeatures:
    """Image features made from per-token classes: one-hots of (colour, row, column) through a map
    into the language model's width — a random orthonormal one as large as a token embedding
    (:meth:`random`), the same with the colour words' own embeddings for the colours
    (:meth:`aligned`), or the additive model of the tower's own features (:meth:`fitted`)."""

    def __init__(self, mapping, n_col: int, side: int, words=None):
        self.map, self.n_col, self.side = mapping, n_col, side       # (hidden, n_col + 2·side)
        self.words = words       # aligned: (embedding, token ids of the colour words), the colour part read live

    @classmethod
    def aligned(cls, core, tokenizer, side: int, seed: int = 0) -> "PerfectFeatures":
        """As :meth:`random`, but a card's colour is said with its colour word's own input
        embedding (" red", as the prompt writes it), read live as training moves it: features
        aligned with the words, as a VLM's projector learns them from captions."""
        from mgpo.playground.world import COLOURS

        out = cls.random(core, side, seed)
        ids = [tokenizer(" " + name, add_special_tokens=False)["input_ids"][0] for name in sorted(COLOURS)]
        out.words = (core.get_input_embeddings(), ids)
        return out

    @classmethod
    def random(cls, core, side: int, seed: int = 0) -> "PerfectFeatures":
        import torch

        from mgpo.playground.world import COLOURS

        hidden = core.config.text_config.hidden_size
        n_col = len(COLOURS) + 1
        dims = n_col + 2 * side
        if dims > hidden:
            raise ValueError(f"perfect features need {dims} dimensions; the model is {hidden} wide")
        g = torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn(hidden, dims, generator=g))
        norm = core.get_input_embeddings().weight.detach().float().norm(dim=-1).mean().item()
        return cls((q * norm / 3 ** 0.5).to(core.device, next(core.parameters()).dtype), n_col, side)   # three one-hots

    @classmethod
    def fitted(cls, backend, scenes, side: int) -> "PerfectFeatures":
        """Least squares of the tower's features on the one-hots over ``scenes`` ((rendered
        overview as fed, per-token classes) pairs): what the tower says of colour, row and column,
        without the clutter's and the background's share — the features the base reads, noise-free."""
        import torch

        from mgpo.playground.world import COLOURS

        probe = cls(None, len(COLOURS) + 1, side)
        xs, ys = [], []
        with torch.no_grad():
            for image, classes in scenes:
                ys.append(backend.image_features([backend.feed_image(image)]).float().cpu())
                xs.append(probe.onehot(classes, "cpu", torch.float32))
        x, y = torch.cat(xs), torch.cat(ys)
        w = torch.linalg.lstsq(x, y, driver="gelsd").solution                     # (dims, hidden)
        return cls(w.T.to(backend.device, backend.dtype).contiguous(), probe.n_col, side)

    def onehot(self, classes, device, dtype):
        import torch

        k = torch.tensor(classes, device=device)           # (tokens, 3)
        out = torch.zeros(len(classes), self.n_col + 2 * self.side, device=device, dtype=dtype)
        rows = torch.arange(len(classes), device=device)
        out[rows, k[:, 0]] = 1
        out[rows, self.n_col + k[:, 1]] = 1
        out[rows, self.n_col + self.side + k[:, 2]] = 1
        return out

    def __call__(self, classes) -> "torch.Tensor":
        onehot = self.onehot(classes, self.map.device, self.map.dtype)
        if self.words is None:
            return onehot @ self.map.T
        import torch

        embed, ids = self.words
        colours = embed.weight[torch.tensor(ids, device=self.map.device)].detach().to(self.map.dtype) / 3 ** 0.5
        mapping = torch.cat([self.map[:, :1], colours.T, self.map[:, self.n_col:]], 1)
        return onehot @ mapping.T


def patch_image_features(core, features) -> None:
    """Make the model take ``features`` (tokens, hidden), in order, for its images' features."""
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    model = core.model

    def get_image_features(pixel_values, image_grid_thw=None, **kw):
        sizes = (image_grid_thw.prod(-1) // model.visual.spatial_merge_size ** 2).tolist()
        return BaseModelOutputWithPooling(pooler_output=features.split(sizes))

    model.get_image_features = get_image_features


def feed(core, perfect: PerfectFeatures, rows) -> None:
    """Patch the model to take, for each (token classes, example) of ``rows`` in batch order, the
    features of those classes once per image of the example's conversation (the overview, once
    or twice)."""
    patch_image_features(core, perfect([c for classes, ex in rows for _ in conversation_images(ex) for c in classes]))


def unpatch(core) -> None:
    core.model.__dict__.pop("get_image_features", None)
