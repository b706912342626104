"""The length coefficient of `pm length-correct` (its criterion; the command end to end is in test_pm_cli.py)."""

from __future__ import annotations

import pytest
import torch

from pm_server.training.length import LengthCorrectionError, fit_length_coef, side_accuracy


def _length_leaning(n: int, lean: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Margins of a PM whose skill is the same on both sides, plus `lean` x the length difference."""
    g = torch.Generator().manual_seed(seed)
    diff = (torch.rand(n, generator=g) * 1.5 + 0.5) * torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
    skill = torch.randn(n, generator=g) + 0.4
    return skill + lean * diff, diff


def test_the_coefficient_takes_a_length_lean_out_and_balances_the_two_sides():
    margins, diff = _length_leaning(4000, lean=0.8)
    shorter, longer = side_accuracy(margins, diff, 0.0)
    assert shorter.value < 0.4 < 0.8 < longer.value  # the lean: wrong where the shorter reply is better
    coef = fit_length_coef(margins, diff)
    assert coef == pytest.approx(0.8, abs=0.1)
    shorter, longer = side_accuracy(margins, diff, coef)
    assert abs(shorter.value - longer.value) <= 1.0 / min(shorter.n, longer.n) + 1e-9
    assert shorter.value == pytest.approx(0.66, abs=0.04)  # P(N(0.4, 1) > 0): the skill left, both sides


def test_a_pm_without_a_lean_keeps_coefficient_zero_and_a_lean_to_shortness_gets_a_negative_one():
    margins, diff = _length_leaning(600, lean=0.0)
    mirrored_m, mirrored_d = torch.cat([margins, margins]), torch.cat([diff, -diff])  # the same skill on both sides
    assert fit_length_coef(mirrored_m, mirrored_d) == 0.0
    margins, diff = _length_leaning(4000, lean=-0.5, seed=1)
    assert fit_length_coef(margins, diff) == pytest.approx(-0.5, abs=0.1)


def test_too_few_pairs_on_one_side_is_refused_with_the_counts():
    margins = torch.tensor([1.0] * 40 + [0.5] * 5)
    diff = torch.tensor([1.0] * 40 + [-1.0] * 5)
    with pytest.raises(LengthCorrectionError, match="5 pairs where the better reply is the shorter and 40"):
        fit_length_coef(margins, diff)
