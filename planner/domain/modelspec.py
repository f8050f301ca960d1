"""Model specs of the LLaMA family: architecture and parameter counts.

Sources: the HF `config.json` of each published checkpoint (LLaMA-2, Code Llama 34B,
Llama 3, Qwen2.5). Parameter counts follow the module shapes of HF `LlamaForCausalLM`:
embedding V*h; per layer q,o of h*h, k,v of h*(kv_heads*head_dim) (plus biases for Qwen),
gate/up/down of h*I each, two RMSNorm weights of h; final norm h; output head V*h unless
tied. A critic or reward model replaces the head with a scalar value head of h (+1 bias).
"""

from __future__ import annotations

from typing import Literal

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


class ModelSpec(BaseModel):
    """Architecture of one decoder-only model of the LLaMA family."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    name: str
    num_layers: int = Field(ge=1, le=MAX_LAYERS)
    hidden_size: int = Field(ge=1, le=MAX_HIDDEN_SIZE)
    num_heads: int = Field(ge=1, le=MAX_HEADS)
    num_kv_heads: int = Field(ge=1, le=MAX_HEADS)
    intermediate_size: int = Field(ge=1, le=MAX_INTERMEDIATE_SIZE)
    vocab_size: int = Field(ge=2, le=MAX_VOCAB_SIZE)
    max_positions: int = Field(ge=1, le=MAX_POSITIONS)
    rope_theta: float = Field(default=10000.0, gt=0, le=MAX_ROPE_THETA)
    norm_eps: float = Field(default=1e-5, gt=0, le=MAX_NORM_EPS)
    attention_bias: bool = False
    tie_embeddings: bool = False

    @model_validator(mode="after")
    def _check_heads(self) -> "ModelSpec":
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by "
                             f"num_heads {self.num_heads}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads {self.num_heads} is not divisible by "
                             f"num_kv_heads {self.num_kv_heads}")
        return self

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def kv_dim(self) -> int:
        """Width of the K (or V) projection output."""
        return self.num_kv_heads * self.head_dim

    def attention_params_per_layer(self) -> int:
        h = self.hidden_size
        weights = 2 * h * h + 2 * h * self.kv_dim
        biases = (h + 2 * self.kv_dim) if self.attention_bias else 0
        return weights + biases

    def mlp_params_per_layer(self) -> int:
        return 3 * self.hidden_size * self.intermediate_size

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

    def matmul_params_per_layer(self) -> int:
        """Parameters of one block that take part in matrix multiplies (no norms, no biases)."""
        h = self.hidden_size
        return 2 * h * h + 2 * h * self.kv_dim + self.mlp_params_per_layer()


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
        ModelSpec(name="qwen2.5-7b", num_layers=28, hidden_size=3584, num_heads=28,
                  num_kv_heads=4, intermediate_size=18944, vocab_size=152064,
                  max_positions=32768, rope_theta=1e6, norm_eps=1e-6, attention_bias=True),
        ModelSpec(name="qwen2.5-32b", num_layers=64, hidden_size=5120, num_heads=40,
                  num_kv_heads=8, intermediate_size=27648, vocab_size=152064,
                  max_positions=32768, rope_theta=1e6, norm_eps=1e-6, attention_bias=True),
        # Tiny sizes for tests: train in seconds on a CPU.
        ModelSpec(name="llama-tiny", num_layers=4, hidden_size=256, num_heads=8, num_kv_heads=4,
                  intermediate_size=688, vocab_size=1024, max_positions=512),
        ModelSpec(name="llama-small", num_layers=8, hidden_size=512, num_heads=8, num_kv_heads=8,
                  intermediate_size=1376, vocab_size=4096, max_positions=1024),
    ]
}
