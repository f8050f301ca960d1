"""What every picture shares: matplotlib without a screen (the Agg backend), one colour per
model role, and saving a figure atomically. Only the drawing modules import this (and so
matplotlib); planner/figures/common.py holds the text helpers `plan show` also uses."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from planner.domain.output_files import atomic_write_bytes  # noqa: E402
from planner.domain.plan import Plan  # noqa: E402


def model_colours(roles: list[str]) -> dict[str, tuple]:
    """One colour per model role, stable for a given role list."""
    palette = plt.get_cmap("tab10")
    return {role: palette(i % 10) for i, role in enumerate(roles)}


def plan_colours(plan: Plan) -> dict[str, tuple]:
    """One colour per model role of the plan's workflow (same as `plan graph`)."""
    return model_colours(list(plan.workflow.models))


def save_figure(fig: plt.Figure, out: Path) -> None:
    """Render to memory, then write atomically, and close the figure."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format=Path(out).suffix.lstrip(".").lower(), dpi=130,
                bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(Path(out), buffer.getvalue())
