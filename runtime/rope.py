"""Rotary inverse frequencies, plain or scaled, as transformers computes them.

Source: transformers/modeling_rope_utils.py ROPE_INIT_FUNCTIONS (default, "linear",
"llama3", "yarn"), re-derived here op for op in fp32 so an HF checkpoint gives the same cos
and sin (the kinds and their fields: planner.domain.modelspec). The base frequencies are
theta^(-2i/d) for i = 0 .. d/2 - 1 (RoFormer, Su et al. 2021).
- linear: every frequency / factor (position interpolation, Chen et al. 2023).
- llama3: wavelength 2 pi / f; above original / low_freq_factor: f / factor; below
  original / high_freq_factor: f; between: (1 - s) f / factor + s f with
  s = (original / wavelength - low_freq_factor) / (high_freq_factor - low_freq_factor).
- yarn (Peng et al. 2023, sec. 3.2): dimension of r rotations over the original context
  d ln(original / (2 pi r)) / (2 ln theta); the ramp runs from the beta_fast dimension (low)
  to the beta_slow one (high), floored / ceiled when truncate, clamped to [0, d - 1];
  f = f / factor x ramp + f x (1 - ramp) per dimension pair; cos and sin are multiplied by the
  attention scaling (YarnRopeScaling.attention_scaling).
"""

from __future__ import annotations

import math

import torch

from planner.domain.modelspec import (
    LinearRopeScaling,
    Llama3RopeScaling,
    RopeScaling,
    YarnRopeScaling,
)


def base_inverse_frequencies(head_dim: int, theta: float, device: torch.device) -> torch.Tensor:
    """theta^(-2i/d), i = 0 .. d/2 - 1, fp32 [head_dim / 2]."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64, device=device).float() / head_dim
    return 1.0 / (theta ** exponents)


def _llama3(inv_freq: torch.Tensor, scaling: Llama3RopeScaling) -> torch.Tensor:
    low_wavelen = scaling.original_max_positions / scaling.low_freq_factor
    high_wavelen = scaling.original_max_positions / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / scaling.factor, inv_freq)
    smooth = (scaling.original_max_positions / wavelen - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor)
    smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
    return torch.where(medium, smoothed, scaled)


def _yarn_dimension(rotations: float, head_dim: int, theta: float, original: int) -> float:
    """The dimension whose frequency makes `rotations` turns over `original` positions."""
    return head_dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(theta))


def _yarn(head_dim: int, theta: float, scaling: YarnRopeScaling, device: torch.device
          ) -> torch.Tensor:
    positional = theta ** (torch.arange(0, head_dim, 2, device=device).float() / head_dim)
    extrapolation = 1.0 / positional
    interpolation = 1.0 / (scaling.factor * positional)
    low = _yarn_dimension(scaling.beta_fast, head_dim, theta, scaling.original_max_positions)
    high = _yarn_dimension(scaling.beta_slow, head_dim, theta, scaling.original_max_positions)
    if scaling.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, head_dim - 1)
    if low == high:
        high += 0.001    # transformers' guard against a zero-width ramp
    ramp = torch.clamp((torch.arange(head_dim // 2, dtype=torch.float32) - low) / (high - low),
                       0, 1).to(device)
    keep = 1 - ramp
    return interpolation * (1 - keep) + extrapolation * keep


def inverse_frequencies(head_dim: int, theta: float, scaling: RopeScaling | None,
                        device: torch.device) -> torch.Tensor:
    """fp32 [head_dim / 2] inverse frequencies under `scaling` (module docstring)."""
    if isinstance(scaling, YarnRopeScaling):
        return _yarn(head_dim, theta, scaling, device)
    inv_freq = base_inverse_frequencies(head_dim, theta, device)
    if isinstance(scaling, LinearRopeScaling):
        return inv_freq / scaling.factor
    if isinstance(scaling, Llama3RopeScaling):
        return _llama3(inv_freq, scaling)
    assert scaling is None, scaling
    return inv_freq


def attention_scaling(scaling: RopeScaling | None) -> float:
    """Multiplier of cos and sin: yarn's attention scaling, else 1."""
    return scaling.attention_scaling if isinstance(scaling, YarnRopeScaling) else 1.0
