"""`plan run --load ROLE=DIR` and `--save DIR`: what is checked before any rank starts.

--load: ROLE must be a model role of the workflow (not one a programmatic reward replaces);
DIR a directory whose config.json reads (planner.domain.model_files) as the role's model spec,
field by field (the name aside), and whose tensors are all there in the shapes the spec
implies (runtime.params.checkpoint_reads, headers only). A value-head role loaded from a
causal-LM checkpoint (no `score.weight`) keeps the seeded value head: a note says so.

--save: DIR must be a folder we can create files in, each trained role's folder DIR/<role>
must stay inside it (a role name is one plain path component), and each role's spec must be
written exactly by runtime.checkpoint_save.hf_config (its config read back gives the spec).
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

import torch

from planner.domain.errors import InputError
from planner.domain.model_files import spec_from_hf_config
from planner.domain.modelspec import ModelSpec
from planner.domain.output_files import check_writable_path
from planner.domain.plan import Plan
from runtime.checkpoint_save import CONFIG_FILE, hf_config
from runtime.executor.config import RunConfig, parse_reward
from runtime.executor.worker import reward_roles
from runtime.params import SEED, VALUE_HEAD_WEIGHT, HFCheckpoint, checkpoint_reads

ROLE_FOLDER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_SPEC_NAME = "name"  # a spec's label, not its architecture


def spec_difference(got: ModelSpec, want: ModelSpec) -> str | None:
    """`field is X, expected Y` for the first architecture field where the specs differ."""
    a, b = got.model_dump(), want.model_dump()
    for field in b:
        if field != _SPEC_NAME and a.get(field) != b[field]:
            return f"{field} is {a.get(field)!r}, the plan's model has {b[field]!r}"
    return None


def _load_problem(plan: Plan, role: str, directory: str, programmatic: bool
                  ) -> tuple[str | None, str | None]:
    """(problem, note) of one --load ROLE=DIR."""
    wf, flag = plan.workflow, f"--load {role}={directory}"
    if role not in wf.models:
        return (f"{flag}: {role!r} is not a model role of the workflow; valid: "
                f"{sorted(wf.models)}"), None
    if programmatic and role in reward_roles(plan):
        return f"{flag}: --reward programmatic replaces the {role} model; drop one", None
    folder = Path(directory)
    if not folder.is_dir():
        return f"{flag}: {folder} is not a directory (an HF checkpoint folder)", None
    model = wf.models[role]
    try:
        difference = spec_difference(spec_from_hf_config(folder / CONFIG_FILE), model.spec)
        if difference:
            return f"{flag}: {folder / CONFIG_FILE}: {difference}", None
        reads = checkpoint_reads(HFCheckpoint(folder), model.spec, model.head)
    except ValueError as err:
        return f"{flag}: {err}", None
    if reads.get(VALUE_HEAD_WEIGHT) == SEED:
        return None, (f"{flag}: no score.weight (a causal-LM checkpoint): the value head of "
                      f"{role} starts from the seeded init")
    return None, None


def _save_problem(plan: Plan, directory: str) -> str | None:
    root = Path(directory)
    if root.exists() and not root.is_dir():
        return f"--save: {root} is not a directory"
    check_writable_path(root / ".probe", "--save")
    for role in sorted(plan.workflow.trained_models()):
        if not ROLE_FOLDER.fullmatch(role):
            return (f"--save: model role {role!r} is not a plain folder name (letters, digits, "
                    f"_ . -); rename it in the workflow")
        target = root / role
        if target.exists() and not target.resolve().is_relative_to(root.resolve()):
            return f"--save: {target} leads outside {root}; remove it or give another DIR"
        model = plan.workflow.models[role]
        with tempfile.TemporaryDirectory() as scratch:
            config = Path(scratch) / CONFIG_FILE
            config.write_text(json.dumps(hf_config(model.spec, model.head, torch.float32)))
            try:
                difference = spec_difference(spec_from_hf_config(config), model.spec)
            except ValueError as err:
                difference = str(err).removeprefix(f"{config}: ")
        if difference:
            return f"--save: {role}: its HF config would not read back as its spec: {difference}"
    return None


def checkpoint_notes(plan: Plan, config: RunConfig, source: str) -> list[str]:
    """InputError (one line) for the first bad --load or --save; otherwise the notes to
    print (value heads that start from the seed)."""
    programmatic = parse_reward(config.reward) is not None
    notes = []
    roles = [role for role, _ in config.load]
    twice = sorted({r for r in roles if roles.count(r) > 1})
    if twice:
        raise InputError(f"{source}: --load: role(s) {twice} given more than once; give one "
                         f"directory per role")
    for role, directory in config.load:
        problem, note = _load_problem(plan, role, directory, programmatic)
        if problem:
            raise InputError(f"{source}: {problem}")
        if note:
            notes.append(note)
    if config.save is not None:
        problem = _save_problem(plan, config.save)
        if problem:
            raise InputError(f"{source}: {problem}")
    return notes
