"""Forward passes for the generation engine: a batch of rows, each one growing sequence.

Both runners keep the same contract so the scheduler in engine.py does not care which one runs:
`add(prompts)` appends rows and returns the logits of each prompt's next token, `step(tokens)`
feeds one token per row and returns the next logits, `remove(rows)` drops finished rows and
returns the new row order.

SlotRunner is the fast path for Llama-shaped decoders (Llama, Mistral without a sliding window,
Qwen2, Qwen3). It reuses the model's own modules but keeps the key/value cache in one tensor
allocated up front: transformers' default cache concatenates on every step, which on a CPU
spends about as long allocating and copying as the matrix multiplies themselves. Every row
stores its tokens from position 0, so prompts need no padding during decoding, rows can join
while others run (continuous batching) and a finished row is replaced by moving the last row
into its place.

HFRunner runs any causal LM through its regular forward (left padding, transformers' cache);
new rows can only join when the batch is empty.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

FAST_MODEL_TYPES = {"llama", "mistral", "qwen2", "qwen3"}


def fast_path_supported(model) -> bool:
    config = model.config
    if config.model_type not in FAST_MODEL_TYPES:
        return False
    layer_types = getattr(config, "layer_types", None)
    if layer_types and any(t != "full_attention" for t in layer_types):
        return False
    if getattr(config, "sliding_window", None) is not None and not layer_types:
        return False  # Mistral-style window: every layer slides
    inner = getattr(model, "model", None)
    return all(hasattr(inner, name) for name in ("embed_tokens", "layers", "norm", "rotary_emb"))


class SlotRunner:
    supports_joining = True

    def __init__(self, model):
        from importlib import import_module

        self.model = model
        self.inner = model.model
        config = model.config
        self.layers = list(self.inner.layers)
        attn = self.layers[0].self_attn
        self.head_dim = attn.head_dim
        self.n_heads = config.num_attention_heads
        self.n_kv = config.num_key_value_heads
        self.groups = self.n_heads // self.n_kv
        self.scaling = attn.scaling
        self.qk_norm = hasattr(attn, "q_norm")
        modeling = import_module(type(attn).__module__)
        self.rope = modeling.apply_rotary_pos_emb
        self.dtype = next(model.parameters()).dtype
        self.device = next(model.parameters()).device
        self.keys: torch.Tensor | None = None  # (layers, slots, kv heads, capacity, head dim)
        self.values: torch.Tensor | None = None
        self.lengths = torch.zeros(0, dtype=torch.long)
        self.n = 0
        # positions [0, clean) of every running row hold finite numbers and no row is longer
        # than clean: decoding reads up to the longest row, and a NaN left in memory would
        # pass through a masked position (its weight is 0, but 0 * NaN is NaN)
        self.clean = 0

    # ------------------------------------------------------------ memory

    @staticmethod
    def bytes_per_token(model) -> int:
        config = model.config
        head_dim = getattr(config, "head_dim", None)
        head_dim = head_dim or config.hidden_size // config.num_attention_heads
        itemsize = next(model.parameters()).element_size()
        return 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * itemsize

    @property
    def capacity(self) -> int:
        return 0 if self.keys is None else self.keys.shape[3]

    @property
    def slots(self) -> int:
        return 0 if self.keys is None else self.keys.shape[1]

    def reserve(self, slots: int, capacity: int) -> None:
        """(Re)allocate the cache; only called while no row is running."""
        assert self.n == 0
        if self.keys is not None and self.slots >= slots and self.capacity >= capacity:
            return
        self.keys = self.values = None  # free the old cache before allocating the new one
        shape = (len(self.layers), slots, self.n_kv, capacity, self.head_dim)
        self.keys = torch.empty(shape, dtype=self.dtype, device=self.device)
        self.values = torch.empty(shape, dtype=self.dtype, device=self.device)
        self.lengths = torch.zeros(slots, dtype=torch.long, device=self.device)
        self.clean = 0

    def _clear(self, rows: slice, start: int, stop: int) -> None:
        if stop > start:
            self.keys[:, rows, :, start:stop] = 0
            self.values[:, rows, :, start:stop] = 0

    def _reach(self, width: int) -> None:
        """Make [0, width) finite for the running rows before it is read."""
        self._clear(slice(0, self.n), self.clean, width)
        self.clean = max(self.clean, width)

    def release(self) -> None:
        self.keys = self.values = None
        self.n = 0

    # ------------------------------------------------------------ forward

    def _project(self, attn, x, shape):
        q = attn.q_proj(x).view(*shape, self.n_heads, self.head_dim)
        k = attn.k_proj(x).view(*shape, self.n_kv, self.head_dim)
        v = attn.v_proj(x).view(*shape, self.n_kv, self.head_dim)
        if self.qk_norm:
            q, k = attn.q_norm(q), attn.k_norm(k)
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)

    def _logits(self, hidden):
        return self.model.lm_head(self.inner.norm(hidden)).float()

    @torch.inference_mode()
    def add(self, prompts: list[list[int]]) -> torch.Tensor:
        """Prefill prompts into the next free slots; identical prompts are computed once."""
        unique = list(dict.fromkeys(tuple(p) for p in prompts))
        where = {p: i for i, p in enumerate(unique)}
        copy_of = torch.tensor([where[tuple(p)] for p in prompts], device=self.device)
        lengths = torch.tensor([len(p) for p in unique], device=self.device)
        width = int(lengths.max())
        assert self.n + len(prompts) <= self.slots and width <= self.capacity
        ids = torch.zeros(len(unique), width, dtype=torch.long, device=self.device)
        for i, p in enumerate(unique):
            ids[i, : len(p)] = torch.tensor(p)
        positions = torch.arange(width, device=self.device).expand(len(unique), width)
        # causal, and never attend to the padding after a short prompt
        causal = torch.ones(width, width, dtype=torch.bool, device=self.device).tril()
        mask = (causal[None] & (positions < lengths[:, None])[:, None, :])[:, None]
        rows = slice(self.n, self.n + len(prompts))
        # the layers below write [0, width) of the new rows
        self._clear(rows, width, self.clean)
        self._reach(width)

        h = self.inner.embed_tokens(ids)
        cos, sin = self.inner.rotary_emb(h, positions)
        for i, layer in enumerate(self.layers):
            attn = layer.self_attn
            q, k, v = self._project(attn, layer.input_layernorm(h), (len(unique), width))
            q, k = self.rope(q, k, cos, sin)
            self.keys[i, rows, :, :width] = k[copy_of]
            self.values[i, rows, :, :width] = v[copy_of]
            if self.groups > 1:
                k = k.repeat_interleave(self.groups, dim=1)
                v = v.repeat_interleave(self.groups, dim=1)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scaling)
            h = h + attn.o_proj(out.transpose(1, 2).reshape(len(unique), width, -1))
            h = h + layer.mlp(layer.post_attention_layernorm(h))
        last = h[torch.arange(len(unique)), lengths - 1]
        self.lengths[rows] = lengths[copy_of]
        self.n += len(prompts)
        return self._logits(last)[copy_of]

    @torch.inference_mode()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        n = self.n
        lengths = self.lengths[:n]
        width = int(lengths.max()) + 1
        rows = torch.arange(n, device=self.device)
        # decoding: every query head of a group sees the same keys, so the group's heads
        # ride along as extra query positions instead of copying the keys per head
        mask = (torch.arange(width, device=self.device) <= lengths[:, None])[:, None, None, :]
        self._reach(width)

        h = self.inner.embed_tokens(tokens.to(self.device))[:, None]
        cos, sin = self.inner.rotary_emb(h, lengths[:, None])
        for i, layer in enumerate(self.layers):
            attn = layer.self_attn
            q, k, v = self._project(attn, layer.input_layernorm(h), (n, 1))
            q, k = self.rope(q, k, cos, sin)
            self.keys[i, rows, :, lengths] = k[:, :, 0]
            self.values[i, rows, :, lengths] = v[:, :, 0]
            out = F.scaled_dot_product_attention(
                q.reshape(n, self.n_kv, self.groups, self.head_dim),
                self.keys[i, :n, :, :width],
                self.values[i, :n, :, :width],
                attn_mask=mask,
                scale=self.scaling,
            )
            h = h + attn.o_proj(out.reshape(n, 1, -1))
            h = h + layer.mlp(layer.post_attention_layernorm(h))
        self.lengths[:n] += 1
        return self._logits(h[:, 0])

    def remove(self, rows: list[int]) -> list[int]:
        """Drop rows; the last rows move into the gaps. Returns new row -> old row."""
        order = list(range(self.n))
        for row in sorted(rows, reverse=True):
            last = len(order) - 1
            if row != last:
                length = int(self.lengths[last])
                self.keys[:, row, :, :length] = self.keys[:, last, :, :length]
                self.values[:, row, :, :length] = self.values[:, last, :, :length]
                self.lengths[row] = self.lengths[last]
                order[row] = order[last]
            order.pop()
        self.n = len(order)
        return order


class HFRunner:
    """Any causal LM through its own forward; rows join only when the batch is empty."""

    supports_joining = False

    def __init__(self, model, pad_id: int):
        self.model = model
        self.pad_id = pad_id
        self.device = next(model.parameters()).device
        self.cache = None
        self.mask = None
        self.n = 0
        self.slots = self.capacity = 0

    def reserve(self, slots: int, capacity: int) -> None:
        self.slots, self.capacity = slots, capacity  # the cache itself grows as it goes

    def release(self) -> None:
        self.cache = self.mask = None
        self.n = 0

    def _forward(self, ids: torch.Tensor) -> torch.Tensor:
        positions = (self.mask.cumsum(-1) - 1).clamp(min=0)[:, -ids.shape[1] :]
        out = self.model(
            input_ids=ids,
            attention_mask=self.mask,
            position_ids=positions,
            past_key_values=self.cache,
            use_cache=True,
            logits_to_keep=1,
        )
        self.cache = out.past_key_values
        return out.logits[:, -1].float()

    @torch.inference_mode()
    def add(self, prompts: list[list[int]]) -> torch.Tensor:
        assert self.n == 0
        from transformers import DynamicCache

        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        self.mask = torch.zeros(len(prompts), width, dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, width - len(p) :] = torch.tensor(p)
            self.mask[i, width - len(p) :] = 1
        self.mask = self.mask.to(self.device)
        self.cache = DynamicCache(config=self.model.config)
        self.n = len(prompts)
        return self._forward(ids.to(self.device))

    @torch.inference_mode()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        ones = torch.ones(self.n, 1, dtype=self.mask.dtype, device=self.device)
        self.mask = torch.cat([self.mask, ones], dim=1)
        return self._forward(tokens.to(self.device)[:, None])

    def remove(self, rows: list[int]) -> list[int]:
        gone = set(rows)
        order = [r for r in range(self.n) if r not in gone]
        self.n = len(order)
        if not order:
            self.release()
        elif gone:
            index = torch.tensor(order, device=self.device)
            self.cache.batch_select_indices(index)
            self.mask = self.mask[index]
        return order
