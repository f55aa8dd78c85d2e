"""Patch embedding: cut an image into non-overlapping patches and project each to D channels.

Two interchangeable implementations share one kernel of shape [ph, pw, C, D] (HWIO, the official
checkpoint's `embedding/kernel`), so a checkpoint of one runs in the other with the same output:

- `conv`:   a strided convolution, kernel = stride = patch (what the official ViT does);
- `linear`: reshape into [B, h, w, ph, pw, C] and contract with the kernel (a Dense on the
  flattened P*P*C patch vector, written without einops).

`resize_kernel` adapts a kernel to another patch size (FlexiViT's pseudo-inverse resize), so that
a patch resized to the new size gives the same embedding as the original patch;
`convert_channels` to another number of image channels (RGB <-> grayscale).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vit_jax.models import precision
from vit_jax.models.resize import resize_matrix
from vit_jax.options import unknown_choice

PATCH_EMBEDS = ("conv", "linear")


def patchify(images: jax.Array, patch_size: tuple[int, int]) -> jax.Array:
    """[B, H, W, C] -> [B, h, w, ph, pw, C] with h = H / ph, w = W / pw (row-major grid)."""
    b, height, width, c = images.shape
    ph, pw = patch_size
    x = images.reshape(b, height // ph, ph, width // pw, pw, c)
    return x.transpose(0, 1, 3, 2, 4, 5)


class PatchEmbed(nn.Module):
    """Images [B, H, W, C] -> patch tokens on their grid [B, h, w, D].

    Parameters `kernel` [ph, pw, C, D] and `bias` [D]; instantiate it with name="embedding" to
    match the official checkpoint layout.
    """

    hidden_size: int
    patch_size: tuple[int, int]
    patch_embed: str = "conv"
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        ph, pw = self.patch_size
        channels = images.shape[-1]
        if self.has_variable("params", "kernel"):
            stored = self.get_variable("params", "kernel").shape[2]
            if stored != channels:
                convert = {1: " (e.g. PIL's .convert('L'))", 3: " (e.g. .convert('RGB'))"}
                raise ValueError(
                    f"images with {channels} channel{'s' * (channels > 1)} given to parameters "
                    f"made for {stored}: convert the images{convert.get(stored, '')}, or "
                    f"restore the checkpoint for {channels}-channel images (restore_into(..., "
                    f"channels={channels}) sums or repeats the patch kernel's input planes)."
                )
        kernel = self.param(
            "kernel",
            nn.initializers.lecun_normal(),
            (ph, pw, channels, self.hidden_size),
            self.param_dtype,
        )
        bias = self.param("bias", nn.initializers.zeros, (self.hidden_size,), self.param_dtype)
        images, kernel, bias = nn.dtypes.promote_dtype(images, kernel, bias, dtype=self.dtype)
        if self.patch_embed == "conv":
            x = jax.lax.conv_general_dilated(
                images,
                kernel,
                window_strides=(ph, pw),
                padding="VALID",
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
                preferred_element_type=precision.accumulation(self.dtype),
            )
        elif self.patch_embed == "linear":
            x = precision.einsum(
                "bhwpqc,pqcd->bhwd", patchify(images, self.patch_size), kernel, dtype=self.dtype
            )
        else:
            raise unknown_choice("patch_embed", self.patch_embed, PATCH_EMBEDS)
        return x + bias


def resize_kernel(
    kernel: jax.Array | np.ndarray,
    new_patch_size: tuple[int, int],
    *,
    method: str = "linear",
    antialias: bool = False,
) -> jax.Array:
    """Resamples a patch-embedding kernel [ph, pw, C, D] to [ph', pw', C, D] (FlexiViT).

    With B [ph'pw', ph pw] the matrix of resizing a patch from (ph, pw) to (ph', pw') (`method`,
    `antialias`; FlexiViT uses bilinear without antialiasing), the new kernel is pinv(Bᵀ) k, the
    least-squares solution of <B x, k'> = <x, k> for all patches x. When the patch grows
    (ph' pw' >= ph pw), B has full column rank and the equality is exact: every patch, resized to
    the new size and embedded with k', gives the embedding it had with k. Shrinking the patch
    loses information (FlexiViT warns against chains of resizes).
    """
    ph, pw, channels, dim = kernel.shape
    new_patch_size = tuple(int(p) for p in new_patch_size)
    if (ph, pw) == new_patch_size:
        return jnp.asarray(kernel)
    b = resize_matrix((ph, pw), new_patch_size, method, antialias)
    flat = np.asarray(kernel, np.float64).reshape(ph * pw, channels * dim)
    resized = np.linalg.pinv(b.T) @ flat
    return jnp.asarray(resized.reshape(*new_patch_size, channels, dim), kernel.dtype)


def convert_channels(kernel: jax.Array | np.ndarray, channels: int) -> np.ndarray:
    """A patch-embedding kernel [ph, pw, C, D] for images of `channels` channels instead of C,
    so that an image whose planes are all equal embeds as before: to one channel the input
    planes are summed (a grayscale image x embeds as the RGB image (x, x, x) did); from one
    channel the plane is repeated and divided by `channels`. Other conversions (RGB to four
    channels, ...) have no such rule: ValueError."""
    kernel = np.asarray(kernel)
    stored = kernel.shape[2]
    if channels == stored:
        return kernel
    if channels == 1:
        return kernel.sum(axis=2, keepdims=True)
    if stored == 1:
        return (np.repeat(kernel, channels, axis=2) / channels).astype(kernel.dtype)
    raise ValueError(
        f"a patch kernel for {stored}-channel images cannot become one for {channels} channels "
        "(only to or from one channel): convert the images to the checkpoint's channels."
    )
