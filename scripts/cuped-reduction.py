#!/usr/bin/env python3
"""CUPED's variance reduction on the simulated experiments of the gbstats
fixtures (crates/stratify-core/tests/fixtures/stats/gbstats.json, written by
generate_gbstats.py), computed by gbstats itself: the absolute lift's
variance and 95 % interval width with and without the adjustment.

    python3 -m venv /tmp/gbenv && /tmp/gbenv/bin/pip install gbstats==0.8.0
    /tmp/gbenv/bin/python scripts/cuped-reduction.py
"""
import json
import pathlib

from gbstats.frequentist.tests import FrequentistConfig, TwoSidedTTest
from gbstats.models.statistics import ProportionStatistic, RegressionAdjustedStatistic, SampleMeanStatistic

FIXTURES = pathlib.Path(__file__).parent.parent / "crates/stratify-core/tests/fixtures/stats/gbstats.json"


def part(p, n):
    if "conversions" in p:
        return ProportionStatistic(n=n, sum=p["conversions"])
    return SampleMeanStatistic(n=n, sum=p["sum"], sum_squares=p["sum_squares"])


def stat(arm, adjusted):
    n, c = arm["n"], arm["cuped"]
    if not adjusted:
        return part(c["post"], n)
    return RegressionAdjustedStatistic(
        n=n, post_statistic=part(c["post"], n), pre_statistic=part(c["pre"], n),
        post_pre_sum_of_products=c["sum_of_products"], theta=0,
    )


for case in json.loads(FIXTURES.read_text())["compare"]:
    if not case["name"].endswith(": t-test") or "cuped" not in case["input"]["control"]:
        continue
    result = {}
    for adjusted in (False, True):
        r = TwoSidedTTest(
            stat(case["input"]["control"], adjusted), stat(case["input"]["treatment"], adjusted),
            FrequentistConfig(difference_type="absolute"),
        ).compute_result()
        result[adjusted] = (r.ci[1] - r.ci[0], r.uplift.stddev ** 2)
    (w0, v0), (w1, v1) = result[False], result[True]
    print(f"{case['name']}: n {case['input']['control']['n']} per arm, 95% CI width {w0:.4f} -> {w1:.4f}, "
          f"variance reduction {1 - v1 / v0:.1%}")
