"""Distributions of prompt and response lengths (tokens per sequence) and their order
statistics.

A batch file gives each length in one of three forms:
- `512`: every sequence has that length (a point mass);
- `{mean: 232, max: 1024}`: a clipped geometric length (below);
- `[{len: 128, weight: 3}, {len: 1024, weight: 1}]`: buckets, each a length and its share
  of the sequences (weights > 0, normalised by their sum; each `len` once).

{mean, max}: response lengths of RL rollouts are long-tailed: most responses stop early, a
few run to the limit (RLHFuse, Zhong et al. 2024, arXiv:2409.13221; verl's GRPO
run on Qwen2.5-7B, ../shared/gpu-anchors.md case w5: mean 232, max 1024). We assume a
constant probability p per token that the sequence ends (its stop token), i.e. a geometric
length, the discrete exponential and the maximum-entropy law on 1, 2, ... for a given mean,
clipped at max because the runtime stops every unfinished row there (the atom at max):
    F(l) = P(L <= l) = 1 - (1 - p)^l  for 1 <= l < max,   F(max) = 1,
    E[L] = sum_{l=0}^{max-1} (1 - p)^l = (1 - (1 - p)^max) / p,
with p solved for the given mean (E[L] falls from max at p -> 0 to 1 at p = 1). mean = max
is the point mass at max. For w5 this puts 1.3% of the responses at the 1024 limit.

Order statistics (sequences independent): the longest of n rows has the CDF F(l)^n, so
    E[max of n] = sum_{l >= 1} (1 - F(l - 1)^n),
which over the steps of F (support l_1 < ... < l_k) is exactly
sum_j (l_j - l_{j-1}) (1 - F(l_{j-1})^n) with l_0 = 0, F(l_0) = 0.
"""

from __future__ import annotations

import math
from functools import cached_property
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

# RLHF iterations process sequences of up to some 100k tokens; this leaves a wide margin
# while a stray digit is refused before it turns into an estimate of years.
MAX_TOKENS_PER_SEQUENCE = 1_048_576
# Bisection steps for the stop probability p in (0, 1]: 200 halvings reach below 1e-60,
# far under the double precision of the mean.
_BISECTION_STEPS = 200


class _Lengths(BaseModel):
    """A distribution over integer lengths. Each form gives `support` (the lengths with
    positive probability, ascending, int64), `cdf_at_support` (F there; the last is 1) and
    `to_data()` (the form a file writes)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @property
    def max_len(self) -> int:
        return int(self.support[-1])

    @cached_property
    def pmf_at_support(self) -> np.ndarray:
        return np.diff(self.cdf_at_support, prepend=0.0)

    @cached_property
    def cdf_by_length(self) -> np.ndarray:
        """F(1), F(2), ..., F(max_len): the CDF at every length up to the maximum."""
        return self.cdf(np.arange(1, self.max_len + 1))

    @cached_property
    def _by_row_count(self) -> dict[tuple[str, int], Any]:
        """longest_pmf and expected_longest of one row count, by (name, rows): the search
        prices thousands of layouts whose micro-batches share a few row counts."""
        return {}

    def longest_pmf(self, rows: int) -> np.ndarray:
        """P(longest of `rows` sequences = l) at each support length l: F(l)^n - F(l-)^n
        (memoised; read-only)."""
        key = ("longest_pmf", int(rows))
        pmf = self._by_row_count.get(key)
        if pmf is None:
            pmf = np.diff(self.cdf_at_support ** float(rows), prepend=0.0)
            pmf.setflags(write=False)
            self._by_row_count[key] = pmf
        return pmf

    @property
    def mean_len(self) -> float:
        return float(np.dot(self.support, self.pmf_at_support))

    def cdf(self, lengths) -> np.ndarray:
        """F(l) = P(L <= l) at integer lengths `l` (any shape)."""
        at = np.searchsorted(self.support, np.asarray(lengths), side="right")
        return np.concatenate(([0.0], self.cdf_at_support))[at]

    def expected_longest(self, rows) -> np.ndarray:
        """E[longest of `rows` independent sequences] (exact; `rows` any shape, >= 1;
        memoised for one integer row count)."""
        if isinstance(rows, (int, np.integer)):
            key = ("expected_longest", int(rows))
            if key not in self._by_row_count:
                self._by_row_count[key] = self._expected_longest(rows)
            return self._by_row_count[key]
        return self._expected_longest(rows)

    def _expected_longest(self, rows) -> np.ndarray:
        n = np.asarray(rows, dtype=float)[..., None]
        widths = np.diff(self.support, prepend=0)
        below = np.concatenate(([0.0], self.cdf_at_support[:-1]))
        return np.sum(widths * (1.0 - below ** n), axis=-1)

    def quantile(self, u) -> np.ndarray:
        """The smallest length l with F(l) >= u, for u in (0, 1]: draws lengths from
        uniforms (inverse CDF)."""
        at = np.searchsorted(self.cdf_at_support, np.asarray(u, dtype=float), side="left")
        return self.support[np.minimum(at, len(self.support) - 1)]


class FixedLength(_Lengths):
    """Every sequence has `length` tokens."""

    length: int = Field(ge=1, le=MAX_TOKENS_PER_SEQUENCE)

    @cached_property
    def support(self) -> np.ndarray:
        return np.array([self.length], dtype=np.int64)

    @cached_property
    def cdf_at_support(self) -> np.ndarray:
        return np.ones(1)

    def to_data(self) -> int:
        return self.length


class ClippedGeometricLengths(_Lengths):
    """{mean, max}: a geometric length clipped at max (module docstring)."""

    mean: float = Field(ge=1, allow_inf_nan=False)
    max: int = Field(ge=1, le=MAX_TOKENS_PER_SEQUENCE)

    @model_validator(mode="after")
    def _mean_within_max(self) -> "ClippedGeometricLengths":
        if self.mean > self.max:
            raise ValueError(f"mean {self.mean:g} exceeds max {self.max}; give 1 <= mean <= max")
        return self

    @cached_property
    def stop_probability(self) -> float:
        """p with (1 - (1 - p)^max) / p = mean, by bisection (the mean falls as p grows)."""
        if self.mean >= self.max:
            return 0.0
        low, high = 0.0, 1.0
        for _ in range(_BISECTION_STEPS):
            p = 0.5 * (low + high)
            mean = -math.expm1(self.max * math.log1p(-p)) / p if p < 1.0 else 1.0
            low, high = (p, high) if mean > self.mean else (low, p)
        return high

    @cached_property
    def support(self) -> np.ndarray:
        return np.arange(1, self.max + 1, dtype=np.int64)

    @cached_property
    def cdf_at_support(self) -> np.ndarray:
        p = self.stop_probability
        cdf = -np.expm1(self.support * np.log1p(-p)) if p < 1.0 else np.ones(self.max)
        cdf[-1] = 1.0
        return cdf

    def to_data(self) -> dict:
        return {"mean": self.mean, "max": self.max}


class LengthBucket(BaseModel):
    """A share `weight` of the sequences has `len` tokens."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    len: int = Field(ge=1, le=MAX_TOKENS_PER_SEQUENCE)
    weight: float = Field(gt=0, allow_inf_nan=False)


class BucketLengths(_Lengths):
    """A list of buckets: point masses at each `len`, weights normalised by their sum."""

    buckets: tuple[LengthBucket, ...]

    @model_validator(mode="after")
    def _distinct(self) -> "BucketLengths":
        if not self.buckets:
            raise ValueError("no buckets; give at least one {len: N, weight: W}")
        lengths = [b.len for b in self.buckets]
        twice = sorted({n for n in lengths if lengths.count(n) > 1})
        if twice:
            raise ValueError(f"len {twice[0]} is given twice; give each length once (with "
                             f"the summed weight)")
        return self

    @cached_property
    def _order(self) -> np.ndarray:
        return np.argsort([b.len for b in self.buckets], kind="stable")

    @cached_property
    def support(self) -> np.ndarray:
        return np.array([b.len for b in self.buckets], dtype=np.int64)[self._order]

    @cached_property
    def cdf_at_support(self) -> np.ndarray:
        weights = np.array([b.weight for b in self.buckets])[self._order]
        cdf = np.cumsum(weights) / weights.sum()
        cdf[-1] = 1.0
        return cdf

    def to_data(self) -> list[dict]:
        return [b.model_dump() for b in self.buckets]


LengthDistribution = FixedLength | ClippedGeometricLengths | BucketLengths
FORMS = "a length (512), {mean: M, max: N} or a list of buckets [{len: N, weight: W}, ...]"


def _detail(error: dict, loc: tuple) -> InitErrorDetails:
    """One problem of a form's model, located at `loc`, worded for the file's author."""
    kind, in_bucket = error["type"], any(isinstance(part, int) for part in loc)
    if kind == "extra_forbidden":
        keys = "len, weight" if in_bucket else "mean, max"
        kind = PydanticCustomError("length_key", f"unknown key; valid keys: {keys}")
    elif kind == "model_type":
        kind = PydanticCustomError("length_form", "a bucket is {len: N, weight: W}")
    elif kind in ("value_error", "assertion_error"):
        kind = PydanticCustomError("length_value", str(error["ctx"]["error"]))
    return InitErrorDetails(type=kind, loc=loc, input=error["input"], ctx=error.get("ctx", {}))


def parse_length_distribution(raw: Any, field: str) -> LengthDistribution:
    """The {mean, max} mapping or bucket list a file gives under `field`; otherwise a
    ValidationError located at `field` and the sub-field, which the pydantic model holding
    the field passes on as its own problem."""
    if isinstance(raw, dict):
        model, data = ClippedGeometricLengths, raw
    elif isinstance(raw, (list, tuple)):
        model, data = BucketLengths, {"buckets": raw}
    else:
        raise ValidationError.from_exception_data("LengthDistribution", [InitErrorDetails(
            type=PydanticCustomError("length_form", f"got {raw!r}; give {FORMS}"),
            loc=(field,), input=raw)])
    try:
        return model.model_validate(data)
    except ValidationError as err:
        details = [_detail(e, (field,) + tuple(e["loc"])[1 if model is BucketLengths else 0:])
                   for e in err.errors()]
        raise ValidationError.from_exception_data("LengthDistribution", details) from None
