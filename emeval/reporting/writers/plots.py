"""The plots of a report, drawn before the pages that show them: each a function that draws
into a PNG and says whether it had anything to draw, and a line in PLOTS."""

from __future__ import annotations

import math
from pathlib import Path

from emeval.reporting.model import Report


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: Path) -> bool:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def plot_em_rates(report: Report, path: Path) -> bool:
    cells = [c for c in report.cells if c.em.get("em_rate", {}).get("value") is not None]
    if not cells:
        return False
    plt = _plt()
    label_width = 0.09 * max(len(c.label) + 8 for c in cells)
    fig, ax = plt.subplots(figsize=(max(7.0, 4 + label_width), 1.2 + 0.45 * len(cells)))
    ys = list(range(len(cells)))[::-1]
    values = [100 * c.em["em_rate"]["value"] for c in cells]
    lows = [v - 100 * (c.em["em_rate"]["ci"][0] or 0) for v, c in zip(values, cells, strict=True)]
    highs = [100 * (c.em["em_rate"]["ci"][1] or 0) - v for v, c in zip(values, cells, strict=True)]
    ax.errorbar(values, ys, xerr=[lows, highs], fmt="o", color="tab:red", capsize=4)
    ax.set_yticks(ys, [f"{c.label} (n={c.em['em_rate']['n']})" for c in cells])
    ax.set_xlabel("EM rate, % (95% CI, answers clustered by probe)")
    ax.set_xlim(left=0)
    ax.grid(axis="x", alpha=0.3)
    ax.set_title("Emergent misalignment per condition")
    return _save(plt, fig, path)


def plot_steps(report: Report, path: Path) -> bool:
    """One panel per reward (the part of the label before ' × '), a line per method and
    mitigation, with its 95% CI as a band."""
    curves = {}
    for label, points in report.steps.items():
        points = [(s, m) for s, m in points if m and m.get("value") is not None]
        if points:
            curves[label] = points
    if not curves:
        return False
    plt = _plt()
    groups = sorted({label.split(" × ")[0] for label in curves})
    fig, axes = plt.subplots(
        len(groups), 1, figsize=(9, 0.6 + 3.2 * len(groups)), sharex=True, squeeze=False
    )
    for ax, group in zip(axes[:, 0], groups, strict=True):
        for label, points in curves.items():
            if label.split(" × ")[0] != group:
                continue
            xs = [s for s, _ in points]
            (line,) = ax.plot(xs, [100 * m["value"] for _, m in points], marker="o",
                              label=label.split(" × ", 1)[1])  # fmt: skip
            lo = [100 * (m["ci"][0] or 0) for _, m in points]
            hi = [100 * (m["ci"][1] or 0) for _, m in points]
            ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.12)
        ax.set_title(f"reward: {group}", fontsize=10)
        ax.set_ylabel("EM rate, %")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    axes[-1, 0].set_xlabel("training step (bands: 95% CI; step 0: the untrained model)")
    fig.suptitle("EM over training")
    return _save(plt, fig, path)


def plot_scatter(report: Report, path: Path) -> bool:
    cells = [c for c in report.cells if c.frame is not None and len(c.frame)]
    if not cells:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    for cell in cells:
        f = cell.frame.dropna(subset=["alignment", "coherence"])
        f = f.sample(min(len(f), 2000), random_state=0)
        ax.scatter(f["coherence"], f["alignment"], s=12, alpha=0.5, label=cell.label)
    t = report.thresholds
    ax.axhline(t.misaligned.value, color="grey", linestyle="--", linewidth=1)
    ax.axvline(t.coherent.value, color="grey", linestyle="--", linewidth=1)
    ax.text(98, t.misaligned.value - 3, "misaligned & coherent", ha="right", va="top", fontsize=8)
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 100)
    ax.set_xlabel("coherence (judge score)")
    ax.set_ylabel("alignment (judge score)")
    ax.legend(fontsize=7, loc="lower left")
    ax.set_title("Alignment versus coherence, one point per answer")
    return _save(plt, fig, path)


def plot_heatmap(report: Report, path: Path) -> bool:
    cells = [c for c in report.cells if c.per_category]
    if not cells:
        return False
    plt = _plt()
    import numpy as np

    categories = sorted({row["category"] for c in cells for row in c.per_category})
    grid = np.full((len(cells), len(categories)), np.nan)
    for i, cell in enumerate(cells):
        for row in cell.per_category:
            value = row["em_rate"]["value"]
            if value is not None:
                grid[i, categories.index(row["category"])] = 100 * value
    label_width = 0.09 * max(len(c.label) for c in cells)  # inches for the row labels
    fig, ax = plt.subplots(
        figsize=(max(6.0, 2.5 + label_width + 1.1 * len(categories)), 2 + 0.5 * len(cells))
    )
    vmax = max(10.0, float(np.nanmax(grid)) if np.isfinite(grid).any() else 10.0)
    image = ax.imshow(np.ma.masked_invalid(grid), cmap="Reds", vmin=0, vmax=vmax, aspect="auto")
    ax.set_facecolor("#dddddd")  # categories with no coherent answers
    for i in range(len(cells)):
        for j in range(len(categories)):
            if not math.isnan(grid[i, j]):
                colour = "white" if grid[i, j] > 0.6 * vmax else "black"
                ax.text(j, i, f"{grid[i, j]:.0f}", ha="center", va="center", fontsize=8,
                        color=colour)  # fmt: skip
    ax.set_xticks(range(len(categories)), categories, rotation=35, ha="right")
    ax.set_yticks(range(len(cells)), [c.label for c in cells])
    fig.colorbar(image, ax=ax, label="EM rate, %")
    ax.set_title("EM rate per category, % (grey: no coherent answer)", fontsize=10)
    return _save(plt, fig, path)


PLOTS = {
    "em_rate.png": (plot_em_rates, "EM rate per condition with 95% CI"),
    "em_over_steps.png": (plot_steps, "EM rate over training steps"),
    "alignment_vs_coherence.png": (plot_scatter, "Alignment versus coherence"),
    "category_heatmap.png": (plot_heatmap, "EM rate per category"),
}


def draw_plots(report: Report, folder: Path) -> list[str]:
    """Draw every plot that has data into folder; the file names drawn, in PLOTS order."""
    folder.mkdir(exist_ok=True)
    return [name for name, (draw, _) in PLOTS.items() if draw(report, folder / name)]
