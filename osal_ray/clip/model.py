"""CLIPN: a CLIP with a second, "no" text tower (Wang et al., ICCV 2023).

The image tower and the ordinary ("yes") text tower are taken over from an open_clip
``CLIP``; the "no" tower is a full copy of the yes tower plus learnable no-prompts that
are added to its input embeddings. State-dict keys stay flat, as in open_clip and in the
CLIPN release, so a CLIPN checkpoint loads as one dict:

- shared with open_clip: ``visual.*``, ``transformer.*``, ``token_embedding.weight``,
  ``positional_embedding``, ``ln_final.*``, ``text_projection`` (``.weight``/``.bias``
  when the projection is linear), ``logit_scale`` (and ``logit_bias`` when present);
- no tower: ``transformer_no.*``, ``token_embedding_no.weight``,
  ``positional_embedding_no``, ``ln_final_no.*``, ``text_projection_no`` and
  ``prompt_no`` of shape ``[num_no_prompts, context_length, width]``.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from open_clip.model import CLIP
from open_clip.transformer import text_global_pool
from torch import nn

from osal_ray.errors import InputError

NUM_NO_PROMPTS = 16

# Yes-tower attribute -> no-tower attribute; also the state-dict key prefixes.
NO_TOWER_NAMES: dict[str, str] = {
    "transformer": "transformer_no",
    "token_embedding": "token_embedding_no",
    "positional_embedding": "positional_embedding_no",
    "ln_final": "ln_final_no",
    "text_projection": "text_projection_no",
}


def _copy_projection(projection: nn.Module | nn.Parameter | None) -> nn.Module | nn.Parameter | None:
    if projection is None:
        return None
    if isinstance(projection, nn.Parameter):
        return nn.Parameter(projection.detach().clone())
    return copy.deepcopy(projection)


def _project(x: torch.Tensor, projection: nn.Module | nn.Parameter | None) -> torch.Tensor:
    if projection is None:
        return x
    if isinstance(projection, nn.Module):
        return projection(x)
    return x @ projection


class CLIPN(nn.Module):
    """CLIP image tower + "yes" text tower + "no" text tower with learnable no-prompts."""

    def __init__(self, clip: CLIP, num_no_prompts: int = NUM_NO_PROMPTS, model_name: str | None = None) -> None:
        """Take over ``clip``'s modules (shared, not copied) and add a no tower copied from its text tower."""
        super().__init__()
        if not isinstance(clip, CLIP):
            raise InputError(
                "clip.model_name",
                f"CLIPN needs a plain open_clip CLIP (built-in text tower), got {type(clip).__name__}",
            )
        if num_no_prompts < 1:
            raise InputError("clip.num_no_prompts", f"must be at least 1, got {num_no_prompts}")
        self.model_name = model_name
        self.visual = clip.visual
        self.transformer = clip.transformer
        self.token_embedding = clip.token_embedding
        self.positional_embedding = clip.positional_embedding
        self.ln_final = clip.ln_final
        self.text_projection = clip.text_projection
        self.logit_scale = clip.logit_scale
        self.logit_bias = clip.logit_bias
        self.context_length: int = clip.context_length
        self.vocab_size: int = clip.vocab_size
        self.text_pool_type: str = clip.text_pool_type
        self.text_eos_id: int | None = getattr(clip, "text_eos_id", None)
        self.register_buffer("attn_mask", clip.attn_mask, persistent=False)

        self.transformer_no = copy.deepcopy(clip.transformer)
        self.token_embedding_no = copy.deepcopy(clip.token_embedding)
        self.positional_embedding_no = nn.Parameter(clip.positional_embedding.detach().clone())
        self.ln_final_no = copy.deepcopy(clip.ln_final)
        self.text_projection_no = _copy_projection(clip.text_projection)
        width = clip.positional_embedding.shape[-1]
        self.prompt_no = nn.Parameter(torch.zeros(num_no_prompts, self.context_length, width))

    @property
    def num_no_prompts(self) -> int:
        """How many learnable no-prompts the no tower holds."""
        return int(self.prompt_no.shape[0])

    @property
    def scale(self) -> float:
        """The learned logit scale, ``exp(logit_scale)`` (about 100 for trained CLIP/CLIPN)."""
        return float(self.logit_scale.detach().exp().reshape(-1)[0])

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Image embeddings ``[N, D]`` for preprocessed images ``[N, 3, H, W]``."""
        # CLIPN carries the same attributes the CLIP methods read, so open_clip's code runs as is.
        return CLIP.encode_image(self, images, normalize=normalize)

    def encode_text(self, tokens: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Yes-tower text embeddings ``[B, D]`` (open_clip's ``CLIP.encode_text``)."""
        self._check_tokens(tokens)
        return CLIP.encode_text(self, tokens, normalize=normalize)

    def encode_text_no(
        self,
        tokens: torch.Tensor,
        normalize: bool = True,
        prompt_index: int | torch.Tensor | None = None,
    ) -> torch.Tensor:
        """No-tower text embeddings ``[B, D]``.

        The no-prompt is added to token + positional embeddings at every position:
        the mean of all no-prompts when ``prompt_index`` is None (evaluation), else the
        prompt(s) it selects (an int for all texts, or a LongTensor ``[B]`` per text).
        """
        self._check_tokens(tokens)
        cast_dtype = self.transformer_no.get_cast_dtype()
        x = self.token_embedding_no(tokens).to(cast_dtype)
        x = x + self.positional_embedding_no.to(cast_dtype)
        x = x + self._no_prompt(prompt_index, tokens.shape[0]).to(cast_dtype)
        x = self.transformer_no(x, attn_mask=self.attn_mask)
        x = self.ln_final_no(x)
        x = text_global_pool(x, tokens, self.text_pool_type, eos_token_id=self.text_eos_id)
        x = _project(x, self.text_projection_no)
        return F.normalize(x, dim=-1) if normalize else x

    def forward(
        self, images: torch.Tensor, tokens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Normalised image, yes-text and no-text embeddings, and ``exp(logit_scale)``."""
        return (
            self.encode_image(images),
            self.encode_text(tokens),
            self.encode_text_no(tokens),
            self.logit_scale.exp(),
        )

    def _no_prompt(self, prompt_index: int | torch.Tensor | None, batch: int) -> torch.Tensor:
        if prompt_index is None:
            return self.prompt_no.mean(dim=0, keepdim=True)
        if isinstance(prompt_index, int):
            if not 0 <= prompt_index < self.num_no_prompts:
                raise InputError("prompt_index", f"must be in [0, {self.num_no_prompts}), got {prompt_index}")
            return self.prompt_no[prompt_index].unsqueeze(0)
        if prompt_index.shape != (batch,):
            raise InputError("prompt_index", f"needs shape ({batch},), got {tuple(prompt_index.shape)}")
        return self.prompt_no[prompt_index.to(self.prompt_no.device)]

    def _check_tokens(self, tokens: torch.Tensor) -> None:
        if tokens.ndim != 2 or tokens.shape[1] != self.context_length:
            raise InputError(
                "tokens", f"need shape [B, {self.context_length}] (the context length), got {tuple(tokens.shape)}"
            )
