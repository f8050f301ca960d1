"""AReaL's per-engine `backend` strings (`sglang:d4t2`, `megatron:d2p2t4`, `fsdp:d8`): read
and write the subset our plans express.

Source: inclusionAI/AReaL v1.0.4, areal/api/alloc_mode.py (ALLOCATION_GRAMMAR, a lark
grammar, and ModelAllocation.from_str) and docs/en/reference/alloc_mode.md:
- a backend string is `<backend>:<dims>` (optionally `<backend>[name]:<dims>`), dims a run
  of `<d|t|p|c|e><size>` with sizes from 1 and blanks ignored; an explicit backend prefix is
  required; a string with `+` (several components) is refused by from_str;
- the grammar reads d, t, p for an inference backend and d, t, p, c, e for a training one
  (AReaL's examples write `sglang:d4p1t1`, `fsdp:d4p1t1`); the backends use: sglang d, t
  (its servers get only tp_size, so p > 1 is refused here); vllm d, t, p; fsdp d, t, c
  (ModelAllocation refuses p or e > 1); megatron d, t, p, c, e (archon too, experimental);
  an omitted dimension is 1 and the engine's world size is d x t x p x c (e redistributes
  experts inside that mesh);
- for an inference backend `d` counts servers of t x p GPUs each.
What we do not model is refused with one line: context parallelism (c > 1), expert
parallelism (e > 1), the MoE `(attn:...|ffn:...)` form, archon, and a dimension written
twice (AReaL keeps the last one silently).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

INFERENCE_BACKENDS = ("sglang", "vllm")
TRAIN_BACKENDS = ("fsdp", "megatron")
GRAMMAR_DIMENSIONS = {True: "dtp", False: "dtpce"}      # inference engine or not
BACKEND_DIMENSIONS = {"sglang": "dt", "vllm": "dtp", "fsdp": "dtc", "megatron": "dtpce"}
_UNMODELLED = {"c": "context parallelism (c > 1) is not modelled yet",
               "e": "expert parallelism (e > 1) is not modelled yet"}
_SPEC = re.compile(r"^(?P<backend>[a-z]+)(?:\[(?P<name>[A-Za-z_]\w*)\])?:(?P<dims>.+)$")
_DIM = re.compile(r"([a-z])([1-9]\d*)")


@dataclass(frozen=True)
class Backend:
    """One engine's backend and degrees (data, tensor, pipeline)."""

    name: str
    dp: int
    tp: int
    pp: int

    @property
    def world_size(self) -> int:
        return self.dp * self.tp * self.pp

    def text(self) -> str:
        """The string AReaL reads back as this backend (its own order: d, p, t, as its
        examples write `megatron:d4p1t1`); pp is left out where the backend has no p."""
        pipeline = f"p{self.pp}" if "p" in BACKEND_DIMENSIONS[self.name] else ""
        return f"{self.name}:d{self.dp}{pipeline}t{self.tp}"


def parse_backend(text: object, inference: bool) -> Backend | str:
    """The Backend of `text`, or why it cannot be read (one clause, no file or key: the
    caller names them). `inference` says whether the engine is the rollout's."""
    allowed = INFERENCE_BACKENDS if inference else TRAIN_BACKENDS
    examples = "sglang:d4t2, vllm:d2p2t2" if inference else "megatron:d2p2t2, fsdp:d8"
    if not isinstance(text, str) or not text.strip():
        return f"expected a backend string such as {examples}"
    spec = "".join(text.split())
    if "+" in spec or "|" in spec:
        return (f"one backend per engine ({examples}); `+` / `|` combinations (the deprecated "
                f"allocation_mode, MoE attn|ffn sections) are not read")
    match = _SPEC.match(spec)
    if not match:
        return f"expected <backend>:<dims> such as {examples} (an explicit backend prefix)"
    name = match["backend"]
    if name not in allowed:
        return f"backend {name!r}: supported: {', '.join(allowed)}"
    dims = match["dims"]
    found = _DIM.findall(dims)
    if "".join(f"{t}{n}" for t, n in found) != dims:
        return f"dims {dims!r}: expected a run of d/t/p/c/e<size>, e.g. {examples}"
    sizes: dict[str, int] = {}
    for kind, size in found:
        if kind not in GRAMMAR_DIMENSIONS[inference]:
            return f"{name} takes dimensions {', '.join(GRAMMAR_DIMENSIONS[inference])}, not {kind}"
        if kind in sizes:
            return f"dimension {kind} is given twice"
        sizes[kind] = int(size)
        if kind not in BACKEND_DIMENSIONS[name] and sizes[kind] > 1:
            return (f"{kind}{size}: {name} runs dimensions "
                    f"{', '.join(BACKEND_DIMENSIONS[name])} only (size 1 for the others)")
    for kind, why in _UNMODELLED.items():
        if sizes.get(kind, 1) > 1:
            return f"{kind}{sizes[kind]}: {why}"
    return Backend(name=name, dp=sizes.get("d", 1), tp=sizes.get("t", 1), pp=sizes.get("p", 1))
