"""An open_clip vision tower split into a frozen trunk and trainable last blocks.

CLIP ViT with L blocks: blocks 1..L-m (and the patch embedding) are frozen and run once without
autograd; blocks L-m+1..L, ``ln_post`` and ``proj`` are trainable (m = ``num_tuned_blocks``).
Both the plain CLIP net and the CFSG network are built on this class.
"""

from __future__ import annotations

import copy
from typing import Literal, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError

#: Dense (per-token) features of the last block, by how they are taken (see :meth:`ClipBackbone.dense_features`):
#: ``glmcm`` = GL-MCM's code (value path + the block's residual and MLP), ``value`` = MaskCLIP's value path alone.
DenseKind = Literal["glmcm", "value"]
DENSE_KINDS: Tuple[str, ...] = ("glmcm", "value")


class LastBlockState(NamedTuple):
    """What the last tuned block computes once for all tokens, shared by every query subset.

    Attributes:
        x: The block's input tokens [B, T, W].
        y: ``ln_1(x)`` [B, T, W].
        k: Keys of all tokens [B, T, W].
        v: Values of all tokens [B, T, W] (also the value-path dense features' start).
    """

    x: torch.Tensor
    y: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor


class ClipBackbone(nn.Module):
    """Frozen trunk + tuned blocks + projection of an open_clip ``VisionTransformer``.

    Args:
        visual: ``open_clip`` model's ``.visual`` (a ``VisionTransformer`` with class-token pooling).
        num_tuned_blocks: m, the number of trainable last blocks (1..L).
    """

    def __init__(self, visual: nn.Module, num_tuned_blocks: int) -> None:
        super().__init__()
        if not hasattr(visual, "transformer") or not hasattr(visual.transformer, "resblocks"):
            raise ConfigError(
                f"{type(visual).__name__} is not an open_clip VisionTransformer; "
                "only ViT CLIP models are supported (e.g. ViT-B-16)"
            )
        if getattr(visual, "attn_pool", None) is not None or getattr(visual, "pool_type", "tok") != "tok":
            raise ConfigError("only class-token pooled CLIP ViTs are supported (no attentional pooling)")
        self.visual = visual
        num_blocks = len(visual.transformer.resblocks)
        if not 1 <= num_tuned_blocks <= num_blocks:
            raise ConfigError(f"num_tuned_blocks must be in 1..{num_blocks} for this ViT, got {num_tuned_blocks}")
        self.num_blocks = num_blocks
        self.num_tuned_blocks = num_tuned_blocks
        self.width: int = visual.transformer.width
        self.joint_dim: int = visual.proj.shape[1]
        self.batch_first: bool = getattr(visual.transformer, "batch_first", True)
        for p in visual.parameters():
            p.requires_grad_(False)
        for block in self.tuned_blocks:
            for p in block.parameters():
                p.requires_grad_(True)
        for p in visual.ln_post.parameters():
            p.requires_grad_(True)
        visual.proj.requires_grad_(True)

    @property
    def num_frozen(self) -> int:
        return self.num_blocks - self.num_tuned_blocks

    @property
    def tuned_blocks(self) -> nn.ModuleList:
        return self.visual.transformer.resblocks[self.num_frozen :]

    def _run(self, blocks, x: torch.Tensor, key_bias: Optional[torch.Tensor] = None) -> torch.Tensor:
        mask = None
        if key_bias is not None and len(blocks):  # an additive bias on every query's attention to token j
            B, T = key_bias.shape
            heads = blocks[0].attn.num_heads
            mask = key_bias.to(x.dtype)[:, None, None, :].expand(B, heads, T, T).reshape(B * heads, T, T)
        if not self.batch_first:
            x = x.transpose(0, 1)
        for block in blocks:
            x = block(x) if mask is None else block(x, attn_mask=mask)
        if not self.batch_first:
            x = x.transpose(0, 1)
        return x

    def trunk(self, images: torch.Tensor) -> torch.Tensor:
        """Patch embedding + frozen blocks, without autograd.

        Args:
            images: Tensor [B, 3, H, W].

        Returns:
            Tokens H [B, 1+N, W] (class token first).
        """
        with torch.no_grad():
            x = self.visual._embeds(images)
            return self._run(self.visual.transformer.resblocks[: self.num_frozen], x)

    def tuned(self, tokens: torch.Tensor, return_last_input: bool = False):
        """Run the trainable blocks on ``tokens`` [B, T, W].

        Returns:
            Output tokens [B, T, W]; with ``return_last_input`` also the last block's input.
        """
        blocks = self.tuned_blocks
        x = self._run(blocks[:-1], tokens)
        out = self._run(blocks[-1:], x)
        return (out, x) if return_last_input else out

    def tuned_until_last(
        self,
        tokens: torch.Tensor,
        key_bias: Optional[torch.Tensor] = None,
        prompts: Sequence[torch.Tensor] = (),
    ) -> torch.Tensor:
        """Run the trainable blocks but the last on ``tokens`` [B, T, W]: the last block's input.

        Args:
            tokens: Input tokens [B, T, W].
            key_bias: Optional [B, T], added to every attention logit towards token j (a soft token filter).
            prompts: Deep prompts (VPT-deep): after tuned block i, the last n_i tokens of its output are
                replaced by ``prompts[i]`` [B, n_i, W] before the next block (at most m - 1 of them;
                the last block's input gets the last one).
        """
        blocks = self.tuned_blocks[:-1]
        if len(prompts) > len(blocks):
            raise ValueError(f"got {len(prompts)} deep prompts for {len(blocks)} blocks before the last")
        if not prompts:
            return self._run(blocks, tokens, key_bias)
        x = tokens
        for i in range(len(blocks)):
            x = self._run(blocks[i : i + 1], x, key_bias)
            if i < len(prompts):
                x = torch.cat([x[:, : x.shape[1] - prompts[i].shape[1]], prompts[i].to(x.dtype)], dim=1)
        return x

    def last_block_state(self, last_input: torch.Tensor) -> LastBlockState:
        """``ln_1``, keys and values of the last block for all tokens of ``last_input`` [B, T, W].

        With :meth:`last_block_queries` the last block then runs for any subset of query tokens,
        and :meth:`state_value_features` gives the value-path dense features from the same values.
        """
        self.check_value_path()
        block = self.tuned_blocks[-1]
        attn = block.attn
        w = self.width
        y = block.ln_1(last_input)
        bias = attn.in_proj_bias[w:] if attn.in_proj_bias is not None else None
        k, v = F.linear(y, attn.in_proj_weight[w:], bias).split(w, dim=-1)
        return LastBlockState(last_input, y, k, v)

    def last_block_queries(
        self, state: LastBlockState, index: Optional[torch.Tensor] = None, key_bias: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """The last block's output tokens for some query tokens only.

        Every token still serves as key and value, so the result equals the selected rows of the
        block's output on all tokens; queries, attention output, residual and MLP run only for the
        selected tokens (the class token: 1 of 1 + N).

        Args:
            state: From :meth:`last_block_state`.
            index: Token indices [B, n] (0 = class token), or None for the class token alone.
            key_bias: Optional additive attention bias towards each key token [B, T].

        Returns:
            Tensor [B, n, W] (n = 1 for the class token).
        """
        block = self.tuned_blocks[-1]
        attn = block.attn
        w, heads = self.width, attn.num_heads
        if index is None:
            xq, yq = state.x[:, :1], state.y[:, :1]
        else:
            xq, yq = gather_rows(state.x, index), gather_rows(state.y, index)
        bias = attn.in_proj_bias[:w] if attn.in_proj_bias is not None else None
        q = F.linear(yq, attn.in_proj_weight[:w], bias)
        B, n, _ = q.shape
        T, d = state.k.shape[1], w // heads
        o = F.scaled_dot_product_attention(
            q.view(B, n, heads, d).transpose(1, 2),
            state.k.view(B, T, heads, d).transpose(1, 2),
            state.v.view(B, T, heads, d).transpose(1, 2),
            attn_mask=None if key_bias is None else key_bias.to(q.dtype)[:, None, None, :],
            dropout_p=attn.dropout if self.training else 0.0,
        )
        xq = xq + block.ls_1(attn.out_proj(o.transpose(1, 2).reshape(B, n, w)))
        return xq + block.ls_2(block.mlp(block.ln_2(xq)))

    def state_value_features(self, state: LastBlockState) -> torch.Tensor:
        """:meth:`value_features` [B, T, D] from a :class:`LastBlockState` (its values reused)."""
        block = self.tuned_blocks[-1]
        return self.project(block.ls_1(block.attn.out_proj(state.v)))

    def state_dense_features(self, state: LastBlockState, kind: DenseKind = "glmcm") -> torch.Tensor:
        """:meth:`dense_features` of every token [B, T, D] from a :class:`LastBlockState` (its values reused)."""
        if kind == "value":
            return self.state_value_features(state)
        if kind != "glmcm":
            raise ValueError(f"dense feature kind must be one of {', '.join(DENSE_KINDS)}, got {kind!r}")
        block = self.tuned_blocks[-1]
        v = state.x + block.ls_1(block.attn.out_proj(state.v))
        v = v + block.ls_2(block.mlp(block.ln_2(v)))
        return self.project(v)

    def project(self, tokens: torch.Tensor) -> torch.Tensor:
        """``ln_post`` then ``proj``: tokens [B, T, W] -> joint space [B, T, D]."""
        return self.visual.ln_post(tokens) @ self.visual.proj

    def check_value_path(self) -> None:
        """Fail loudly unless the last block has the structure :meth:`value_features` relies on.

        Required (open_clip's ``ResidualAttentionBlock``): ``ln_1``; ``attn`` an
        ``nn.MultiheadAttention`` with one packed ``in_proj_weight`` (query, key, value rows, in that
        order), an ``out_proj`` and no ``bias_k``/``bias_v``/zero attention; ``ln_2`` and ``mlp``
        (:meth:`last_block_queries` runs them); no ``ln_1_kv`` (cross-attention); ``ls_1`` either
        ``nn.Identity`` or a LayerScale with a ``gamma`` of shape [W]. Other blocks (e.g. open_clip's ``CustomResidualAttentionBlock`` with its own
        attention, q/k normalisation or scaled cosine attention) raise :class:`ConfigError` instead
        of producing wrong dense features.

        Raises:
            ConfigError: The block structure differs, naming what was found.
        """
        block = self.tuned_blocks[-1]
        name = type(block).__name__
        attn = getattr(block, "attn", None)
        problems = []
        if not isinstance(getattr(block, "ln_1", None), nn.Module):
            problems.append("no ln_1 before the attention")
        if not isinstance(attn, nn.MultiheadAttention):
            problems.append(f"attn is {type(attn).__name__}, not nn.MultiheadAttention")
        elif attn.in_proj_weight is None or tuple(attn.in_proj_weight.shape) != (3 * self.width, self.width):
            problems.append("attn has no packed in_proj_weight [3W, W] (separate q/k/v projections)")
        elif attn.bias_k is not None or attn.bias_v is not None or attn.add_zero_attn:
            problems.append("attn adds bias_k/bias_v or zero attention")
        for part in ("ln_2", "mlp"):
            if not isinstance(getattr(block, part, None), nn.Module):
                problems.append(f"no {part}")
        if hasattr(block, "ln_1_kv"):
            problems.append("a cross-attention block (ln_1_kv)")
        ls_1 = getattr(block, "ls_1", nn.Identity())
        gamma = getattr(ls_1, "gamma", None)
        if not isinstance(ls_1, nn.Identity) and not (
            isinstance(gamma, torch.Tensor) and tuple(gamma.shape) == (self.width,)
        ):
            problems.append(f"ls_1 is {type(ls_1).__name__}, neither nn.Identity nor a LayerScale with gamma [W]")
        if problems:
            raise ConfigError(
                f"the last visual block ({name}) does not have the structure of open_clip's ResidualAttentionBlock "
                f"that value-path dense features (sfm_dense: value, the glmcm score) rely on: {'; '.join(problems)}. "
                "Use a CLIP ViT built from open_clip's standard blocks (ViT-B-16, ViT-B-32, ViT-L-14, ...)"
            )

    def value_features(self, last_input: torch.Tensor) -> torch.Tensor:
        """Dense features of all tokens through the last block's value path (MaskCLIP / ClearCLIP).

        The last block's query-key attention, its residual connection and its MLP are skipped:
        each token's value vector ``W_v ln_1(x) + b_v`` goes through the attention output
        projection and the block's LayerScale ``ls_1`` (identity in OpenAI CLIP), then ``ln_post``
        and ``proj``. Such patch features align with text far better than the final patch tokens of
        a pretrained CLIP. The block structure is checked first (:meth:`check_value_path`).

        Args:
            last_input: The last block's input tokens [B, T, W] (class token first).

        Returns:
            Tensor [B, T, D] in the joint space, not normalised.
        """
        self.check_value_path()
        block = self.tuned_blocks[-1]
        attn = block.attn
        x = block.ln_1(last_input)
        w_v = attn.in_proj_weight[2 * self.width :]
        b_v = attn.in_proj_bias[2 * self.width :] if attn.in_proj_bias is not None else None
        v = block.ls_1(attn.out_proj(F.linear(x, w_v, b_v)))
        return self.project(v)

    def dense_features(self, last_input: torch.Tensor, kind: DenseKind = "glmcm") -> torch.Tensor:
        """Patch features [B, N, D] of the last block (joint space, not normalised); contract C2.

        Both kinds skip the last block's query-key attention, each token taking only its own value
        vector ``out_proj(W_v ln_1(x) + b_v)`` (through the block's LayerScale ``ls_1``):

        - ``glmcm`` (default): as GL-MCM's code computes its local features (AtsuMiyai/GL-MCM,
          ``clip/model.py``, ``ResidualAttentionBlock.forward`` and ``VisionTransformer.forward``,
          commit 8708a08): ``v = x + out_proj(value(ln_1(x)))``, ``v = v + mlp(ln_2(v))``, then
          ``ln_post`` and ``proj``: the block run with self-only attention.
        - ``value``: MaskCLIP's value path alone (no residual, no MLP), then ``ln_post`` and ``proj``
          (:meth:`value_features`).

        Args:
            last_input: The last block's input tokens [B, 1 + N, W], e.g. the second output of
                ``tuned(trunk(images), return_last_input=True)``.
            kind: ``glmcm`` or ``value`` (:data:`DENSE_KINDS`).

        Returns:
            Tensor [B, N, D].
        """
        return self.state_dense_features(self.last_block_state(last_input), kind)[:, 1:]

    def forward(self, images: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Global feature [B, D] and patch features [B, N, D] in the joint space."""
        z = self.project(self.tuned(self.trunk(images)))
        return z[:, 0], z[:, 1:]

    def tuned_copy(self, *, frozen: bool) -> ClipBackbone:
        """A copy of the trainable part as it is now.

        The copy holds the tuned blocks, ``ln_post`` and ``proj`` (the frozen trunk is shared, not
        copied, and then dropped from the copy): it runs on the trunk's tokens H with the same
        methods (:meth:`tuned_until_last`, :meth:`last_block_state`, ...).

        Args:
            frozen: True: nothing in the copy trains (``requires_grad`` off; the optimizer skips
                parameters without gradients), as the zero-shot reference tower and
                ``fine_blocks: frozen`` need. False: the copy's blocks, ``ln_post`` and ``proj`` train,
                as this backbone's own tuned part does (``fine_blocks: separate``); its unused stem
                stays frozen.

        Returns:
            A :class:`ClipBackbone` with ``num_tuned_blocks`` blocks and no frozen trunk.
        """
        shared = list(self.visual.transformer.resblocks[: self.num_frozen])
        visual = copy.deepcopy(self.visual, memo={id(b): b for b in shared})
        visual.transformer.resblocks = nn.ModuleList(list(visual.transformer.resblocks)[self.num_frozen :])
        tail = ClipBackbone(visual, self.num_tuned_blocks)  # sets the tuned part trainable, the rest frozen
        if frozen:
            tail.requires_grad_(False)
        return tail

    def group_matcher(self, coarse: bool = False, prefix: str = "") -> dict:
        """timm/USB-style parameter groups for layer-wise lr decay."""
        p = prefix
        return dict(
            stem=rf"^{p}visual\.(?:class_embedding|positional_embedding|conv1|ln_pre)",
            blocks=[
                (rf"^{p}visual\.transformer\.resblocks\.(\d+)", None),
                (rf"^{p}visual\.(?:ln_post|proj)", (99999,)),
            ],
        )

    def no_weight_decay(self, prefix: str = "") -> set:
        return {f"{prefix}visual.class_embedding", f"{prefix}visual.positional_embedding"}


def gather_rows(tokens: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``out[b, j] = tokens[b, index[b, j]]`` for tokens [B, T, C] and index [B, n]."""
    return tokens.gather(1, index.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel / DataParallel, or ``model`` itself."""
    return getattr(model, "module", model)


__all__ = ["ClipBackbone", "LastBlockState", "gather_rows", "unwrap"]
