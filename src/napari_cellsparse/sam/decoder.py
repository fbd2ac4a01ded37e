"""SAM's mask decoder, re-associated so per-image work happens once per image.

The maths is SAM's ``MaskDecoder`` with its ``TwoWayTransformer`` (same weights, same
result up to float rounding); only where the work happens changes:

* **Once per image** (:class:`ImageContext`): the image embedding plus the no-mask dense
  embedding, its sum with the positional encoding, and the first layer's image-side
  projections (token-to-image keys and values, image-to-token queries). The reference
  redoes these for every prompt and copies the embedding once per prompt in a batch.
* **Few tokens, low rank**: a box prompt has 7 tokens (2 corners + 5 output tokens), while
  the image has 4096. Attention between them is re-associated so the 4096 image vectors are
  multiplied by ``heads x tokens`` vectors of width 256 instead of being projected through
  full 256x128 matrices: ``softmax(Q (Wk X + bk)^T)`` equals ``softmax((Q Wk) X^T)`` (the
  bias term is constant along the softmax axis), and ``P (Wv X + bv)`` equals
  ``(P X) Wv^T + bv`` (rows of ``P`` sum to one). Image-to-token attention folds the output
  projection into the token values the same way. This is used only when it is cheaper
  (``heads x tokens < internal width``); otherwise the standard form runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..core.lazy import import_torch

__all__ = ["FastMaskDecoder", "ImageContext"]


@dataclass
class ImageContext:
    """Per-image tensors of the decoder, computed once by :meth:`FastMaskDecoder.prepare`."""

    src: Any  # N x D: image embedding + dense no-mask embedding (flattened)
    pos: Any  # N x D: positional encoding
    src_pos: Any  # N x D
    l0_t2i_k: Any  # H x N x c, already scaled by 1/sqrt(c)
    l0_t2i_v: Any  # H x N x c
    l0_i2t_q: Any  # H x N x c, already scaled by 1/sqrt(c)
    grid: tuple[int, int]


def _heads(attn: Any) -> tuple[int, int]:
    heads = attn.num_heads
    return heads, attn.internal_dim // heads


class FastMaskDecoder:
    """Prompt encoder + mask decoder of a SAM model, with per-image precomputation."""

    def __init__(self, sam: Any) -> None:
        self.torch = import_torch()
        self.sam = sam
        self.decoder = sam.mask_decoder
        self.prompt_encoder = sam.prompt_encoder
        self.transformer = self.decoder.transformer

    # -- per image ---------------------------------------------------------------------
    def prepare(self, features: Any) -> ImageContext:
        """Compute everything that depends only on the image embedding ``features``."""
        torch = self.torch
        with torch.inference_mode():
            _, _dim, h, w = features.shape
            dense = self.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
            src = (features + dense).flatten(2)[0].transpose(0, 1).contiguous()
            pos = self.prompt_encoder.get_dense_pe().flatten(2)[0].transpose(0, 1).contiguous()
            src_pos = src + pos
            layer0 = self.transformer.layers[0]
            t2i, i2t = layer0.cross_attn_token_to_image, layer0.cross_attn_image_to_token
            heads, c = _heads(t2i)
            scale = 1.0 / math.sqrt(c)
            k = t2i.k_proj(src_pos).view(-1, heads, c).transpose(0, 1) * scale
            v = t2i.v_proj(src).view(-1, heads, c).transpose(0, 1)
            heads_q, c_q = _heads(i2t)
            q = i2t.q_proj(src_pos).view(-1, heads_q, c_q).transpose(0, 1) / math.sqrt(c_q)
            return ImageContext(
                src, pos, src_pos, k.contiguous(), v.contiguous(), q.contiguous(), (h, w)
            )

    # -- prompts -----------------------------------------------------------------------
    def embed_prompts(self, points: Any = None, labels: Any = None, boxes: Any = None) -> Any:
        """Sparse prompt embeddings (B x T x D) from coordinates in the model's input frame."""
        with self.torch.inference_mode():
            sparse, _ = self.prompt_encoder(
                points=(points, labels) if points is not None else None, boxes=boxes, masks=None
            )
            return sparse

    def decode(self, ctx: ImageContext, sparse: Any, multimask: bool) -> tuple[Any, Any]:
        """Low-resolution mask logits (B x M x 256 x 256) and IoU predictions (B x M).

        ``M`` is 3 with ``multimask`` (SAM's three candidate masks), else 1, as in
        ``MaskDecoder.forward``.
        """
        with self.torch.inference_mode():
            queries, keys, iou = self.decode_scores(ctx, sparse, multimask)
            return self.decode_masks(ctx, queries, keys, multimask), iou

    def decode_scores(
        self, ctx: ImageContext, sparse: Any, multimask: bool
    ) -> tuple[Any, Any, Any]:
        """The transformer's output tokens, image tokens and the IoU predictions (B x M).

        The IoU predictions need no mask: callers that filter on them (the automatic mask
        generator) pass only the survivors' tokens on to :meth:`decode_masks`.
        """
        torch = self.torch
        md = self.decoder
        with torch.inference_mode():
            batch = sparse.shape[0]
            output_tokens = torch.cat([md.iou_token.weight, md.mask_tokens.weight], dim=0)
            tokens = torch.cat((output_tokens.unsqueeze(0).expand(batch, -1, -1), sparse), dim=1)
            queries, keys = self._transformer(ctx, tokens)
            iou = md.iou_prediction_head(queries[:, 0, :])[:, self._wanted(multimask)]
            return queries, keys, iou

    def decode_masks(self, ctx: ImageContext, queries: Any, keys: Any, multimask: bool) -> Any:
        """Low-resolution mask logits (B x M x 256 x 256) from :meth:`decode_scores`' tokens."""
        torch = self.torch
        md = self.decoder
        with torch.inference_mode():
            batch = queries.shape[0]
            h, w = ctx.grid
            src = keys.transpose(1, 2).reshape(batch, -1, h, w)
            upscaled = md.output_upscaling(src)
            hyper = torch.stack(
                [
                    md.output_hypernetworks_mlps[i](queries[:, 1 + i, :])
                    for i in self._wanted(multimask)
                ],
                dim=1,
            )
            b, c, hh, ww = upscaled.shape
            return (hyper @ upscaled.view(b, c, hh * ww)).view(b, -1, hh, ww)

    def _wanted(self, multimask: bool) -> list[int]:
        """Mask-token indices of the output: 1..3 with ``multimask``, else 0 (as upstream)."""
        return list(range(1, self.decoder.num_mask_tokens)) if multimask else [0]

    # -- the two-way transformer -------------------------------------------------------
    def _transformer(self, ctx: ImageContext, tokens: Any) -> tuple[Any, Any]:
        query_pe = tokens
        queries = tokens
        keys = None  # per-prompt image tokens appear after the first layer
        for index, layer in enumerate(self.transformer.layers):
            if layer.skip_first_layer_pe:
                queries = layer.self_attn(q=queries, k=queries, v=queries)
            else:
                q = queries + query_pe
                queries = queries + layer.self_attn(q=q, k=q, v=queries)
            queries = layer.norm1(queries)

            q = queries + query_pe
            if index == 0:
                attn_out = self._t2i_precomputed(
                    layer.cross_attn_token_to_image, q, ctx.l0_t2i_k, ctx.l0_t2i_v
                )
            else:
                attn_out = self._t2i(layer.cross_attn_token_to_image, q, keys + ctx.pos, keys)
            queries = layer.norm2(queries + attn_out)
            queries = layer.norm3(queries + layer.mlp(queries))

            q = queries + query_pe
            if index == 0:
                attn_out = self._i2t(
                    layer.cross_attn_image_to_token, None, q, queries, ctx.l0_i2t_q
                )
                keys = layer.norm4(ctx.src + attn_out)
            else:
                attn_out = self._i2t(layer.cross_attn_image_to_token, keys + ctx.pos, q, queries)
                keys = layer.norm4(keys + attn_out)
        q = queries + query_pe
        attn_out = self._t2i(self.transformer.final_attn_token_to_image, q, keys + ctx.pos, keys)
        queries = self.transformer.norm_final_attn(queries + attn_out)
        return queries, keys

    def _t2i_precomputed(self, attn: Any, q_in: Any, k: Any, v: Any) -> Any:
        """Tokens attend to the image with image-side keys/values computed once."""
        batch, tokens, _ = q_in.shape
        heads, c = _heads(attn)
        q = attn.q_proj(q_in).view(batch, tokens, heads, c).transpose(1, 2)
        weights = self.torch.softmax(q @ k.transpose(-1, -2), dim=-1)
        out = (weights @ v).transpose(1, 2).reshape(batch, tokens, heads * c)
        return attn.out_proj(out)

    def _t2i(self, attn: Any, q_in: Any, k_in: Any, v_in: Any) -> Any:
        """Tokens attend to per-prompt image tokens (B x N x D)."""
        batch, tokens, dim = q_in.shape
        heads, c = _heads(attn)
        if heads * tokens >= attn.internal_dim:
            return attn(q=q_in, k=k_in, v=v_in)
        torch = self.torch
        q = attn.q_proj(q_in).view(batch, tokens, heads, c) / math.sqrt(c)
        w_k = attn.k_proj.weight.view(heads, c, dim)
        g = torch.einsum("bthc,hcd->bhtd", q, w_k).reshape(batch, heads * tokens, dim)
        weights = torch.softmax(g @ k_in.transpose(1, 2), dim=-1)
        px = (weights @ v_in).view(batch, heads, tokens, dim)
        w_v = attn.v_proj.weight.view(heads, c, dim)
        out = torch.einsum("bhtd,hcd->bthc", px, w_v) + attn.v_proj.bias.view(heads, c)
        return attn.out_proj(out.reshape(batch, tokens, heads * c))

    def _i2t(self, attn: Any, q_in: Any, k_in: Any, v_in: Any, q_image: Any = None) -> Any:
        """The image attends to the tokens; ``q_image`` are precomputed scaled queries."""
        torch = self.torch
        batch, tokens, dim = k_in.shape
        heads, c = _heads(attn)
        low_rank = heads * tokens < attn.internal_dim
        if q_image is None and not low_rank:
            return attn(q=q_in, k=k_in, v=v_in)
        k = attn.k_proj(k_in).view(batch, tokens, heads, c)
        v = attn.v_proj(v_in).view(batch, tokens, heads, c)
        if q_image is not None:  # H x N x c, shared by the batch
            scores = q_image @ k.permute(0, 2, 3, 1)  # B x H x N x T
            scores = scores.permute(0, 2, 1, 3)  # B x N x H x T
        else:
            w_q = attn.q_proj.weight.view(heads, c, dim)
            m = torch.einsum("bthc,hcd->bhtd", k, w_q).reshape(batch, heads * tokens, dim)
            bias = torch.einsum("bthc,hc->bht", k, attn.q_proj.bias.view(heads, c))
            scores = (q_in @ m.transpose(1, 2) + bias.reshape(batch, 1, -1)) / math.sqrt(c)
            scores = scores.view(batch, -1, heads, tokens)
        weights = torch.softmax(scores, dim=-1)
        n = weights.shape[1]
        if low_rank:
            w_o = attn.out_proj.weight.view(dim, heads, c)
            folded = torch.einsum("bthc,dhc->bhtd", v, w_o).reshape(batch, heads * tokens, dim)
            return weights.reshape(batch, n, heads * tokens) @ folded + attn.out_proj.bias
        out = torch.einsum("bnht,bthc->bnhc", weights, v).reshape(batch, n, heads * c)
        return attn.out_proj(out)
