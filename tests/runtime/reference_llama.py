"""A dense, single-process LLaMA forward written straight from the HF modeling code's math.

Independent of the runtime's sharded layers: it takes the full parameters by HF name and
computes logits of one right- or left-padded batch, one sequence at a time, without padding
(each sequence's real tokens only), which also checks the runtime's padding handling.
"""

from __future__ import annotations

import torch

from planner.domain.modelspec import ModelSpec


def _rms(x, w, eps):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def _rotate_half(x):
    a, b = x.chunk(2, dim=-1)
    return torch.cat([-b, a], dim=-1)


def _sequence_logits(spec: ModelSpec, p: dict[str, torch.Tensor], ids: torch.Tensor):
    seq = ids.shape[0]
    hd, nh, nkv = spec.head_dim, spec.num_heads, spec.num_kv_heads
    inv_freq = 1.0 / spec.rope_theta ** (torch.arange(0, hd, 2).float() / hd)
    freqs = torch.outer(torch.arange(seq).float(), inv_freq)
    cos, sin = torch.cat([freqs, freqs], -1).cos(), torch.cat([freqs, freqs], -1).sin()
    x = p["model.embed_tokens.weight"][ids]
    causal = torch.full((seq, seq), float("-inf")).triu(1)
    for layer in range(spec.num_layers):
        pre = f"model.layers.{layer}."
        h = _rms(x, p[pre + "input_layernorm.weight"], spec.norm_eps)
        q = h @ p[pre + "self_attn.q_proj.weight"].T
        k = h @ p[pre + "self_attn.k_proj.weight"].T
        v = h @ p[pre + "self_attn.v_proj.weight"].T
        if spec.attention_bias:
            q = q + p[pre + "self_attn.q_proj.bias"]
            k = k + p[pre + "self_attn.k_proj.bias"]
            v = v + p[pre + "self_attn.v_proj.bias"]
        q = q.view(seq, nh, hd).transpose(0, 1)
        k = k.view(seq, nkv, hd).transpose(0, 1)
        v = v.view(seq, nkv, hd).transpose(0, 1)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        outs = []
        for head in range(nh):
            kv = head // (nh // nkv)
            scores = q[head] @ k[kv].T / hd ** 0.5 + causal
            outs.append(scores.softmax(-1) @ v[kv])
        attn = torch.cat(outs, dim=-1) @ p[pre + "self_attn.o_proj.weight"].T
        x = x + attn
        h = _rms(x, p[pre + "post_attention_layernorm.weight"], spec.norm_eps)
        gate = h @ p[pre + "mlp.gate_proj.weight"].T
        up = h @ p[pre + "mlp.up_proj.weight"].T
        x = x + (torch.nn.functional.silu(gate) * up) @ p[pre + "mlp.down_proj.weight"].T
    x = _rms(x, p["model.norm.weight"], spec.norm_eps)
    head = p["model.embed_tokens.weight" if spec.tie_embeddings else "lm_head.weight"]
    return x @ head.T


def reference_logits(spec: ModelSpec, params: dict[str, torch.Tensor], input_ids: torch.Tensor,
                     attention_mask: torch.Tensor) -> torch.Tensor:
    """[batch, seq, vocab] logits; positions of padding are left as zeros."""
    out = torch.zeros(*input_ids.shape, spec.vocab_size)
    for b in range(input_ids.shape[0]):
        real = attention_mask[b].bool()
        out[b, real] = _sequence_logits(spec, params, input_ids[b, real])
    return out
