"""OpenSoraT2V: the 3D full-attention diffusion transformer of Open-Sora Plan v1.2 (network only).

Module and parameter names equal the reference's state-dict keys (reference notes §8.2), so official
weights load without renaming. Latents (B, C, T, H, W) are cut into 1x2x2 patches per frame, tokens in
t-major, row, column order (§2.2); AdaLN-single timestep conditioning is shared by all blocks, each block
adding its own scale-shift table (§2.3); a block is self-attention over all tokens with 3D RoPE, then
cross-attention to the projected text (no norm, no gate, as in PixArt), then a GELU-tanh MLP (§2.4). The
network knows nothing about noise: schedules and losses live elsewhere.

Engineering differences to the reference, at equal outputs:
- one RoPE table per forward pass for all blocks, with fp32 angles cached by grid and scales (`rope.py`);
- masks become attention biases once per forward pass, and none is passed to attention when nothing is
  masked, so the fast SDPA kernels run (§2.5);
- modulations and gated residuals are single fused multiply-adds (`addcmul`) instead of three passes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from diffusers.models.attention import FeedForward
from diffusers.models.embeddings import PixArtAlphaTextProjection
from diffusers.models.normalization import AdaLayerNormSingle
from torch import nn

from components.dit.config import DiTModelConfig
from components.dit.rope import RoPE3D, apply_rope

# The reference's bias for masked keys (§2.5); exp(-10000) is exactly 0 in every float dtype we use.
MASKED_BIAS = -10000.0
FF_CHUNK_BYTES = 64 * 2**20  # bound on the MLP's hidden activation per chunk in inference


class Attention(nn.Module):
    """Multi-head attention with the reference's parameter names (`to_q`, `to_k`, `to_v`, `to_out.0`)."""

    def __init__(self, dim: int, heads: int, head_dim: int, dropout: float):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        inner = heads * head_dim
        self.to_q = nn.Linear(dim, inner)
        self.to_k = nn.Linear(dim, inner)
        self.to_v = nn.Linear(dim, inner)
        self.to_out = nn.ModuleList([nn.Linear(inner, dim), nn.Dropout(dropout)])

    def forward(self, x: torch.Tensor, context: torch.Tensor, bias: torch.Tensor | None,
                rope: tuple[torch.Tensor, torch.Tensor, int] | None = None) -> torch.Tensor:
        batch, queries, _ = x.shape
        keys = context.shape[1]
        q = self.to_q(x).view(batch, queries, self.heads, self.head_dim)  # (B, N, heads, d)
        k = self.to_k(context).view(batch, keys, self.heads, self.head_dim)  # (B, L, heads, d)
        v = self.to_v(context).view(batch, keys, self.heads, self.head_dim)
        if rope is not None:
            cos, sin, chunk = rope
            inplace = not torch.is_grad_enabled()  # q and k are this call's own tensors
            q, k = apply_rope(q, cos, sin, chunk, inplace), apply_rope(k, cos, sin, chunk, inplace)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                             attn_mask=bias)  # (B, heads, N, d)
        out = out.transpose(1, 2).reshape(batch, queries, self.heads * self.head_dim)  # (B, N, D)
        return self.to_out[1](self.to_out[0](out))


class TransformerBlock(nn.Module):
    """One OpenSoraT2V block, ada_norm_single path (reference notes §2.4)."""

    def __init__(self, config: DiTModelConfig):
        super().__init__()
        dim = config.hidden_size
        self.norm1 = nn.LayerNorm(dim, eps=config.norm_eps, elementwise_affine=False)
        self.attn1 = Attention(dim, config.num_attention_heads, config.attention_head_dim, config.dropout)
        self.norm2 = nn.LayerNorm(dim, eps=config.norm_eps, elementwise_affine=False)
        self.attn2 = Attention(dim, config.num_attention_heads, config.attention_head_dim, config.dropout)
        self.ff = FeedForward(dim, dropout=config.dropout, activation_fn="gelu-approximate", bias=True)
        self.scale_shift_table = nn.Parameter(torch.randn(6, dim) / dim**0.5)
        self.mlp_checkpoint_tokens = config.mlp_checkpoint_tokens

    def _mlp(self, h: torch.Tensor) -> torch.Tensor:
        step = self.mlp_checkpoint_tokens
        if step is None or h.shape[1] <= step:
            return self.ff(h)
        return torch.cat([torch.utils.checkpoint.checkpoint(self.ff, h[:, start:start + step], use_reentrant=False)
                          for start in range(0, h.shape[1], step)], dim=1)

    def forward(self, x: torch.Tensor, modulation: torch.Tensor, context: torch.Tensor,
                context_bias: torch.Tensor | None, self_bias: torch.Tensor | None,
                rope: tuple[torch.Tensor, torch.Tensor, int]) -> torch.Tensor:
        # x (B, N, D); modulation (B, 6D) shared by all blocks; context (B, L, D) projected text.
        batch, _, dim = x.shape
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (
            self.scale_shift_table[None] + modulation.view(batch, 6, dim)).chunk(6, dim=1)  # each (B, 1, D)
        h = torch.addcmul(shift_msa, self.norm1(x), 1 + scale_msa)
        x = torch.addcmul(x, gate_msa, self.attn1(h, h, self_bias, rope))
        x = x + self.attn2(x, context, context_bias)  # query unnormalised, no gate (PixArt)
        if torch.is_grad_enabled():
            h = torch.addcmul(shift_mlp, self.norm2(x), 1 + scale_mlp)
            return torch.addcmul(x, gate_mlp, self._mlp(h))  # (B, N, D)
        # Inference: the MLP in token chunks, so its 4x-wide hidden layer never exists for all tokens at
        # once (at 9,600 tokens it would be the largest tensor of the pass); x is this block's own tensor.
        step = max(1, FF_CHUNK_BYTES // (batch * 4 * dim * x.element_size()))
        for start in range(0, x.shape[1], step):
            part = x[:, start:start + step]  # (B, n, D), a view updated in place
            part.addcmul_(gate_mlp, self.ff(torch.addcmul(shift_mlp, self.norm2(part), 1 + scale_mlp)))
        return x


class PatchEmbed(nn.Module):
    """Per-frame 2D patch embedding (`pos_embed.proj`); no position embedding: RoPE does that (§2.2)."""

    def __init__(self, config: DiTModelConfig):
        super().__init__()
        p = config.patch_size
        self.proj = nn.Conv2d(config.in_channels, config.hidden_size, kernel_size=p, stride=p)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        batch, channels, frames, height, width = latents.shape
        x = latents.transpose(1, 2).reshape(batch * frames, channels, height, width)  # (B*T, C, H, W)
        x = self.proj(x)  # (B*T, D, H', W')
        x = x.flatten(2).transpose(1, 2)  # (B*T, H'W', D)
        return x.reshape(batch, -1, x.shape[-1])  # (B, T*H'*W', D): t-major, then rows, then columns


class OpenSoraT2V(nn.Module):
    """latents (B, C, T, H, W), timestep (B,), text (B, L, C_text) -> predicted noise (B, C, T, H, W)."""

    def __init__(self, config: DiTModelConfig):
        super().__init__()
        self.config = config
        dim = config.hidden_size
        self.pos_embed = PatchEmbed(config)
        self.transformer_blocks = nn.ModuleList(TransformerBlock(config) for _ in range(config.num_layers))
        self.norm_out = nn.LayerNorm(dim, eps=1e-6, elementwise_affine=False)
        self.scale_shift_table = nn.Parameter(torch.randn(2, dim) / dim**0.5)
        self.proj_out = nn.Linear(dim, config.patch_channels)
        self.adaln_single = AdaLayerNormSingle(dim)
        self.caption_projection = PixArtAlphaTextProjection(in_features=config.caption_channels, hidden_size=dim)
        self.rope = RoPE3D(config.attention_head_dim, config.interpolation_scales, config.rope_angles)
        if config.zero_init:
            self.zero_init_()

    @torch.no_grad()
    def zero_init_(self) -> None:
        """Start as the identity on every residual path and predict zero noise (adaLN-Zero, DiT §3)."""
        for module in (self.adaln_single.linear, self.proj_out):
            nn.init.zeros_(module.weight)
            nn.init.zeros_(module.bias)
        for block in self.transformer_blocks:
            block.scale_shift_table[2].zero_()  # gate_msa
            block.scale_shift_table[5].zero_()  # gate_mlp

    def forward(self, latents: torch.Tensor, timestep: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor,
                latent_mask: torch.Tensor | None = None) -> torch.Tensor:
        """latents (B, C, T, H, W); timestep (B,) or a scalar, integer or float in [0, 1000);
        text (B, L, C_text) or (B, 1, L, C_text); text_mask (B, L) or (B, 1, L), 1 = token, 0 = padding;
        latent_mask (B, T, H, W), 1 = valid latent, 0 = padding (keys only, as in the reference)."""
        batch, _, frames, height, width = latents.shape
        grid = self.config.token_grid(frames, height, width)
        dtype = self.proj_out.weight.dtype
        if timestep.dim() == 0:
            timestep = timestep.expand(batch)
        if text.dim() == 4:
            text = text.squeeze(1)  # (B, L, C_text): the reference's (B, 1, L, C) video-caption layout
        # 1. Tokens, conditioning and biases, shared by all blocks.
        x = self.pos_embed(latents.to(dtype))  # (B, N, D)
        modulation, embedded_timestep = self.adaln_single(timestep, batch_size=batch, hidden_dtype=dtype)
        context = self.caption_projection(text.to(dtype))  # (B, L, D)
        context_bias = _key_bias(text_mask.reshape(batch, -1), dtype)  # (B, 1, 1, L) or None
        self_bias = None if latent_mask is None else _key_bias(self._token_mask(latent_mask), dtype)
        cos, sin = self.rope.tables(grid, x.device, dtype)
        rope = (cos, sin, self.config.attention_head_dim // 3)
        # 2. Blocks.
        for block in self.transformer_blocks:
            if self.training and self.config.gradient_checkpointing:
                x = torch.utils.checkpoint.checkpoint(block, x, modulation, context, context_bias, self_bias, rope,
                                                      use_reentrant=False)
            else:
                x = block(x, modulation, context, context_bias, self_bias, rope)
        # 3. Output head: modulated by the raw timestep embedding, not the shared modulation (§2.7).
        shift, scale = (self.scale_shift_table[None] + embedded_timestep[:, None]).chunk(2, dim=1)  # (B, 1, D)
        x = self.proj_out(torch.addcmul(shift, self.norm_out(x), 1 + scale))  # (B, N, p*p*C)
        return self._unpatchify(x, grid)

    def _token_mask(self, latent_mask: torch.Tensor) -> torch.Tensor:
        """(B, T, H, W) latent mask -> (B, N): a token is kept when any latent of its patch is (max-pool)."""
        p = self.config.patch_size
        pooled = F.max_pool3d(latent_mask.to(torch.float32)[:, None], kernel_size=(1, p, p), stride=(1, p, p))
        return pooled.flatten(1)  # (B, T*H'*W')

    def _unpatchify(self, x: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        frames, rows, cols = grid
        p, channels = self.config.patch_size, self.config.out_channels
        x = x.reshape(-1, frames, rows, cols, p, p, channels)  # (B, T', H', W', p, p, C)
        x = x.permute(0, 6, 1, 2, 4, 3, 5)  # (B, C, T', H', p, W', p)
        return x.reshape(-1, channels, frames, rows * p, cols * p)


def _key_bias(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor | None:
    """(B, K) keep-mask -> additive attention bias (B, 1, 1, K); None when nothing is masked, so SDPA can
    take its fastest kernel."""
    keep = mask.bool()
    if bool(keep.all()):
        return None
    return ((~keep).to(dtype) * MASKED_BIAS)[:, None, None, :]


def num_parameters(model: nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())
