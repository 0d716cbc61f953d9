"""Intervals for EM metrics, every one treating the probe as the sampling unit: answers to one
probe (its samples, paraphrases and formats) are not independent. INTERVAL_METHODS says how,
and results.json records it. Rates: Wilson on the effective sample size (design effect by
probe); means and misalign@k: a bootstrap over probes."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

Z95 = 1.959964
LEVEL = 0.95
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0

INTERVAL_METHODS = {
    "level": LEVEL,
    "cluster": "probe_id",
    "rates": "wilson_design_effect",
    "rates_detail": "Wilson interval on the effective sample size n / deff, where deff is the "
    "design effect of clustering answers by probe (linearised cluster-robust variance over "
    "the binomial one, at least 1), with the t quantile on probes - 1 degrees of freedom "
    "(Korn & Graubard 1998). With no hits or all hits, deff comes from the clustering of the "
    "underlying score; when that does not vary either, each probe counts as one answer. One "
    "probe alone: Wilson over its answers.",
    "means": "cluster_bootstrap",
    "means_detail": f"percentile bootstrap resampling whole probes, {BOOTSTRAP_RESAMPLES} "
    f"resamples, seed {BOOTSTRAP_SEED}; no interval from a single probe or when every "
    "resample gives the same mean",
    "misalign_at_k": "cluster_bootstrap",
    "misalign_at_k_detail": "percentile bootstrap over the probes' unbiased estimates (the "
    "probes with at least k counted answers), resamples and seed as for means",
    "gate_comparison": "rao_scott",
    "gate_comparison_detail": "the policy's z or Fisher test on each run's counts divided by "
    "its design effect (Rao & Scott 1981)",
}


def wilson(k: float, n: float, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval; k and n may be effective (non-integer) counts."""
    if n <= 0:
        return (math.nan, math.nan)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(max(0.0, p * (1 - p)) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def design_effect(values: pd.Series, groups: pd.Series) -> float | None:
    """Variance of the mean of values when whole groups are sampled, over its variance were
    the values independent: the linearised cluster-robust variance (with the usual G/(G-1)
    small-sample factor) divided by var/n. None when it cannot be estimated (fewer than two
    groups, or values that never vary)."""
    keep = values.notna()
    y, g = values[keep].to_numpy(float), groups[keep].to_numpy()
    n = len(y)
    if n == 0:
        return None
    resid = y - y.mean()
    var0 = float(np.mean(resid**2))
    _, codes = np.unique(g, return_inverse=True)
    n_groups = int(codes.max()) + 1
    if n_groups < 2 or var0 <= 1e-12 * max(1.0, float(np.mean(y**2))):
        return None
    sums = np.bincount(codes, weights=resid)
    cluster_var = n_groups / (n_groups - 1) * float(np.sum(sums**2)) / n**2
    return cluster_var / (var0 / n)


def critical_value(probes: int) -> float:
    """t quantile on probes - 1 degrees of freedom; within one probe answers are independent
    draws from its answer distribution, so z."""
    if probes < 2:
        return Z95
    from scipy.stats import t

    return float(t.ppf(0.5 + LEVEL / 2, probes - 1))


def rate_interval(k: float, n: float, deff: float, probes: int) -> tuple[float, float]:
    """The rate interval for k hits in n answers over `probes` probes with design effect deff."""
    return wilson(k / deff, n / deff, critical_value(probes))


@dataclass(frozen=True)
class RateEstimate:
    k: int
    n: int
    probes: int
    deff: float

    @property
    def n_eff(self) -> float:
        return self.n / self.deff

    @property
    def ci(self) -> tuple[float, float]:
        return rate_interval(self.k, self.n, self.deff, self.probes)

    def metric(self) -> dict:
        return {
            "value": self.k / self.n if self.n else None,
            "ci": _clean(list(self.ci)) if self.n else [None, None],
            "n": self.n,
        }

    def detail(self) -> dict:
        return {"n_eff": round(self.n_eff, 3), "probes": self.probes, "deff": round(self.deff, 4)}


def estimate_rate(
    hits: pd.Series, among: pd.Series, groups: pd.Series, scores: pd.Series | None = None
) -> RateEstimate:
    """Share of hits among the selected rows, answers clustered by groups (probes). scores:
    the score the hits threshold, whose clustering stands in when the hits never vary."""
    among = among.fillna(False).astype(bool)
    y = (hits.fillna(False).astype(bool) & among)[among].astype(float)
    g = groups[among]
    n, k, probes = len(y), int(y.sum()), int(g.nunique())
    deff = 1.0
    if probes >= 2:
        deff = design_effect(y, g)
        if deff is None and scores is not None:
            # 0 of n (or n of n) says nothing about clustering; the score it cuts does
            deff = design_effect(scores[among], g)
        if deff is None:  # nothing varies: assume the worst, each probe one answer's worth
            deff = n / probes
    return RateEstimate(k, n, probes, max(1.0, deff))


def rate(
    hits: pd.Series,
    among: pd.Series,
    groups: pd.Series | None = None,
    scores: pd.Series | None = None,
) -> dict:
    """Share of `hits` within the rows selected by `among` (boolean Series), with an interval
    clustered by groups (one group, or none given: Wilson over the answers)."""
    if groups is None:
        groups = pd.Series(0, index=among.index)
    return estimate_rate(hits, among, groups, scores).metric()


def bootstrap_mean(
    values: pd.Series,
    groups: pd.Series,
    n_boot: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> dict:
    """Mean of values with a 95% interval from resampling whole groups (probes). A single
    group, or resamples that all agree, give no interval rather than a zero-width one."""
    values = values.dropna()
    groups = groups[values.index]
    n = len(values)
    if n == 0:
        return {"value": None, "ci": [None, None], "n": 0}
    sums = values.groupby(groups).sum()
    counts = values.groupby(groups).count()
    ci = [None, None]
    if len(sums) >= 2:
        rng = np.random.default_rng(seed)
        picks = rng.integers(0, len(sums), size=(n_boot, len(sums)))
        boot = sums.to_numpy()[picks].sum(1) / counts.to_numpy()[picks].sum(1)
        low, high = np.percentile(boot, [50 * (1 - LEVEL), 50 * (1 + LEVEL)])
        if high - low > 1e-9:
            ci = _clean([low, high])
    return {"value": float(values.mean()), "ci": ci, "n": n}


def _clean(ci):
    return [None if (x is None or math.isnan(x)) else round(float(x), 6) for x in ci]
