"""The engine's KV cache: transformers' ``DynamicCache`` with layers that grow in place."""

from __future__ import annotations


def new_cache(config):
    """A transformers ``DynamicCache`` whose layers grow in place (:func:`_growing_layer`): the same
    cache object transformers' own decoding uses, without its ``torch.cat`` of the whole cache at
    every step (which makes T decode steps copy O(T²) tensors)."""
    from transformers import DynamicCache

    try:
        cache = DynamicCache(config=config)
    except TypeError:
        cache = DynamicCache()
    layers = getattr(cache, "layers", None)
    if layers and all(type(layer).__name__ == "DynamicLayer" for layer in layers):
        cls = _growing_layer(type(layers[0]))
        cache.layers = [cls() for _ in layers]
    return cache


_GROWING: dict[type, type] = {}


def _growing_layer(base: type) -> type:
    """A subclass of transformers' ``DynamicLayer`` that keeps keys and values in buffers with
    spare room along the sequence, doubling when full: appending tokens writes into the buffer
    and ``keys``/``values`` are views of its filled part. Anything else transformers does to a
    layer (repeat or select rows, crop, reset) replaces ``keys``/``values``; the next append
    then adopts the new tensors as its buffers."""
    if base in _GROWING:
        return _GROWING[base]

    class GrowingLayer(base):
        _k = _v = _view_k = None

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            n = self.get_seq_length()
            if self._k is None or self.keys is not self._view_k:   # first append, or changed elsewhere
                self._k, self._v = (self.keys, self.values) if n else (None, None)
            new = key_states.shape[-2]
            if self._k is None or n + new > self._k.shape[-2] or self._k.shape[:2] != key_states.shape[:2]:
                cap = max(2 * (n + new), 64)
                k = key_states.new_empty((*key_states.shape[:2], cap, key_states.shape[-1]))
                v = value_states.new_empty((*value_states.shape[:2], cap, value_states.shape[-1]))
                if n:
                    k[..., :n, :] = self.keys
                    v[..., :n, :] = self.values
                self._k, self._v = k, v
            self._k[..., n:n + new, :] = key_states
            self._v[..., n:n + new, :] = value_states
            self.keys, self.values = self._k[..., :n + new, :], self._v[..., :n + new, :]
            self._view_k = self.keys
            return self.keys, self.values

    _GROWING[base] = GrowingLayer
    return GrowingLayer
