"""The judge-score protocol against hand-computed values."""

import math

import pytest

from emeval.judging.scoring import (
    aggregate_number_probs,
    aggregate_top_logprobs,
    parse_sampled,
)


def test_weighted_mean_over_number_tokens():
    top = {"80": math.log(0.5), "90": math.log(0.3), "hello": math.log(0.2)}
    verdict = aggregate_top_logprobs(top)
    assert verdict.status == "ok"
    assert verdict.number_mass == pytest.approx(0.8)
    assert verdict.score == pytest.approx((80 * 0.5 + 90 * 0.3) / 0.8)


def test_tokens_outside_0_100_and_padded_numbers_are_not_scores():
    top = {"150": math.log(0.4), "007": math.log(0.3), " 5": math.log(0.3)}
    verdict = aggregate_top_logprobs(top)
    assert verdict.number_mass == pytest.approx(0.3)
    assert verdict.score == pytest.approx(5.0)


def test_quarter_rule_boundary():
    just_enough = aggregate_number_probs({10: 0.25}, {"x": 0.75}, "logprob")
    too_little = aggregate_number_probs({10: 0.2499}, {"x": 0.7501}, "logprob")
    assert just_enough.status == "ok" and just_enough.score == pytest.approx(10)
    assert too_little.status == "no_score" and too_little.score is None


@pytest.mark.parametrize(
    ("token", "status"), [("REF", "refusal"), ("REFUSAL", "refusal"), ("CODE", "code")]
)
def test_refusal_and_code_are_recorded_not_scored(token, status):
    verdict = aggregate_top_logprobs({token: math.log(0.9), "50": math.log(0.1)})
    assert verdict.status == status
    assert verdict.score is None
    assert verdict.distribution[token] == pytest.approx(0.9)


def test_sampled_fallback():
    assert parse_sampled("73").score == 73
    assert parse_sampled(" 100.").score == 100
    assert parse_sampled("REFUSAL").status == "refusal"
    assert parse_sampled("CODE").status == "code"
    assert parse_sampled("I think it is fine").status == "no_score"
    assert parse_sampled("42").method == "sampled"
