"""The model a framework config names (an HF hub id such as `Qwen/Qwen2.5-7B-Instruct`, or
a local checkpoint directory) as one of our model specs.

Nothing is downloaded: a local directory with a `config.json` is read
(planner.domain.model_files); a hub id is matched to a preset by its architecture, its
repository name lower-cased with the organisation, the post-training and release-version
suffixes removed (`Qwen/Qwen2.5-7B-Instruct` -> `qwen2.5-7b`, `meta-llama/Meta-Llama-3-8B` ->
`llama3-8b`, `mistralai/Mixtral-8x7B-Instruct-v0.1` -> `mixtral-8x7b`),
or failing that to the longest preset its name starts with, followed by a dash
(`OpenRLHF/Llama-3-8b-rm-700k` -> `llama3-8b`).
Fine-tuned variants (Instruct, Chat, Base, SFT, RM) share their base model's architecture,
and a reward or critic head is set by the role, not by the checkpoint's name.
"""

from __future__ import annotations

import re
from pathlib import Path

from planner.domain.errors import InputError
from planner.domain.model_files import resolve_model
from planner.domain.modelspec import PRESETS, ModelSpec
from planner.domain.workflow import Workflow

# Suffixes of fine-tuned variants and releases (Mistral's -v0.1) that keep the base
# architecture, as hub names spell them.
VARIANT_SUFFIX = re.compile(r"(-(instruct|chat|base|sft|rm|hf|it|v\d+(\.\d+)*))+$")
# Hub spellings of a family that our preset names write differently.
FAMILY_SPELLINGS = (("meta-llama-3.1-", "llama3-"), ("meta-llama-3-", "llama3-"),
                    ("llama-3.1-", "llama3-"), ("llama-3-", "llama3-"),
                    ("llama-2-", "llama-"))


def preset_name_of_hub_id(hub_id: str) -> str:
    """The preset name a hub id would have (whether or not such a preset exists)."""
    name = hub_id.rsplit("/", 1)[-1].lower()
    name = VARIANT_SUFFIX.sub("", name)
    for hub_prefix, ours in FAMILY_SPELLINGS:
        if name.startswith(hub_prefix):
            return ours + name[len(hub_prefix):]
    return name


def model_spec_for(reference: str, source: str, key: str,
                   base_dir: Path | None = None) -> ModelSpec:
    """The spec of the model `reference` names, read from `key` of file `source`.

    A local directory (relative to `base_dir`, the config's folder) or a preset name is
    resolved as a workflow file's model is; otherwise a hub id is matched to a preset.
    InputError (one line) when neither works, naming what would.
    """
    try:
        return resolve_model(reference, base_dir)
    except ValueError as err:
        if Path(reference).is_absolute() or (base_dir and (base_dir / reference).exists()):
            raise InputError(f"{source}: {key}: {err}") from None
    preset = preset_name_of_hub_id(reference)
    if preset in PRESETS:
        return PRESETS[preset]
    # fine-tunes named "<base>-<anything>" (OpenRLHF/Llama-3-8b-sft-mixture): the base's spec
    bases = [p for p in PRESETS if preset.startswith(p + "-")]
    if bases:
        return PRESETS[max(bases, key=len)]
    raise InputError(f"{source}: {key}: model {reference!r} is neither a local directory with "
                     f"an HF config.json nor a hub id of a preset ({sorted(PRESETS)}); "
                     f"download its config.json and give its directory")


# The hub repository of each preset's architecture (the base model; its model card's
# config.json has the preset's fields), for configs written for a plan (plan export).
# Each id maps back to its preset through preset_name_of_hub_id.
PRESET_HUB_IDS = {
    "llama-7b": "meta-llama/Llama-2-7b-hf", "llama-13b": "meta-llama/Llama-2-13b-hf",
    "llama-70b": "meta-llama/Llama-2-70b-hf", "llama3-8b": "meta-llama/Meta-Llama-3-8B",
    "llama3-70b": "meta-llama/Meta-Llama-3-70B", "qwen2.5-7b": "Qwen/Qwen2.5-7B",
    "qwen2.5-32b": "Qwen/Qwen2.5-32B", "qwen3-30b-a3b": "Qwen/Qwen3-30B-A3B",
    "qwen3-235b-a22b": "Qwen/Qwen3-235B-A22B", "mixtral-8x7b": "mistralai/Mixtral-8x7B-v0.1",
}


def hub_id_for(spec: ModelSpec) -> str | None:
    """The hub id of a preset's architecture, or None when `spec` is no preset we know one
    for (a local checkpoint, a tiny test model)."""
    hub_id = PRESET_HUB_IDS.get(spec.name)
    return hub_id if hub_id and PRESETS.get(spec.name) == spec else None


def model_path_for(workflow: Workflow, role: str, notes: list[str]) -> str:
    """The model path an exported config gives `role`: its preset's hub id, or the spec's
    name with a note in `notes` asking for the checkpoint's directory."""
    spec = workflow.models[role].spec
    hub_id = hub_id_for(spec)
    if hub_id is None:
        notes.append(f"{role}: model {spec.name} has no known hub id; its path is written as "
                     f"{spec.name!r}: replace it with the checkpoint's directory")
        return spec.name
    return hub_id
