"""The decoder step: whisper's TextDecoder, run on a batch of rows with key/value caches.

`Decoder` holds the decoder's weights and runs them: `cross_attend` fills the
cross-attention cache of admitted chunks from their encoder output, `step`
feeds every row one token (self-attention against its cache), `forward` runs
whole sequences (prompts, language detection, text to align), `logits` ends
them. `KVCache` is the memory those calls read and write, one per batch.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from daemon.engine.encoder import compute_dtype

if TYPE_CHECKING:
    import torch
    from whisper.model import Whisper
    from whisper.tokenizer import Tokenizer


class KVCache:
    """The attention keys and values of a batch: self-attention per row, cross-attention per slot
    (a slot is `group` consecutive rows decoding one chunk)."""

    def __init__(self, model: Whisper, capacity: int, group: int) -> None:
        import torch

        dims = model.dims
        device, dtype = model.device, compute_dtype(model)
        heads, head_dim = dims.n_text_head, dims.n_text_state // dims.n_text_head
        rows = capacity * group
        self.group = group
        # zeros, not empty: masked-out cache entries are still multiplied by a zero
        # attention weight, and 0 * NaN from uninitialised memory would be NaN
        self.self_k = torch.zeros(
            dims.n_text_layer, rows, heads, dims.n_text_ctx, head_dim, device=device, dtype=dtype
        )
        self.self_v = torch.zeros_like(self.self_k)
        cross = (dims.n_text_layer, capacity, heads, dims.n_audio_ctx, head_dim)
        self.cross_k = torch.empty(cross, device=device, dtype=dtype)
        self.cross_v = torch.empty_like(self.cross_k)

    def move_slot(self, source: int, target: int) -> None:
        """Copy slot `source`'s keys and values into slot `target`."""
        g = self.group
        src, dst = slice(source * g, source * g + g), slice(target * g, target * g + g)
        for t in (self.self_k, self.self_v):
            t[:, dst] = t[:, src]
        for t in (self.cross_k, self.cross_v):
            t[:, target] = t[:, source]

    def reorder_rows(self, rows: torch.Tensor, sources: torch.Tensor) -> None:
        """Give `rows` the self-attention keys and values of `sources`."""
        for t in (self.self_k, self.self_v):
            t[:, rows] = t[:, sources]


class Decoder:
    """The decoder's weights, gathered once so that a step does no module lookups, and the passes
    through them."""

    def __init__(self, model: Whisper) -> None:
        decoder = model.decoder
        self.embedding = decoder.token_embedding.weight
        self.positions = decoder.positional_embedding
        self.ln = decoder.ln
        self.blocks = list(decoder.blocks)
        self.n_head = model.dims.n_text_head
        self.n_state = model.dims.n_text_state
        self.head_dim = self.n_state // self.n_head
        self.dtype = compute_dtype(model)
        self.device = model.device

    def cross_attend(self, cache: KVCache, first: int, features: torch.Tensor) -> None:
        """Given the encoder output of chunks admitted into slots first, first + 1, …, cache their
        cross-attention keys and values."""
        for layer, block in enumerate(self.blocks):
            attn = block.cross_attn
            k = _heads(_linear(features, attn.key), self.n_head)
            v = _heads(_linear(features, attn.value), self.n_head)
            cache.cross_k[layer, first : first + len(features)] = k
            cache.cross_v[layer, first : first + len(features)] = v

    def step(
        self, cache: KVCache, tokens: torch.Tensor, pos: torch.Tensor, positions: list[int]
    ) -> torch.Tensor:
        """Feed each row of the first len(positions) slots its last token; return the next token's logits.

        tokens and pos: (rows,), each row's last token and the position it
        takes; positions: the same position per slot, as Python ints. Each
        row's keys and values are written to the cache at its position.
        """
        import torch
        import torch.nn.functional as F

        n = len(positions)
        g = cache.group
        r = n * g
        length = max(positions) + 1
        uniform = min(positions) == max(positions)
        x = (self.embedding[tokens] + self.positions[pos])[:, None].to(self.dtype)
        mask = None if uniform else (torch.arange(length, device=self.device) <= pos[:, None])[:, None, None]
        row_index = torch.arange(r, device=self.device)
        for layer, block in enumerate(self.blocks):
            h = _norm(x, block.attn_ln)
            q, k, v = _linear(h, block.attn.query), _linear(h, block.attn.key), _linear(h, block.attn.value)
            k, v = k.view(r, self.n_head, self.head_dim), v.view(r, self.n_head, self.head_dim)
            if uniform:
                cache.self_k[layer, :r, :, positions[0]] = k
                cache.self_v[layer, :r, :, positions[0]] = v
            else:
                cache.self_k[layer, row_index, :, pos] = k
                cache.self_v[layer, row_index, :, pos] = v
            keys, values = cache.self_k[layer, :r, :, :length], cache.self_v[layer, :r, :, :length]
            a = F.scaled_dot_product_attention(_heads(q, self.n_head), keys, values, attn_mask=mask)
            x = x + _linear(_merge(a), block.attn.out)
            h = _norm(x, block.cross_attn_ln)
            q = _linear(h, block.cross_attn.query).view(n, g, self.n_head, self.head_dim).transpose(1, 2)
            a = F.scaled_dot_product_attention(q, cache.cross_k[layer, :n], cache.cross_v[layer, :n])
            x = x + _linear(a.transpose(1, 2).reshape(r, 1, self.n_state), block.cross_attn.out)
            x = x + _mlp(x, block)
        return self.logits(x[:, 0])

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Final layer norm and output projection, as whisper's TextDecoder ends."""
        import torch

        x = _norm(x, self.ln)
        return (x @ torch.transpose(self.embedding.to(x.dtype), 0, 1)).float()

    def forward(
        self,
        cache: KVCache,
        tokens: torch.Tensor,
        slots: torch.Tensor,
        cache_rows: torch.Tensor | None = None,
        capture: dict[int, list[int]] | None = None,
    ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """Run whole token sequences (prompts, or text to align) through the decoder.

        Given (n, t) tokens and each sequence's slot, return the hidden states
        before the final layer norm and, for the layers in `capture`, the
        cross-attention scores of the listed heads. Keys/values are written to
        the self-attention cache at `cache_rows` (each slot's rows, in order).
        With `capture`, attention is whisper's manual path, as its alignment uses.
        """
        import torch.nn.functional as F

        n, t = tokens.shape
        x = (self.embedding[tokens] + self.positions[:t]).to(self.dtype)
        scores = {}
        for layer, block in enumerate(self.blocks):
            h = _norm(x, block.attn_ln)
            q, k, v = _linear(h, block.attn.query), _linear(h, block.attn.key), _linear(h, block.attn.value)
            q, k, v = _heads(q, self.n_head), _heads(k, self.n_head), _heads(v, self.n_head)
            if cache_rows is not None:
                repeat = len(cache_rows) // n
                cache.self_k[layer, cache_rows, :, :t] = k.repeat_interleave(repeat, dim=0)
                cache.self_v[layer, cache_rows, :, :t] = v.repeat_interleave(repeat, dim=0)
            if capture is not None:
                a, _ = _manual_attention(q, k, v, causal=True)
            else:
                a = F.scaled_dot_product_attention(q, k, v, is_causal=t > 1)
            x = x + _linear(_merge(a), block.attn.out)
            h = _norm(x, block.cross_attn_ln)
            q = _heads(_linear(h, block.cross_attn.query), self.n_head)
            keys, values = cache.cross_k[layer, slots], cache.cross_v[layer, slots]
            if capture is not None:
                a, qk = _manual_attention(q, keys, values, causal=False)
                if layer in capture:
                    scores[layer] = qk[:, capture[layer]]
            else:
                a = F.scaled_dot_product_attention(q, keys, values)
            x = x + _linear(_merge(a), block.cross_attn.out)
            x = x + _mlp(x, block)
        return x, scores

    def prefill(
        self, cache: KVCache, prompts: list[list[int]], sots: list[int], slots: list[int], pad: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run each slot's prompt into all its rows' caches (padded with `pad`).

        Return the rows, in slot order, and (slots, 2, vocab) logits: at each
        prompt's <|startoftranscript|> (its no-speech probability) and at its
        last token (its first sampled token).
        """
        import torch

        width = max(map(len, prompts))
        tokens = torch.tensor([p + [pad] * (width - len(p)) for p in prompts], device=self.device)
        slot_index = torch.tensor(slots, device=self.device)
        rows = (slot_index[:, None] * cache.group + torch.arange(cache.group, device=self.device)).flatten()
        hidden, _ = self.forward(cache, tokens, slot_index, cache_rows=rows)
        ends = torch.tensor([len(p) - 1 for p in prompts], device=self.device)
        starts = torch.tensor(sots, device=self.device)
        picked = hidden[torch.arange(len(slots), device=self.device)[:, None], torch.stack([starts, ends], 1)]
        return rows, self.logits(picked)

    def language_distributions(
        self, cache: KVCache, slots: list[int], tokenizer: Tokenizer
    ) -> list[dict[str, float]]:
        """Return each slot's probability for every language, as whisper.decode detects it."""
        import torch

        tokens = torch.full((len(slots), 1), tokenizer.sot, device=self.device)
        hidden, _ = self.forward(cache, tokens, torch.tensor(slots, device=self.device))
        logits = self.logits(hidden[:, 0])
        mask = torch.ones(logits.shape[-1], dtype=torch.bool, device=self.device)
        mask[list(tokenizer.all_language_tokens)] = False
        logits[:, mask] = -math.inf
        probs = logits.softmax(dim=-1).cpu()
        codes = tokenizer.all_language_codes
        return [
            {c: probs[row, t].item() for t, c in zip(tokenizer.all_language_tokens, codes, strict=True)}
            for row in range(len(slots))
        ]


def _norm(x: torch.Tensor, ln: Any) -> torch.Tensor:
    """whisper's LayerNorm: computed in fp32, returned in x's dtype."""
    import torch.nn.functional as F

    return F.layer_norm(x.float(), ln.normalized_shape, ln.weight, ln.bias, ln.eps).type(x.dtype)


def _linear(x: torch.Tensor, layer: Any) -> torch.Tensor:
    import torch.nn.functional as F

    return F.linear(x, layer.weight, layer.bias)


def _mlp(x: torch.Tensor, block: Any) -> torch.Tensor:
    import torch.nn.functional as F

    h = _norm(x, block.mlp_ln)
    return _linear(F.gelu(_linear(h, block.mlp[0])), block.mlp[2])


def _heads(x: torch.Tensor, n_head: int) -> torch.Tensor:
    """(batch, time, state) → (batch, heads, time, head_dim), as whisper's attention views it."""
    return x.view(*x.shape[:2], n_head, -1).permute(0, 2, 1, 3)


def _merge(a: torch.Tensor) -> torch.Tensor:
    return a.permute(0, 2, 1, 3).flatten(start_dim=2)


def _manual_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> tuple[Any, Any]:
    """whisper's non-SDPA attention (what its word alignment runs): return (output, fp32 scores)."""
    import torch

    scale = q.shape[-1] ** -0.25
    qk = (q * scale) @ (k * scale).transpose(-1, -2)
    if causal:
        n = q.shape[-2]
        qk = qk + torch.full((n, n), float("-inf"), device=qk.device).triu_(1)
    qk = qk.float()
    weights = qk.softmax(dim=-1).to(q.dtype)
    return weights @ v, qk
