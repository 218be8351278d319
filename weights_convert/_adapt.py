"""Adapting a checkpoint to another input-channel count, as timm does."""

import math

import torch


def adapt_input_conv(in_chans: int, conv_weight: torch.Tensor) -> torch.Tensor:
    """timm's `adapt_input_conv`: fit an RGB first-conv weight `(O, 3, kh, kw)` to `in_chans`.

    One channel: the sum over the input channels. Otherwise: the RGB filters repeated to
    `in_chans` channels and scaled by `3 / in_chans`, so the response to a grey image is kept.

    **Raises:** `ValueError` when the weight is not a 3-channel (or space-to-depth) conv, or
    `in_chans` is not a positive int.
    """
    if isinstance(in_chans, bool) or not isinstance(in_chans, int) or in_chans < 1:
        raise ValueError(f"in_chans must be an int >= 1, got {in_chans!r}")
    dtype = conv_weight.dtype
    weight = conv_weight.float()
    out_ch, in_ch, kh, kw = weight.shape
    if in_chans == 1:
        if in_ch > 3:
            if in_ch % 3:
                raise ValueError(f"cannot adapt a {in_ch}-channel conv to 1 channel")
            weight = weight.reshape(out_ch, in_ch // 3, 3, kh, kw).sum(dim=2)
        else:
            weight = weight.sum(dim=1, keepdim=True)
    elif in_chans != 3:
        if in_ch != 3:
            raise ValueError(
                f"can only adapt a 3-channel first conv to in_chans={in_chans}; this one has "
                f"{in_ch} input channels"
            )
        repeat = math.ceil(in_chans / 3)
        weight = weight.repeat(1, repeat, 1, 1)[:, :in_chans] * (3 / float(in_chans))
    return weight.to(dtype)
