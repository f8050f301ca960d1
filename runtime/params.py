"""Create a rank's parameter shards: seeded random init, or from a local HF checkpoint.

Random init is identical whatever the layout: each full tensor is drawn from its own CPU
generator seeded by (seed, crc32 of the parameter name), then this rank's slice is kept
(norm weights are ones; everything else N(0, INIT_STD)). Drawing the full tensor costs
memory and time proportional to the full parameter, acceptable for the model sizes tested
on CPU; checkpoints are the path for large models.

HF checkpoints are a directory with `model.safetensors`, or shards listed in
`model.safetensors.index.json`, read with the `safetensors` library; each rank reads only the
byte ranges of its slices, cast from the stored dtype (bf16, fp16, fp32) to the compute dtype.
A value head is read from transformers' `*ForSequenceClassification` head: `score.weight`
[num_labels = 1, h] is our `value_head.weight`, and `score.bias` (which transformers' score
layer does not have, `nn.Linear(h, num_labels, bias=False)` in modeling_llama.py) our
`value_head.bias`, zero when absent, so the value is exactly transformers' score. A `score`
of another shape is refused; a checkpoint without one (a critic started from a causal LM)
leaves the value head to the seeded init (`checkpoint_reads` says which).

Mixture-of-experts blocks: our shards hold the routed experts stacked on dim 0
(planner.sharding.param_shards), checkpoints name each expert (transformers 5.24
`save_pretrained`, as published checkpoints do): qwen2_moe / qwen3_moe
`model.layers.{i}.mlp.experts.{j}.{gate,up,down}_proj.weight`, mixtral
`model.layers.{i}.block_sparse_moe.experts.{j}.{w1,w3,w2}.weight` (w1 gate, w3 up, w2 down:
MixtralBlockSparseTop2MLP's w2(act(w1 x) * w3 x)) with its router at
`model.layers.{i}.block_sparse_moe.gate.weight`. A rank reads only its experts' slices (its
tp shard of each) and stacks them; seeded init draws the full stacked tensor, so it does not
depend on ep either.
"""

from __future__ import annotations

import re
import zlib
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from planner.domain.errors import InputError
from planner.domain.input_files import load_json_input
from planner.domain.layout import expert_degree_problem, parallel_degrees_problem
from planner.domain.modelspec import HeadKind, ModelSpec
from planner.sharding.param_shards import (
    VALUE_HEAD_BIAS,
    VALUE_HEAD_WEIGHT,
    ParamInfo,
    model_params,
    shard_slice,
    stage_params,
)
from runtime.device import DeviceConfig

INIT_STD = 0.02  # HF LlamaConfig.initializer_range default


def param_seed(seed: int, name: str) -> int:
    """Seed of the generator that draws the full parameter `name`: a 32-bit hash of both.

    torch's CPU generator (mt19937) keeps only the low 32 bits of a seed, so the seed must
    be mixed into those bits: `seed * 2**32 + crc32(name)` (what we did first) made every
    seed draw the same weights.
    """
    return zlib.crc32(f"{seed}/{name}".encode())


def check_layout_supported(spec: ModelSpec, tp: int, pp: int, dp: int = 1, ep: int = 1
                           ) -> None:
    """ValueError unless the runtime can run `spec` under (tp, pp) and ep of its dp ranks:
    the rules of planner.domain.layout.parallel_degrees_problem and expert_degree_problem,
    which the search and cost model use."""
    problem = parallel_degrees_problem(spec, tp, pp) or expert_degree_problem(spec, dp, ep)
    if problem:
        raise ValueError(problem)


def param_infos(spec: ModelSpec, head: HeadKind) -> dict[str, ParamInfo]:
    """Every parameter of the model by HF name (stage numbers for pp 1)."""
    return {p.name: p for p in model_params(spec, head, 1)}


ROUTER_SUFFIXES = (".mlp.gate.weight", ".mlp.shared_expert_gate.weight")  # MoE, replicated


def is_tp_replicated(name: str) -> bool:
    """True when every TP rank holds the whole tensor: the norm weights, the value head and
    a MoE block's router and shared-expert gate (planner.sharding.param_shards split
    "replicated"; a test checks the two agree)."""
    return (name.endswith("norm.weight") or name.endswith(ROUTER_SUFFIXES)
            or name in (VALUE_HEAD_WEIGHT, VALUE_HEAD_BIAS))


def full_shape(spec: ModelSpec, name: str) -> tuple[int, ...]:
    """Shape of the full (HF-shaped) parameter `name`."""
    try:
        return param_infos(spec, "value" if name.startswith("value_head.") else "lm")[name].shape
    except KeyError:
        raise ValueError(f"unknown parameter name {name!r}") from None


def init_full_param(spec: ModelSpec, name: str, seed: int) -> torch.Tensor:
    """The full fp32 tensor of `name` under random init with `seed`."""
    shape = full_shape(spec, name)
    if name.endswith("norm.weight"):
        return torch.ones(shape)
    generator = torch.Generator().manual_seed(param_seed(seed, name))
    return torch.randn(shape, generator=generator) * INIT_STD


def _slice(tensor: torch.Tensor, ranges) -> torch.Tensor:
    return tensor[tuple(slice(a, b) for a, b in ranges)]


def init_params(spec: ModelSpec, head: HeadKind, tp_rank: int, tp: int, pp_stage: int, pp: int,
                seed: int, device: DeviceConfig, ep_rank: int = 0, ep: int = 1
                ) -> dict[str, torch.Tensor]:
    """This rank's shards under seeded random init (expert slice `ep_rank` of `ep`), each
    its own storage: a slice of the full seeded tensor that stayed a view would keep the
    whole tensor alive."""
    return {p.name: own_storage(_slice(init_full_param(spec, p.name, seed),
                                       shard_slice(spec, p, tp_rank, tp, ep_rank, ep))
                                .to(device.device, device.dtype).contiguous())
            for p in stage_params(spec, head, pp_stage, pp)}


def own_storage(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor`, copied when it is a view of a larger tensor (so that base can be freed)."""
    return tensor.clone() if tensor._base is not None else tensor


class HFCheckpoint:
    """A local HF checkpoint directory: which file holds each tensor, read by slices through
    the `safetensors` library (memory-mapped; a rank reads only its shard's bytes; bf16 as
    stored).

    Only files inside the directory are opened: an index naming `../x.safetensors` or an
    absolute path is refused, as is anything that is not a regular file. A damaged file (a
    header length beyond the file, bad JSON) is one ValueError line, not a MemoryError.
    """

    def __init__(self, directory: Path):
        directory = Path(directory)
        index = directory / "model.safetensors.index.json"
        if index.is_file():
            files = sorted(set(_weight_map(index).values()))
            handles = {f: _open_inside(directory, f) for f in files}
            self._where = {name: handles[f] for name, f in _weight_map(index).items()}
        elif (directory / "model.safetensors").is_file():
            single = _open_inside(directory, "model.safetensors")
            self._where = {name: single for name in single.keys()}
        else:
            raise ValueError(f"{directory}: no model.safetensors or model.safetensors.index.json")
        self.directory = directory

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._where[name].get_slice(name).get_shape())

    def read(self, name: str, ranges) -> torch.Tensor:
        """The slice `ranges` of tensor `name` as a torch tensor of its stored dtype."""
        return self._where[name].get_slice(name)[tuple(slice(a, b) for a, b in ranges)]


def _weight_map(index: Path) -> dict[str, str]:
    """The index's tensor -> file map; ValueError naming the file when it is not one."""
    try:
        weight_map = load_json_input(index).get("weight_map")
    except (InputError, AttributeError) as err:
        raise ValueError(f"{index}: not a safetensors index ({err})") from None
    if not isinstance(weight_map, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()):
        raise ValueError(f"{index}: weight_map: expected tensor names mapped to file names")
    return weight_map


def _open_inside(directory: Path, file: str):
    """safetensors' handle of `file`, which must be a regular file inside `directory`."""
    root = directory.resolve()
    path = (directory / file).resolve()
    if not path.is_relative_to(root) or path == root:
        raise ValueError(f"{directory}: the checkpoint names {file!r}, outside its directory; "
                         f"give file names inside it")
    if not path.is_file():
        raise ValueError(f"{directory / file}: not a file")
    try:
        return safe_open(str(path), framework="pt")
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{directory / file}: not a readable safetensors file "
                         f"({' '.join(str(err).split())})") from None


SCORE_WEIGHT, SCORE_BIAS = "score.weight", "score.bias"  # transformers' classification head
CHECKPOINT_NAMES = {VALUE_HEAD_WEIGHT: SCORE_WEIGHT, VALUE_HEAD_BIAS: SCORE_BIAS}
ZERO, SEED = "zero", "seed"  # what stands in for a value-head tensor absent from a checkpoint


def checkpoint_name(name: str) -> str:
    """The tensor's name in an HF checkpoint (our value head is transformers' `score`), for
    every parameter but a MoE block's (`checkpoint_names`)."""
    return CHECKPOINT_NAMES.get(name, name)


MIXTRAL_EXPERT_NAMES = {"gate_proj": "w1", "up_proj": "w3", "down_proj": "w2"}
_STACKED = re.compile(r"(model\.layers\.\d+\.)mlp\.experts\.(gate_proj|up_proj|down_proj)")
_ROUTER = re.compile(r"(model\.layers\.\d+\.)mlp\.gate\.weight")


def checkpoint_names(spec: ModelSpec, name: str) -> tuple[str, ...]:
    """The checkpoint tensors holding our parameter `name` (module docstring): one, or for a
    stacked routed-expert tensor one per expert, in expert order."""
    stacked = _STACKED.fullmatch(name)
    mixtral = spec.moe is not None and spec.moe.family == "mixtral"
    if stacked:
        layer, proj = stacked.groups()
        if mixtral:
            return tuple(f"{layer}block_sparse_moe.experts.{j}.{MIXTRAL_EXPERT_NAMES[proj]}.weight"
                         for j in range(spec.moe.num_experts))
        return tuple(f"{layer}mlp.experts.{j}.{proj}.weight"
                     for j in range(spec.moe.num_experts))
    router = _ROUTER.fullmatch(name)
    if router and mixtral:
        return (f"{router.group(1)}block_sparse_moe.gate.weight",)
    return (checkpoint_name(name),)


def checkpoint_reads(checkpoint: HFCheckpoint, spec: ModelSpec, head: HeadKind, pp: int = 1
                     ) -> dict[str, str | tuple[str, ...]]:
    """{our parameter: the checkpoint tensor it is read from (a tuple of one per expert for
    stacked routed experts), or ZERO / SEED} for the whole model (its parameters under `pp`
    stages); ValueError naming the directory and the tensor when a tensor is missing or its
    shape is not the one the spec implies. Reads headers only."""
    reads = {}
    has_score = SCORE_WEIGHT in checkpoint
    for param in model_params(spec, head, pp):
        if param.is_expert:
            reads[param.name] = _expert_sources(checkpoint, spec, param)
            continue
        source = checkpoint_names(spec, param.name)[0]
        if source in checkpoint:
            shape = checkpoint.shape(source)
            if shape != param.shape:
                what = (" (a value head needs num_labels 1)" if source == SCORE_WEIGHT else "")
                raise ValueError(f"{checkpoint.directory}: {source} has shape {list(shape)}, "
                                 f"the model spec implies {list(param.shape)}{what}")
            reads[param.name] = source
        elif param.name == VALUE_HEAD_BIAS:
            reads[param.name] = ZERO if has_score else SEED
        elif param.name == VALUE_HEAD_WEIGHT:
            reads[param.name] = SEED
        else:
            raise ValueError(f"{checkpoint.directory}: checkpoint has no tensor {source}")
    return reads


def _expert_sources(checkpoint: HFCheckpoint, spec: ModelSpec, param: ParamInfo
                    ) -> tuple[str, ...]:
    """The per-expert tensors of stacked `param`, each checked to be there with the shape of
    one expert's slice of it."""
    sources = checkpoint_names(spec, param.name)
    for source in sources:
        if source not in checkpoint:
            raise ValueError(f"{checkpoint.directory}: checkpoint has no tensor {source}")
        shape = checkpoint.shape(source)
        if shape != param.shape[1:]:
            raise ValueError(f"{checkpoint.directory}: {source} has shape {list(shape)}, "
                             f"the model spec implies {list(param.shape[1:])}")
    return sources


def load_hf_params(directory: Path, spec: ModelSpec, head: HeadKind, tp_rank: int, tp: int,
                   pp_stage: int, pp: int, seed: int, device: DeviceConfig, ep_rank: int = 0,
                   ep: int = 1) -> dict[str, torch.Tensor]:
    """This rank's shards (expert slice `ep_rank` of `ep`) read from an HF checkpoint
    (module docstring: the value head, the experts)."""
    checkpoint = HFCheckpoint(directory)
    reads = checkpoint_reads(checkpoint, spec, head, pp)
    params = {}
    for param in stage_params(spec, head, pp_stage, pp):
        name, ranges = param.name, shard_slice(spec, param, tp_rank, tp, ep_rank, ep)
        source = reads[name]
        if isinstance(source, tuple):   # stacked experts: this rank's, each its tp slice
            (first, stop), inner = ranges[0], ranges[1:]
            tensor = torch.stack([checkpoint.read(source[j], inner) for j in range(first, stop)])
        elif source == SEED:
            tensor = _slice(init_full_param(spec, name, seed), ranges)
        elif source == ZERO:
            tensor = torch.zeros(param.shape)
        else:
            tensor = checkpoint.read(source, ranges)
        params[name] = tensor.to(device.device, device.dtype).contiguous()
    return params
