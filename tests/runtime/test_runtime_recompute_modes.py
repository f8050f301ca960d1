"""The recomputation modes (Execution.recompute) run as priced (costmodel/recompute.py):
the same loss and gradients under none, selective and full, at tp 1 and tp 2; the TP
all-reduces each mode reruns in backward; and activation memory that falls from none to
selective to full in about the priced proportions."""

from __future__ import annotations

import pytest
import recompute_workers as W
import torch

from costmodel import recompute
from planner.domain.layout import RECOMPUTE_MODES
from runtime.launch import run_distributed

TIMEOUT_S = 300
# The priced sizes are derived from what runtime/layers.py's ops save (costmodel/recompute.py);
# the measured share also holds the embedding and head, which no mode frees.
FREED_SHARE_TOLERANCE = 0.02


@pytest.fixture(scope="module")
def results() -> dict:
    """{(tp, mode): result} of rank 0 and {(tp, mode): result} of rank 1 (tp 2 only)."""
    return run_distributed(W.every_mode, 2, timeout_s=TIMEOUT_S)


def _freed_share(by_mode: dict, tp: int) -> tuple[float, float]:
    """(measured, priced) share of what selective frees of the kept activations, relative to
    what full frees (both against none)."""
    kept = {mode: by_mode[(tp, mode)]["kept_bytes"] for mode in RECOMPUTE_MODES}
    measured = (kept["none"] - kept["selective"]) / (kept["none"] - kept["full"])
    priced = {mode: recompute.kept_bytes_per_token(W.SPEC, mode, tp, W.SEQ_LEN, 4)
              for mode in RECOMPUTE_MODES}
    return measured, (priced["none"] - priced["selective"]) / (priced["none"] - priced["full"])


def test_every_mode_gives_the_same_loss_and_gradients_in_one_process():
    ctx = W.one_rank_context()
    reference = W.one_step(ctx, "none")
    for mode in ("selective", "full"):
        result = W.one_step(ctx, mode)
        torch.testing.assert_close(result["loss"], reference["loss"])
        for name, grad in reference["grads"].items():
            torch.testing.assert_close(result["grads"][name], grad, rtol=1e-5, atol=1e-6)
        assert result["kept_bytes"] < reference["kept_bytes"], mode


@pytest.mark.slow
@pytest.mark.parametrize("tp", [1, 2])
def test_every_mode_gives_the_same_gradients_on_every_rank(results, tp):
    for rank_results in results if tp == 2 else results[:1]:
        reference = rank_results[(tp, "none")]
        assert any(g.abs().max() > 0 for g in reference["grads"].values())
        for mode in ("selective", "full"):
            result = rank_results[(tp, mode)]
            torch.testing.assert_close(result["loss"], reference["loss"])
            for name, grad in reference["grads"].items():
                torch.testing.assert_close(result["grads"][name], grad, rtol=1e-5, atol=1e-6,
                                           msg=f"{mode} tp {tp} {name}")


@pytest.mark.slow
def test_backward_reruns_the_priced_tp_all_reduces(results):
    """The checkpoint's early stop ends a rerun before its part's last all-reduce: a full
    block reruns the attention's all-reduce only, the attention sub-layer none."""
    layers = W.SPEC.num_layers
    for rank_results in results:
        base = rank_results[(2, "none")]
        assert base["backward_all_reduces"] > 0
        for mode in RECOMPUTE_MODES:
            result = rank_results[(2, mode)]
            assert result["forward_all_reduces"] == base["forward_all_reduces"]
            assert result["backward_all_reduces"] - base["backward_all_reduces"] == \
                layers * recompute.RECOMPUTED_TP_ALLREDUCES[mode], mode
    assert recompute.RECOMPUTED_TP_ALLREDUCES["full"] == 1


@pytest.mark.slow
@pytest.mark.parametrize("tp", [1, 2])
def test_activation_memory_falls_from_none_to_selective_to_full_as_priced(results, tp):
    by_mode = results[0]
    kept = [by_mode[(tp, mode)]["kept_bytes"] for mode in RECOMPUTE_MODES]
    peaks = [by_mode[(tp, mode)]["peak_bytes"] for mode in RECOMPUTE_MODES]
    assert kept[0] > kept[1] > kept[2], kept
    assert peaks[0] > peaks[1] > peaks[2], peaks
    measured, priced = _freed_share(by_mode, tp)
    assert measured == pytest.approx(priced, abs=FREED_SHARE_TOLERANCE), (measured, priced)
