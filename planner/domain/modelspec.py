"""Model specs of the LLaMA family: architecture and parameter counts.

Sources: the HF `config.json` of each published checkpoint (LLaMA-2, Code Llama 34B,
Llama 3, Qwen2.5, Qwen3-MoE, Mixtral). Parameter counts follow the module shapes of HF `LlamaForCausalLM`,
`Qwen2ForCausalLM` and `Qwen3ForCausalLM`: embedding V*h; per layer q of (heads*head_dim)*h,
o of h*(heads*head_dim), k,v of (kv_heads*head_dim)*h (plus q/k/v biases for Qwen2), Qwen3's
q_norm and k_norm of head_dim each, gate/up/down of h*I each, two RMSNorm weights of h; final
norm h; output head V*h unless tied. A critic or reward model replaces the head with a scalar
value head of h (+1 bias). head_dim is hidden_size / heads unless the config says otherwise
(Qwen3: 128 whatever the hidden size).

Mixture-of-experts blocks (`moe`, MoeSpec): every block's MLP is replaced by a router (a
linear of h -> experts, no bias), `num_experts` SwiGLU experts of `expert_intermediate_size`
each (gate/up/down: 3 h I_e), of which `experts_per_token` run per token, and, in Qwen2-MoE,
one shared SwiGLU expert of `shared_expert_intermediate_size` scaled by a sigmoid gate (a
linear of h -> 1), as HF `MixtralSparseMoeBlock`, `Qwen2MoeSparseMoeBlock` and
`Qwen3MoeSparseMoeBlock` compute. Active parameters count the router, the top-k experts and
the shared expert. Models whose config keeps some blocks dense (`mlp_only_layers`,
`decoder_sparse_step` > 1) are refused when read (model_files.py): every block is alike here.
`intermediate_size` of a MoE spec is its config's: Mixtral's expert width (the one MLP width
MixtralConfig has, so it must equal `expert_intermediate_size`); Qwen-MoE's dense-MLP width,
which only the dense blocks that are refused would use (kept so that a config written back
from the spec is the one read).

Rotary scaling (`rope_scaling`): the three kinds transformers' modeling_rope_utils.py
ROPE_INIT_FUNCTIONS computes and that we run (runtime/rope.py): "llama3" (Llama 3.1/3.2/3.3),
"linear" (position interpolation, Chen et al. 2023) and "yarn" (Peng et al. 2023).
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

HeadKind = Literal["lm", "value"]

# Upper bounds of the architecture numbers: several times the largest published model
# (Llama 3.1 405B: 126 layers, hidden 16,384, 128 heads, MLP 53,248; vocabularies up to
# 262,144 (Gemma 3); contexts up to 10M tokens (Llama 4 Scout)), so a real config always
# fits and a stray digit is refused before it becomes a memory estimate in exabytes.
MAX_LAYERS = 1_024
MAX_HIDDEN_SIZE = 131_072
MAX_HEADS = 4_096
MAX_INTERMEDIATE_SIZE = 1_048_576
MAX_VOCAB_SIZE = 4_194_304
MAX_POSITIONS = 16_777_216
# Published RoPE bases run from 1e4 to about 1e9 (long-context variants).
MAX_ROPE_THETA = 1e12
# RMSNorm epsilons are 1e-5 or 1e-6; one near 1 would swamp the activations it normalises.
MAX_NORM_EPS = 1.0
# Head widths run from 64 to 256 (Gemma 2: 256); 4096 is far beyond any published one.
MAX_HEAD_DIM = 4_096
# Rope scaling factors published: 8 (Llama 3.1), 4 (Qwen2.5 yarn), 32 (Llama 3.2 1B long
# context); 1024 bounds a stray digit.
MAX_ROPE_FACTOR = 1_024.0

# Published MoE models have 8 (Mixtral) to 256 (DeepSeek-V3) routed experts; 4,096 bounds a
# stray digit.
MAX_EXPERTS = 4_096

_FROZEN = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

# HF module naming and routing conventions of a MoE family (MoeSpec.family).
MoeFamily = Literal["mixtral", "qwen2_moe", "qwen3_moe"]


class Llama3RopeScaling(BaseModel):
    """Llama 3.1's rope scaling (transformers _compute_llama3_parameters): wavelengths longer
    than original_max_positions / low_freq_factor are divided by `factor`, those shorter than
    original_max_positions / high_freq_factor kept, and those between interpolated smoothly."""

    model_config = _FROZEN

    type: Literal["llama3"] = "llama3"
    factor: float = Field(gt=0, le=MAX_ROPE_FACTOR,
                          description="divisor of the low inverse frequencies (Llama 3.1: 8)")
    low_freq_factor: float = Field(gt=0, le=MAX_ROPE_FACTOR,
                                   description="original context / wavelength below which "
                                               "frequencies are fully scaled (Llama 3.1: 1)")
    high_freq_factor: float = Field(gt=0, le=MAX_ROPE_FACTOR,
                                    description="original context / wavelength above which "
                                                "frequencies are kept (Llama 3.1: 4)")
    original_max_positions: int = Field(ge=1, le=MAX_POSITIONS,
                                        description="context length of pre-training, tokens "
                                                    "(Llama 3.1: 8192)")

    @model_validator(mode="after")
    def _check_band(self) -> Llama3RopeScaling:
        if self.high_freq_factor <= self.low_freq_factor:
            raise ValueError(f"high_freq_factor {self.high_freq_factor} must exceed "
                             f"low_freq_factor {self.low_freq_factor}")
        return self


class LinearRopeScaling(BaseModel):
    """Linear position interpolation: every inverse frequency divided by `factor`
    (transformers _compute_linear_scaling_rope_parameters)."""

    model_config = _FROZEN

    type: Literal["linear"] = "linear"
    factor: float = Field(gt=0, le=MAX_ROPE_FACTOR,
                          description="divisor of every inverse frequency (positions / factor)")


class YarnRopeScaling(BaseModel):
    """YaRN (Peng et al. 2023; transformers _compute_yarn_parameters): inverse frequencies
    blended between interpolated (/ factor) and original by a linear ramp over the dimensions
    whose rotation counts over original_max_positions lie between beta_slow and beta_fast;
    cos and sin multiplied by `attention_scaling`."""

    model_config = _FROZEN

    type: Literal["yarn"] = "yarn"
    factor: float = Field(gt=0, le=MAX_ROPE_FACTOR,
                          description="context extension ratio (Qwen2.5 long context: 4)")
    original_max_positions: int = Field(ge=1, le=MAX_POSITIONS,
                                        description="context length of pre-training, tokens")
    beta_fast: float = Field(default=32.0, gt=0, le=MAX_POSITIONS,
                             description="rotations above which a dimension is kept as is")
    beta_slow: float = Field(default=1.0, gt=0, le=MAX_POSITIONS,
                             description="rotations below which a dimension is interpolated")
    attention_factor: float | None = Field(
        default=None, gt=0, le=MAX_ROPE_FACTOR,
        description="multiplier of cos and sin; None: from factor, mscale and mscale_all_dim")
    mscale: float | None = Field(default=None, ge=0, le=MAX_ROPE_FACTOR,
                                    description="DeepSeek-style numerator of attention_factor")
    mscale_all_dim: float | None = Field(default=None, ge=0, le=MAX_ROPE_FACTOR,
                                            description="DeepSeek-style denominator")
    truncate: bool = Field(default=True,
                           description="round the ramp's ends to whole dimensions")

    @property
    def attention_scaling(self) -> float:
        """attention_factor, else 0.1 x mscale x ln(factor) + 1 over the same with
        mscale_all_dim when both are given (non-zero), else 0.1 ln(factor) + 1 (YaRN eq. 21;
        1 for factor <= 1), as transformers computes it."""
        if self.attention_factor is not None:
            return self.attention_factor

        def get_mscale(scale: float, mscale: float = 1.0) -> float:
            return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0

        if self.mscale and self.mscale_all_dim:
            return get_mscale(self.factor, self.mscale) / get_mscale(self.factor,
                                                                      self.mscale_all_dim)
        return get_mscale(self.factor)


class MoeSpec(BaseModel):
    """The mixture-of-experts MLP of every block (module docstring)."""

    model_config = _FROZEN

    family: MoeFamily = Field(description=(
        "HF module naming and routing of the block: mixtral (block_sparse_moe.experts.j.w1/"
        "w3/w2, top-k always renormalised), qwen2_moe (mlp.experts.j.gate/up/down_proj and a "
        "gated shared expert), qwen3_moe (as qwen2_moe without the shared expert)"))
    num_experts: int = Field(ge=2, le=MAX_EXPERTS, description="routed experts per block")
    experts_per_token: int = Field(ge=1, le=MAX_EXPERTS,
                                   description="experts each token is routed to (top-k)")
    expert_intermediate_size: int = Field(ge=1, le=MAX_INTERMEDIATE_SIZE,
                                          description="intermediate width of one expert")
    shared_expert_intermediate_size: int = Field(
        default=0, ge=0, le=MAX_INTERMEDIATE_SIZE,
        description="intermediate width of the shared expert (qwen2_moe); 0: none")
    normalize_top_k: bool = Field(description=(
        "renormalise the top-k routing probabilities to sum to 1 (mixtral always; Qwen's "
        "norm_topk_prob)"))

    @model_validator(mode="after")
    def _check_family(self) -> MoeSpec:
        if self.experts_per_token > self.num_experts:
            raise ValueError(f"experts_per_token {self.experts_per_token} exceeds num_experts "
                             f"{self.num_experts}")
        if self.shared_expert_intermediate_size and self.family != "qwen2_moe":
            raise ValueError(f"a shared expert is a qwen2_moe block; {self.family} has none")
        if self.family == "mixtral" and not self.normalize_top_k:
            raise ValueError("mixtral always renormalises its top-k routing weights")
        return self

    def router_params(self, hidden_size: int) -> int:
        """The router (h -> experts) and, with a shared expert, its gate (h -> 1)."""
        gate = hidden_size if self.shared_expert_intermediate_size else 0
        return hidden_size * self.num_experts + gate

    def expert_params(self, hidden_size: int) -> int:
        """One routed expert: gate, up and down projections."""
        return 3 * hidden_size * self.expert_intermediate_size

    def shared_expert_params(self, hidden_size: int) -> int:
        return 3 * hidden_size * self.shared_expert_intermediate_size


RopeScaling = Annotated[Llama3RopeScaling | LinearRopeScaling | YarnRopeScaling,
                        Field(discriminator="type")]


class ModelSpec(BaseModel):
    """Architecture of one decoder-only model of the LLaMA family."""

    model_config = _FROZEN

    name: str
    num_layers: int = Field(ge=1, le=MAX_LAYERS)
    hidden_size: int = Field(ge=1, le=MAX_HIDDEN_SIZE)
    num_heads: int = Field(ge=1, le=MAX_HEADS)
    num_kv_heads: int = Field(ge=1, le=MAX_HEADS)
    intermediate_size: int = Field(ge=1, le=MAX_INTERMEDIATE_SIZE, description=(
        "width of the dense SwiGLU MLP; with `moe`, the config's (module docstring)"))
    vocab_size: int = Field(ge=2, le=MAX_VOCAB_SIZE)
    max_positions: int = Field(ge=1, le=MAX_POSITIONS)
    head_dim: int = Field(ge=2, le=MAX_HEAD_DIM,
                          description="width of one attention head; default hidden_size / "
                                      "num_heads")
    rope_theta: float = Field(default=10000.0, gt=0, le=MAX_ROPE_THETA)
    rope_scaling: RopeScaling | None = Field(
        default=None, description="rotary frequency scaling (module docstring); None: none")
    norm_eps: float = Field(default=1e-5, gt=0, le=MAX_NORM_EPS)
    attention_bias: bool = Field(default=False, description="q/k/v biases (Qwen2)")
    qk_norm: bool = Field(default=False, description="RMSNorm of each q and k head over "
                                                     "head_dim before rotary (Qwen3)")
    tie_embeddings: bool = False
    moe: MoeSpec | None = Field(default=None, description=(
        "mixture-of-experts MLP of every block (MoeSpec); None: a dense SwiGLU MLP of "
        "intermediate_size"))

    @model_validator(mode="before")
    @classmethod
    def _default_head_dim(cls, data: Any) -> Any:
        """head_dim absent: hidden_size / num_heads, which must then divide evenly."""
        if isinstance(data, dict) and data.get("head_dim") is None:
            hidden, heads = data.get("hidden_size"), data.get("num_heads")
            # Out-of-range heads are left to the field's own bound check.
            if isinstance(hidden, int) and isinstance(heads, int) and 1 <= heads <= MAX_HEADS:
                if hidden % heads:
                    raise ValueError(f"hidden_size {hidden} is not divisible by num_heads "
                                     f"{heads}; give head_dim")
                data = {**data, "head_dim": hidden // heads}
        return data

    @model_validator(mode="after")
    def _check_heads(self) -> ModelSpec:
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads {self.num_heads} is not divisible by "
                             f"num_kv_heads {self.num_kv_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim {self.head_dim} is odd; rotary embeddings pair the "
                             f"two halves of a head, so it must be even")
        return self

    @model_validator(mode="after")
    def _check_mixtral_width(self) -> ModelSpec:
        """MixtralConfig has one MLP width, intermediate_size, that of every expert."""
        if self.moe is not None and self.moe.family == "mixtral" and \
                self.intermediate_size != self.moe.expert_intermediate_size:
            raise ValueError(f"a mixtral expert is intermediate_size wide: "
                             f"expert_intermediate_size {self.moe.expert_intermediate_size} "
                             f"differs from intermediate_size {self.intermediate_size}")
        return self

    @property
    def q_dim(self) -> int:
        """Width of the Q projection output and of the O projection input: heads x head_dim."""
        return self.num_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        """Width of the K (or V) projection output."""
        return self.num_kv_heads * self.head_dim

    def attention_params_per_layer(self) -> int:
        """q, k, v, o weights, q/k/v biases (Qwen2) and q/k norm weights (Qwen3)."""
        h = self.hidden_size
        weights = 2 * h * self.q_dim + 2 * h * self.kv_dim
        biases = (self.q_dim + 2 * self.kv_dim) if self.attention_bias else 0
        norms = 2 * self.head_dim if self.qk_norm else 0
        return weights + biases + norms

    def mlp_params_per_layer(self) -> int:
        """The block's MLP: dense gate/up/down, or the MoE router, every expert and the
        shared expert."""
        h = self.hidden_size
        if self.moe is None:
            return 3 * h * self.intermediate_size
        return (self.moe.router_params(h) + self.moe.num_experts * self.moe.expert_params(h)
                + self.moe.shared_expert_params(h))

    def active_mlp_params_per_layer(self) -> int:
        """The MLP parameters one token runs through: all of a dense MLP; the router, its
        top-k experts and the shared expert of a MoE block."""
        h = self.hidden_size
        if self.moe is None:
            return self.mlp_params_per_layer()
        return (self.moe.router_params(h)
                + self.moe.experts_per_token * self.moe.expert_params(h)
                + self.moe.shared_expert_params(h))

    def params_per_layer(self) -> int:
        """Parameters of one transformer block (attention, MLP, two RMSNorm weights)."""
        return self.attention_params_per_layer() + self.mlp_params_per_layer() + 2 * self.hidden_size

    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size

    def head_params(self, head: HeadKind = "lm") -> int:
        """Final norm plus output head (LM head of V*h, or value head of h + 1 bias)."""
        if head == "value":
            return self.hidden_size + self.hidden_size + 1
        lm = 0 if self.tie_embeddings else self.vocab_size * self.hidden_size
        return self.hidden_size + lm

    def num_params(self, head: HeadKind = "lm") -> int:
        """Total parameter count of the model with the given head."""
        return (self.embedding_params() + self.num_layers * self.params_per_layer()
                + self.head_params(head))

    def active_params(self, head: HeadKind = "lm") -> int:
        """Parameters one token runs through (num_params for a dense model; a MoE block
        counts its router, top-k experts and shared expert only)."""
        inactive = self.mlp_params_per_layer() - self.active_mlp_params_per_layer()
        return self.num_params(head) - self.num_layers * inactive

    def matmul_params_per_layer(self) -> int:
        """Parameters of one block that one token multiplies by (no norms, no biases; of a
        MoE block the router, the top-k experts and the shared expert)."""
        h = self.hidden_size
        return 2 * h * self.q_dim + 2 * h * self.kv_dim + self.active_mlp_params_per_layer()


def _llama2(name: str, layers: int, hidden: int, heads: int, kv_heads: int, inter: int,
            max_positions: int = 4096) -> ModelSpec:
    return ModelSpec(name=name, num_layers=layers, hidden_size=hidden, num_heads=heads,
                     num_kv_heads=kv_heads, intermediate_size=inter, vocab_size=32000,
                     max_positions=max_positions)


PRESETS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in [
        _llama2("llama-7b", 32, 4096, 32, 32, 11008),
        _llama2("llama-13b", 40, 5120, 40, 40, 13824),
        ModelSpec(name="llama-34b", num_layers=48, hidden_size=8192, num_heads=64, num_kv_heads=8,
                  intermediate_size=22016, vocab_size=32000, max_positions=16384,
                  rope_theta=1e6),
        _llama2("llama-70b", 80, 8192, 64, 8, 28672),
        ModelSpec(name="llama3-8b", num_layers=32, hidden_size=4096, num_heads=32, num_kv_heads=8,
                  intermediate_size=14336, vocab_size=128256, max_positions=8192,
                  rope_theta=500000.0),
        ModelSpec(name="llama3-70b", num_layers=80, hidden_size=8192, num_heads=64,
                  num_kv_heads=8, intermediate_size=28672, vocab_size=128256,
                  max_positions=8192, rope_theta=500000.0),
        # meta-llama/Llama-3.1-405B config.json; 405,853,388,800 parameters as published
        # (the checkpoint's safetensors total, bf16).
        ModelSpec(name="llama-3.1-405b", num_layers=126, hidden_size=16384, num_heads=128,
                  num_kv_heads=8, intermediate_size=53248, vocab_size=128256,
                  max_positions=131072, rope_theta=500000.0,
                  rope_scaling=Llama3RopeScaling(factor=8.0, low_freq_factor=1.0,
                                                 high_freq_factor=4.0,
                                                 original_max_positions=8192)),
        ModelSpec(name="qwen2.5-7b", num_layers=28, hidden_size=3584, num_heads=28,
                  num_kv_heads=4, intermediate_size=18944, vocab_size=152064,
                  max_positions=32768, rope_theta=1e6, norm_eps=1e-6, attention_bias=True),
        ModelSpec(name="qwen2.5-32b", num_layers=64, hidden_size=5120, num_heads=40,
                  num_kv_heads=8, intermediate_size=27648, vocab_size=152064,
                  max_positions=32768, rope_theta=1e6, norm_eps=1e-6, attention_bias=True),
        # Qwen/Qwen3-30B-A3B config.json (qwen3_moe: 128 experts of 768, top 8 renormalised,
        # q/k norms, head_dim 128); its model card: 30.5B parameters, 3.3B activated, 29.9B
        # non-embedding (tests/foundation/test_moe_specs.py).
        ModelSpec(name="qwen3-30b-a3b", num_layers=48, hidden_size=2048, num_heads=32,
                  num_kv_heads=4, head_dim=128, intermediate_size=6144, vocab_size=151936,
                  max_positions=40960, rope_theta=1e6, norm_eps=1e-6, qk_norm=True,
                  moe=MoeSpec(family="qwen3_moe", num_experts=128, experts_per_token=8,
                              expert_intermediate_size=768, normalize_top_k=True)),
        # Qwen/Qwen3-235B-A22B config.json (as Qwen3-30B-A3B, 128 experts of 1536); its model
        # card: 235B parameters, 22B activated, 234B non-embedding.
        ModelSpec(name="qwen3-235b-a22b", num_layers=94, hidden_size=4096, num_heads=64,
                  num_kv_heads=4, head_dim=128, intermediate_size=12288, vocab_size=151936,
                  max_positions=40960, rope_theta=1e6, norm_eps=1e-6, qk_norm=True,
                  moe=MoeSpec(family="qwen3_moe", num_experts=128, experts_per_token=8,
                              expert_intermediate_size=1536, normalize_top_k=True)),
        # mistralai/Mixtral-8x7B-v0.1 config.json (8 experts of 14336, top 2, no sliding
        # window); its model card: 46.7B parameters, 12.9B used per token.
        ModelSpec(name="mixtral-8x7b", num_layers=32, hidden_size=4096, num_heads=32,
                  num_kv_heads=8, intermediate_size=14336, vocab_size=32000,
                  max_positions=32768, rope_theta=1e6,
                  moe=MoeSpec(family="mixtral", num_experts=8, experts_per_token=2,
                              expert_intermediate_size=14336, normalize_top_k=True)),
        # Tiny sizes for tests: train in seconds on a CPU.
        ModelSpec(name="llama-tiny", num_layers=4, hidden_size=256, num_heads=8, num_kv_heads=4,
                  intermediate_size=688, vocab_size=1024, max_positions=512),
        ModelSpec(name="llama-small", num_layers=8, hidden_size=512, num_heads=8, num_kv_heads=8,
                  intermediate_size=1376, vocab_size=4096, max_positions=1024),
        # Qwen3-MoE style (q/k norms, top-k renormalised) and Qwen2-MoE style (q/k/v biases,
        # a gated shared expert, top-k not renormalised as in Qwen1.5-MoE-A2.7B).
        ModelSpec(name="moe-tiny", num_layers=4, hidden_size=128, num_heads=4, num_kv_heads=2,
                  intermediate_size=256, vocab_size=1024, max_positions=512, norm_eps=1e-6,
                  qk_norm=True,
                  moe=MoeSpec(family="qwen3_moe", num_experts=8, experts_per_token=2,
                              expert_intermediate_size=64, normalize_top_k=True)),
        ModelSpec(name="moe-tiny-shared", num_layers=4, hidden_size=128, num_heads=4,
                  num_kv_heads=2, intermediate_size=256, vocab_size=1024, max_positions=512,
                  norm_eps=1e-6, attention_bias=True,
                  moe=MoeSpec(family="qwen2_moe", num_experts=8, experts_per_token=2,
                              expert_intermediate_size=64, shared_expert_intermediate_size=128,
                              normalize_top_k=False)),
    ]
}
