"""The statistics every report uses, on hand-built numbers."""

from __future__ import annotations

import pytest

from ticketlab.report import ticket_summary
from ticketlab.stats import Interval, matching_sparsity, mean_ci, paired_ci, verdict


def test_t_interval_on_known_samples():
    ci = mean_ci([1.0, 2.0, 3.0, 4.0, 5.0])
    # mean 3, sd sqrt(2.5), t(0.975, 4) = 2.776445 -> half-width 2.776445 * 1.581139 / sqrt(5) = 1.963243
    assert ci.mean == pytest.approx(3.0) and ci.low == pytest.approx(3 - 1.963243, abs=1e-5)
    assert ci.high == pytest.approx(3 + 1.963243, abs=1e-5) and ci.n == 5
    two = mean_ci([0.80, 0.84])  # t(0.975, 1) = 12.7062: two seeds give a wide interval, honestly
    assert two.high - two.low == pytest.approx(2 * 12.7062 * 0.0282843 / 2 ** 0.5, rel=1e-4)
    one = mean_ci([0.7])
    assert one.low is None and "no interval" in str(one)


def test_paired_interval_uses_per_seed_differences():
    a, b = [0.90, 0.85, 0.80], [0.88, 0.83, 0.78]  # a beats b by exactly 0.02 on every seed
    ci = paired_ci(a, b)
    assert ci.mean == pytest.approx(0.02) and ci.high - ci.low == pytest.approx(0.0, abs=1e-12)
    assert mean_ci(a).high - mean_ci(a).low > 0.1  # unpaired, the seed-to-seed spread swamps the difference
    with pytest.raises(ValueError, match="pairs"):
        paired_ci([1.0], [1.0, 2.0])


def test_matching_sparsity_is_contiguous_a_late_single_match_does_not_count():
    curve = [(0.2, 0.91), (0.36, 0.90), (0.488, 0.88), (0.59, 0.86), (0.67, 0.905)]
    assert matching_sparsity(curve, 0.90) == 0.36  # 0.67 reaches 0.905 but 0.488 and 0.59 do not
    assert matching_sparsity(curve, 0.95) is None
    assert matching_sparsity(list(reversed(curve)), 0.85) == 0.67  # order of the input does not matter


def test_verdict_rule():
    assert verdict(Interval(0.70, 0.68, 0.72, 3), claim=0.71) == "reproduced"  # claim inside the interval
    assert verdict(Interval(0.60, 0.58, 0.62, 3), claim=0.71) == "contradicted"  # whole interval below it
    assert verdict(Interval(0.80, 0.78, 0.82, 3), claim=0.71) == "reproduced"  # holds at least
    assert verdict(Interval(0.36, 0.30, 0.42, 3), claim=0.30, chance=0.346) == "inconclusive"  # not above chance
    assert verdict(Interval(0.70, None, None, 1), claim=0.71) == "inconclusive"  # one run has no interval


def rounds(val: list[float], test: list[float], chance: float = 0.2, n_test: int = 1000) -> list[dict]:
    sparsities = [0.0, 0.2, 0.36, 0.488]
    return [{"round": k, "sparsity": s, "metrics": {"val_acc": v, "test_acc": t, "chance_test": chance,
                                                    "n_test": n_test}}
            for k, (s, v, t) in enumerate(zip(sparsities, val, test, strict=True))]


def test_ticket_summary_decides_on_validation_and_reports_test_there():
    # test says round 3 matches (0.95 >= 0.90) but validation says it does not: validation decides
    text = ticket_summary(rounds([0.90, 0.91, 0.90, 0.85], [0.90, 0.92, 0.93, 0.95]), 0.90)
    assert "highest matching sparsity 36.00 % (test 93.00%)" in text
    assert "relaxed (99%) sparsity 36.00 %" in text and "decided on validation" in text


def test_a_dense_model_at_chance_makes_every_comparison_inconclusive():
    text = ticket_summary(rounds([0.36, 0.37, 0.38, 0.39], [0.35, 0.36, 0.37, 0.38], chance=0.346), 0.35)
    assert "inconclusive" in text and "matching sparsity 48" not in text


def test_gap_rule_on_hand_built_intervals():
    from ticketlab.stats import Interval, gap_verdict, interval_text

    assert gap_verdict(Interval(0.03, 0.01, 0.05, 3)) == "reproduced"
    assert gap_verdict(Interval(-0.03, -0.05, -0.01, 3)) == "contradicted"
    assert gap_verdict(Interval(0.01, -0.01, 0.03, 3)) == "inconclusive"
    assert gap_verdict(Interval(0.03, None, None, 1)) == "inconclusive"
    assert gap_verdict(Interval(0.03, 0.01, 0.05, 3), usable=False) == "inconclusive"
    assert interval_text(Interval(0.03, 0.01, 0.05, 3), signed=True) == "+3.00 [+1.00, +5.00]"


def test_equivalence_rule_for_sparsity_claims_on_worked_intervals():
    from ticketlab.stats import sparsity_claim

    def gaps(*rows):  # noqa: ANN002, ANN202
        return [(s, Interval((lo + hi) / 2, lo, hi, 3)) for s, lo, hi in rows]

    # every lower end ≥ −1 pt up to 0.5: reproduced at δ = 1 pt, although two means are below 0
    ok = gaps((0.2, -0.008, 0.004), (0.36, -0.009, 0.001), (0.5, -0.005, 0.002))
    assert sparsity_claim(ok, 0.5, margin=0.01).verdict == "reproduced"
    assert sparsity_claim(ok, 0.5, margin=0.0).verdict == "inconclusive"  # straddles 0 without a margin
    # an interval straddling −δ at 0.36 makes the claim at 0.5 inconclusive, not reproduced
    straddle = gaps((0.2, -0.005, 0.004), (0.36, -0.02, 0.003), (0.5, -0.005, 0.002))
    assert sparsity_claim(straddle, 0.5, margin=0.01).verdict == "inconclusive"
    # wholly below −δ at a sparsity ≤ s*: contradicted (judged up to s*: the same gap above s* does not count)
    below = gaps((0.2, -0.005, 0.004), (0.36, -0.05, -0.02), (0.5, -0.005, 0.002))
    assert sparsity_claim(below, 0.5, margin=0.01).verdict == "contradicted"
    assert sparsity_claim(below, 0.2, margin=0.01).verdict == "reproduced"
    # a claim above the highest sparsity run is not tested, never a verdict
    result = sparsity_claim(ok, 0.9141, margin=0.01)
    assert result.verdict == "not tested" and result.tested == 0.5


def test_drop_rule_holm_power_and_convergence_on_worked_numbers():
    from ticketlab.stats import converged, drop_claim, holm, minimum_detectable_effect, seeds_needed, spread

    assert drop_claim(Interval(0.01, 0.005, 0.015, 3), 0.0188) == "reproduced"  # upper end 1.5 ≤ 1.88
    assert drop_claim(Interval(-0.0263, -0.0904, 0.0378, 3), 0.0188) == "inconclusive"  # straddles d
    assert drop_claim(Interval(0.05, 0.03, 0.07, 3), 0.0188) == "contradicted"
    # Holm, m = 4: sorted p 0.001 (≤ .0125), 0.01 (≤ .0167), 0.03 (> .025) stops; 0.02 is never reached
    assert holm([0.03, 0.001, 0.2, 0.01]) == [False, True, False, True]
    assert holm([0.04, 0.04]) == [False, False] and holm([0.02, 0.04]) == [True, True]
    # sd 0.01 over 3 seeds: half-width t(.975, 2) · 0.01 / √3 = 0.024841
    gap = Interval(0.0, -0.024841, 0.024841, 3)
    assert spread(gap) == pytest.approx(0.01, rel=1e-4)
    assert minimum_detectable_effect(gap) == pytest.approx((4.302653 + 1.060660) * 0.01 / 3 ** 0.5, rel=1e-4)
    n = seeds_needed(gap, 0.01)  # (t(.975, n−1) + t(.8, n−1)) · 0.01 / √n ≤ 0.01 first holds at n = 10
    assert n == 10 and seeds_needed(Interval(-0.01, -0.02, 0.0, 3), 0.01) is None  # a mean on the margin
    assert converged([0.5, 0.7, 0.8, 0.81, 0.805, 0.81, 0.812, 0.811])  # +0.2 pt in the last quarter
    assert not converged([0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95])  # still climbing by 5 pts


def test_one_usable_reference_rule_binomial_chance_convergence_and_ceiling():
    from ticketlab.stats import mean_ci
    from ticketlab.studies.verdicts import claim_row, comparison_row, reference_problem

    def cell(scores, converged=True, chance=0.5, n=100):
        return {"ci": mean_ci(scores), "chance_test": chance, "n_test": n, "converged": converged}

    # 2 binomial SE of a 50 % majority on 100 test examples = 10 pts: 59 % is chance, 61 % is not
    assert reference_problem(cell([0.58, 0.59, 0.60])) == "at chance"
    assert reference_problem(cell([0.60, 0.61, 0.62])) is None
    assert reference_problem(cell([0.60, 0.61, 0.62], n=10_000)) is None
    assert reference_problem(cell([0.70, 0.71, 0.72], converged=False)) == "not converged"
    assert reference_problem(cell([0.99, 0.995, 1.0])) == "at ceiling"
    # a claim on a not-converged dense reference: inconclusive, and the row says why
    dense, sparse = cell([0.70, 0.71, 0.72], converged=False), cell([0.75, 0.76, 0.77])
    for c in (dense, sparse):
        c["val"] = dict(enumerate(c["ci"].mean + d for d in (-0.01, 0.0, 0.01)))
    sparse["sparsity"], dense["sparsity"] = 0.5, 0.0
    row = claim_row("t", 0.5, {("s", "t", 0): dense, ("s", "t", 1): sparse}, "s", "t")
    assert row[-1] == "inconclusive" and "dense reference not converged" in row[-2]
    dense["converged"] = True
    assert claim_row("t", 0.5, {("s", "t", 0): dense, ("s", "t", 1): sparse}, "s", "t")[-1] == "reproduced"
    # a comparison whose A side is at chance by the binomial rule stays inconclusive however clear the gap
    a, b = {0: 0.58, 1: 0.59, 2: 0.60}, {0: 0.40, 1: 0.41, 2: 0.42}
    assert comparison_row("A vs B", a, b, 0.5, 100)[-1] == "inconclusive"
    assert comparison_row("A vs B", a, b, 0.5, 10_000)[-1] == "reproduced"


def test_intervals_pool_seeds_that_share_a_theta_p_replicate():
    from ticketlab.studies.verdict_file import paired_gap, pool_by_replicate, recompute

    # 3 replicates x 2 seeds (unit = seed + 1000 · replicate): one pair per replicate, the mean of its seeds
    a = {0: 0.60, 1: 0.64, 1000: 0.70, 1001: 0.72, 2000: 0.50, 2001: 0.54}
    b = {0: 0.58, 1: 0.58, 1000: 0.69, 1001: 0.69, 2000: 0.50, 2001: 0.50}
    assert pool_by_replicate(a) == pytest.approx([0.62, 0.71, 0.52])
    gap = paired_gap(a, b)
    assert gap == paired_ci([0.62, 0.71, 0.52], [0.58, 0.69, 0.50])  # 3 independent θp: t with 2 df
    assert gap.mean == pytest.approx(0.0267, abs=1e-4) and gap.low < 0 < gap.high
    # the six units as if independent would decide (t with 5 df): the pooled interval does not
    naive = paired_ci(list(a.values()), list(b.values()))
    assert naive.low > 0
    assert recompute({"rule": "comparison", "a": {str(k): v for k, v in a.items()},
                      "b": {str(k): v for k, v in b.items()}, "usable": True}) == "inconclusive"
    # one replicate: seeds are the units, as before
    assert pool_by_replicate({0: 0.1, 1: 0.2, 2: 0.3}) == [0.1, 0.2, 0.3]
    assert paired_gap({0: 0.6, 1: 0.7}, {1: 0.6, 2: 0.5}) is not None  # only shared units pair


def test_a_comparison_whose_a_side_did_not_converge_is_inconclusive():
    from ticketlab.studies.verdict_file import recompute
    from ticketlab.studies.verdicts import comparison_row

    a, b = {0: 0.80, 1: 0.82, 2: 0.81}, {0: 0.60, 1: 0.61, 2: 0.62}  # +20 pts, tight: decides when A is usable
    decided = comparison_row("A vs B", a, b, chance=0.25, n_test=1000)
    assert decided[-1] == "reproduced" and recompute(decided.record) == "reproduced"
    still_rising = comparison_row("A vs B", a, b, chance=0.25, n_test=1000, converged=False)
    assert still_rising[-1] == "inconclusive" and "A not converged" in still_rising[3]
    assert recompute(still_rising.record) == "inconclusive"
