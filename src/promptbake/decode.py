"""The token-by-token decoding loop behind sampling: a preallocated KV cache, and nucleus sampling without sorting
the vocabulary.

transformers' `generate` samples by sorting every row's 49k-token vocabulary for top_p and drawing from the full
distribution; on CPU that cost about as much per step as the model's forward pass at batch 96 (torch.profiler:
sort 125 ms and exponential_ 126 ms per step, on one core). Here one `topk` per step finds each row's
TOP_P_CANDIDATES most likely tokens and the nucleus is looked for among them; only a row whose nucleus is wider
looks among 4× as many, and so on (SmolLM2 with the example persona: 8.9 % of row-steps need more than 256, 0.6 %
more than 1024). The same `topk` serves the teacher cache's top-k. The distribution sampled is exactly top-p's (test:
the kept set equals transformers' TopPLogitsWarper's).

transformers' DynamicCache grows by `torch.cat`, copying every layer's whole cache at every step: at batch 96 that
was 30 % of a decoding step (torch.profiler, SmolLM2-135M). `RoomyLayer` writes each step into room allocated once.
"""
from __future__ import annotations

import weakref

import torch
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer

from .precision import device_of

TOP_P_CANDIDATES = 256   # the teacher cache's default top-k: one topk per step serves both
DISTINCT_PREFILL = True  # prefill a prompt that several rows repeat once (False: every row; the tests compare)
WIDER = 4                # a row whose nucleus is wider looks among WIDER × as many, and so on up to the vocabulary


class RoomyLayer(DynamicLayer):
    """A DynamicLayer with room for `room` positions, allocated at the first update: appending writes in place.

    `keys`/`values` are views of the filled part, so everything that reads a DynamicLayer reads this one."""

    def __init__(self, room: int):
        super().__init__()
        self.room, self.length = room, 0

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self._allocate(key_states.shape[0], key_states, value_states)
        end = self.length + key_states.shape[-2]
        if end > self.room:
            raise RuntimeError(f"RoomyLayer holds {self.room} positions; {end} were asked for")
        self._keys[:, :, self.length:end] = key_states
        self._values[:, :, self.length:end] = value_states
        self.length = end
        self.keys, self.values = self._keys[:, :, :end], self._values[:, :, :end]
        return self.keys, self.values

    def _allocate(self, rows: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        self.device = keys.device
        self._keys = keys.new_empty(rows, keys.shape[1], self.room, keys.shape[-1])
        self._values = values.new_empty(rows, values.shape[1], self.room, values.shape[-1])
        self.is_initialized = True

    def select_rows(self, index: torch.Tensor) -> None:
        """Keep rows `index` of the cache, in that order (repeats allowed): a copy, with the same room. An empty
        layer (no prefix yet) is left alone: its first update allocates the rows it is given."""
        if not self.is_initialized:
            return
        self._keys, self._values = self._keys[index], self._values[index]
        self.keys, self.values = self._keys[:, :, :self.length], self._values[:, :, :self.length]

    @classmethod
    def from_prefix(cls, keys: torch.Tensor, values: torch.Tensor, rows: int, room: int) -> "RoomyLayer":
        """A layer for `rows` sequences that all start with one cached prefix ([1, H, P, D] keys and values)."""
        layer = cls(room)
        layer._allocate(rows, keys, values)
        layer.update(keys.expand(rows, -1, -1, -1), values.expand(rows, -1, -1, -1))
        return layer


_FALLBACK: dict[int, tuple] = {}   # id(config) -> (weak reference to it, reason or None); configs are unhashable


def cache_fallback(config) -> str | None:
    """Why this model's KV cache cannot be RoomyLayers or a repeated prefix cache, or None where it can.

    Both assume every layer keeps every position (transformers' plain DynamicLayer). A sliding-window layer
    (Gemma 2/3, Mistral or Qwen2 with a window) keeps only its window, so a prefix computed once would lose the
    positions before it; such models decode with transformers' own cache and run prompts whole."""
    known = _FALLBACK.get(id(config))
    if known and known[0]() is config:
        return known[1]
    kinds = sorted({type(layer).__name__ for layer in DynamicCache(config=config).layers} - {"DynamicLayer"})
    reason = f"its KV cache has {', '.join(kinds)} layers (sliding-window attention)" if kinds else None
    _FALLBACK[id(config)] = (weakref.ref(config), reason)
    return reason


def roomy_cache(model, prefix: list[int], rows: int, room: int) -> Cache:
    """A cache with room for `room` positions per row, holding `prefix` (computed once, batch 1) for every row."""
    layers = model.config.num_hidden_layers
    if not prefix:
        return Cache(layers=[RoomyLayer(room) for _ in range(layers)])
    once = model(input_ids=torch.tensor([prefix], device=device_of(model)), use_cache=True).cache
    return Cache(layers=[RoomyLayer.from_prefix(layer.keys, layer.values, rows, room) for layer in once.layers])


def _draw(probs: torch.Tensor, ids: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF draw from each row's (unnormalised) probabilities [R, K], with one uniform in [0, 1) per row."""
    cdf = probs.cumsum(-1)
    target = (uniforms.to(cdf.dtype) * cdf[:, -1])[:, None]
    choice = torch.searchsorted(cdf, target, right=True)                   # first index whose cdf passes target
    last = (probs > 0).long().cumsum(-1).argmax(-1, keepdim=True)          # rounding can overshoot: stay on mass
    return ids.gather(-1, torch.minimum(choice, last)).squeeze(-1)


def _nucleus_draw(probs_sorted: torch.Tensor, ids_sorted: torch.Tensor, top_p: float,
                  uniforms: torch.Tensor) -> torch.Tensor:
    """Draw from the smallest set of most likely tokens whose mass reaches top_p: [R, K] sorted desc → [R]."""
    above = probs_sorted.cumsum(-1) - probs_sorted              # mass of the strictly more likely tokens
    kept = torch.where(above < top_p, probs_sorted, torch.zeros_like(probs_sorted))
    kept[:, 0] = probs_sorted[:, 0]                              # the most likely token always stays
    return _draw(kept, ids_sorted, uniforms)


def nucleus_mask(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """Which tokens top-p keeps at each row ([B, V] bool): the set `next_tokens` draws from (for tests)."""
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    sorted_probs, sorted_ids = probs.sort(dim=-1, descending=True)
    above = sorted_probs.cumsum(-1) - sorted_probs
    keep_sorted = above < top_p
    keep_sorted[:, 0] = True
    return torch.zeros_like(probs, dtype=torch.bool).scatter(-1, sorted_ids, keep_sorted)


def next_tokens(logits: torch.Tensor, temperature: float, top_p: float,
                candidates: int = TOP_P_CANDIDATES, top=None, uniforms: torch.Tensor | None = None) -> torch.Tensor:
    """One token per row from raw logits [B, V]: greedy at temperature 0, else top-p sampling → [B].

    `top`: `logits.float().topk(n)` when the caller has it already (n ≥ candidates), so it is not computed twice.
    `uniforms`: one number in [0, 1) per row that decides the row's draw (inverse CDF); default: torch's global RNG.
    """
    if temperature == 0:
        return logits.argmax(-1)
    if uniforms is None:
        uniforms = torch.rand(logits.shape[0])
    uniforms = uniforms.to(logits.device)
    scaled = logits.float() / temperature
    if top_p >= 1.0:
        probs = torch.softmax(scaled, dim=-1)
        return _draw(probs, torch.arange(probs.shape[-1], device=probs.device).expand_as(probs), uniforms)
    vocab = scaled.shape[-1]
    k = min(candidates, vocab)
    if top is None or top.values.shape[-1] < k:
        top = logits.float().topk(k, dim=-1)                     # sorted, most likely first; same order at any T > 0
    log_z = torch.logsumexp(scaled, dim=-1, keepdim=True)
    out = torch.empty(scaled.shape[0], dtype=torch.long, device=scaled.device)
    pending = torch.arange(scaled.shape[0], device=scaled.device)
    values, ids = top.values[:, :k], top.indices[:, :k]
    while True:   # candidates, then WIDER × as many for the rows whose nucleus reaches past them, then all tokens
        probs = torch.exp(values / temperature - log_z[pending])
        inside = probs.sum(-1) >= top_p if values.shape[-1] < vocab else torch.ones_like(pending, dtype=torch.bool)
        if inside.any():
            out[pending[inside]] = _nucleus_draw(probs[inside], ids[inside], top_p, uniforms[pending[inside]])
        pending = pending[~inside]
        if not len(pending):
            return out
        k = min(k * WIDER, vocab)
        values, ids = logits[pending].float().topk(k, dim=-1)


@torch.no_grad()
def decode(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, cache, max_new_tokens: int,
           temperature: float, top_p: float, stop_ids: list[int], pad_id: int, on_step=None,
           keep_top: int = 0, generators: list[torch.Generator] | None = None,
           same_weights: bool = True) -> torch.Tensor:
    """Generate up to `max_new_tokens` after `input_ids` [B, L] (left-padded, or laid out around a cached prefix).

    Args:
        attention_mask: [B, L] over the whole input, cached prefix included.
        cache: a transformers Cache holding the first `cache.get_seq_length()` positions (roomy_cache), or None.
        on_step: called with each step's raw logits [B, V] (before temperature and top_p), the distribution that
            step's token is drawn from (the teacher's, for the cache), and its `topk(keep_top)` (None if 0).
        generators: one CPU generator per row, each giving its row one uniform per step: a row's tokens then depend
            on its own seed and logits only, not on the other rows of the batch. None: torch's global RNG.
        same_weights: every row runs the same weights, so rows with one prompt may share its prefill (False for
            baked.per_row_adapter batches).
    Returns:
        the new tokens [B, T] (pad after a row's stop token).
    """
    return _decode(model, input_ids.to(device_of(model)), attention_mask.to(device_of(model)), cache,
                   max_new_tokens, temperature, top_p, stop_ids, pad_id, on_step, keep_top, generators, same_weights)


def _prefill(model, input_ids, attention_mask, positions, cache, same_weights: bool = True):
    """(cache, last logits [B, V]) after running the prompts. Rows that repeat a prompt (several samples of one
    question, as held-out trajectories and the eval suites draw them) are run once: RoomyLayer caches are cut to
    the distinct rows, prefilled, and spread back, so a prompt asked 32 times costs one row of prefill. Only where
    every row runs the same weights: rows of a per-row adapter batch differ even when their prompts do not."""
    cached = cache.get_seq_length() if cache is not None else 0
    layers = getattr(cache, "layers", None) or []
    roomy = bool(layers) and all(isinstance(layer, RoomyLayer) for layer in layers)
    distinct, inverse = torch.unique(torch.cat([input_ids, attention_mask], -1), dim=0, return_inverse=True)
    if not (roomy and same_weights and DISTINCT_PREFILL) or len(distinct) == input_ids.shape[0]:
        out = model(input_ids=input_ids[:, cached:], attention_mask=attention_mask,
                    position_ids=positions[:, cached:], cache=cache, use_cache=True, logits_to_keep=1)
        return out.cache, out.logits[:, -1].float()
    rows = torch.arange(input_ids.shape[0], device=input_ids.device)
    first = torch.full((len(distinct),), input_ids.shape[0], dtype=torch.long, device=input_ids.device)
    first = first.scatter_reduce(0, inverse, rows, reduce="amin")          # the first row of each distinct prompt
    for layer in layers:
        layer.select_rows(first)
    out = model(input_ids=input_ids[first, cached:], attention_mask=attention_mask[first],
                position_ids=positions[first, cached:], cache=cache, use_cache=True, logits_to_keep=1)
    for layer in layers:
        layer.select_rows(inverse)
    return out.cache, out.logits[:, -1].float()[inverse]


def _decode(model, input_ids, attention_mask, cache, max_new_tokens, temperature, top_p, stop_ids, pad_id, on_step,
            keep_top, generators, same_weights=True) -> torch.Tensor:
    positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    cache, logits = _prefill(model, input_ids, attention_mask, positions, cache, same_weights)
    stop = torch.tensor(stop_ids, device=input_ids.device)
    finished = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
    position = positions[:, -1:]
    mask = torch.cat([attention_mask, attention_mask.new_ones(attention_mask.shape[0], max_new_tokens)], dim=-1)
    sampling = temperature > 0 and top_p < 1.0
    width = min(max(keep_top, TOP_P_CANDIDATES if sampling else 0), logits.shape[-1])
    tokens = []
    for _ in range(max_new_tokens):
        top = logits.topk(width, dim=-1) if width else None
        if on_step:
            on_step(logits, top)
        uniforms = torch.cat([torch.rand(1, generator=g) for g in generators]) if generators else None
        token = torch.where(finished, torch.full_like(finished, pad_id, dtype=torch.long),
                            next_tokens(logits, temperature, top_p, top=top, uniforms=uniforms))
        tokens.append(token)
        finished |= torch.isin(token, stop)
        if finished.all() or len(tokens) == max_new_tokens:
            break
        position = position + 1
        out = model(input_ids=token[:, None], attention_mask=mask[:, :attention_mask.shape[1] + len(tokens)],
                    position_ids=position, cache=cache, use_cache=True)
        cache, logits = out.cache, out.logits[:, -1].float()
    return torch.stack(tokens, dim=1)
