"""The adversarial search's figures: Figure 7, methods side by side, and the attack's curves.
Each writes a PNG and returns its `Figure` without pyplot's global state; they read results and
records by field name and import nothing of the attack."""

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

DPI = 100
PANELS = 3  # per method in plot_comparison: noise, changed pixels, adversarial image
CHANGED = 0.5 / 255  # a pixel counts as changed past half a grey level (the attack's L0)


def class_title(class_names, index, p) -> str:
    """ "Dress, w.p. 0.9993": a class name and the model's probability for it."""
    return f"{class_names[int(index)]}, w.p. {float(p):.4f}"


def plot_examples(path: Path, images, result, picks, class_names, title: str) -> Figure:
    """Figure 7: original | noise (own diverging scale, colorbar) | adversarial, a row for each
    of `picks` (sample indices of `images` [N, 28, 28, 1] and their AttackResult)."""
    fig = Figure(figsize=(9, 3 * len(picks)))
    axes = fig.subplots(len(picks), 3, squeeze=False)
    for row, i in zip(axes, picks):
        x, x_adv = np.asarray(images[i])[..., 0], np.asarray(result.adversarial[i])[..., 0]
        noise = x_adv - x
        scale = max(float(np.abs(noise).max()), 1e-6)
        row[0].imshow(x, cmap="gray", vmin=0, vmax=1)
        row[0].set_title(
            class_title(class_names, result.clean_predicted[i], result.clean_p_predicted[i])
        )
        im = row[1].imshow(noise, cmap="RdBu_r", vmin=-scale, vmax=scale)
        row[1].set_title(f"add noise (L1 {float(result.l1[i]):.1f})")
        fig.colorbar(im, ax=row[1], fraction=0.046, pad=0.04)
        row[2].imshow(x_adv, cmap="gray", vmin=0, vmax=1)
        row[2].set_title(class_title(class_names, result.predicted[i], result.p_predicted[i]))
        for ax in row:
            ax.set_axis_off()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    return fig


def plot_comparison(path: Path, images, results: dict, picks, class_names) -> Figure:
    """The images of `picks` attacked by each method of `results` (name -> AttackResult): the
    original, then per method its noise, the pixels it changed as the L0 counts them (red up,
    blue down) and its adversarial image; the noise's sparsity side by side."""
    fig = Figure(figsize=(2.2 * (1 + PANELS * len(results)), 2.5 * len(picks)))
    axes = fig.subplots(len(picks), 1 + PANELS * len(results), squeeze=False)
    first = next(iter(results.values()))
    for row, i in zip(axes, picks):
        x = np.asarray(images[i])[..., 0]
        row[0].imshow(x, cmap="gray", vmin=0, vmax=1)
        row[0].set_title(
            class_title(class_names, first.clean_predicted[i], first.clean_p_predicted[i]),
            fontsize=9,
        )
        for k, (name, result) in enumerate(results.items()):
            noise_ax, changed_ax, adversarial_ax = row[1 + PANELS * k : 1 + PANELS * (k + 1)]
            x_adv = np.asarray(result.adversarial[i])[..., 0]
            noise = x_adv - x
            scale = max(float(np.abs(noise).max()), 1e-6)
            noise_ax.imshow(noise, cmap="RdBu_r", vmin=-scale, vmax=scale)
            noise_ax.set_title(f"{name}: L1 {float(result.l1[i]):.1f}", fontsize=9)
            changed = np.sign(noise) * (np.abs(noise) > CHANGED)
            changed_ax.imshow(changed, cmap="bwr", vmin=-1, vmax=1)
            changed_ax.set_title(f"{int(np.sum(changed != 0))} pixels changed", fontsize=9)
            adversarial_ax.imshow(x_adv, cmap="gray", vmin=0, vmax=1)
            target = class_names[int(result.targets[i])]
            adversarial_ax.set_title(f"p({target}) {float(result.p_target[i]):.4f}", fontsize=9)
        for ax in row:
            ax.set_axis_off()
    fig.suptitle("noise, changed pixels and adversarial image per method: " + ", ".join(results))
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    return fig


def _histogram(ax, records: dict, field: str) -> None:
    """Per-method histogram of `field` over the successful records; steps on log-spaced bins."""
    won = {m: [r[field] for r in rows if r["success"]] for m, rows in records.items()}
    values = [v for vs in won.values() for v in vs]
    if field == "steps":  # heavy-tailed: log-spaced bins, 0 steps drawn as 1
        won = {m: np.maximum(vs, 1) for m, vs in won.items()}
        bins = np.geomspace(1, max(values + [1]) + 1, 30)
        ax.set_xscale("log")
    else:
        bins = np.histogram_bin_edges(values, bins=30) if values else 30
    for name, vs in won.items():
        if len(vs):
            ax.hist(vs, bins=bins, alpha=0.5, label=name)


def plot_curves(
    path: Path, history: np.ndarray, threshold: float, records: dict, method: str
) -> Figure:
    """p(target) against steps (`history` [steps + 1, samples] of `method`); histograms of the
    steps and L1 of the successful `records` (method -> the runner's records) per method."""
    fig = Figure(figsize=(15, 4))
    axes = fig.subplots(1, 3)
    axes[0].plot(np.arange(len(history)), history)
    axes[0].axhline(threshold, color="k", linestyle="--", linewidth=1, label="threshold")
    axes[0].set(xlabel="step", ylabel="p(target)", title=f"p(target) during {method} searches")
    axes[0].legend(loc="lower right")
    _histogram(axes[1], records, "steps")
    _histogram(axes[2], records, "l1")
    axes[1].set(xlabel="steps to reach the threshold", ylabel="samples", title="steps (log)")
    axes[2].set(xlabel="L1 of the noise", ylabel="samples", title="L1 (successful samples)")
    for ax in axes[1:]:
        if ax.has_data():
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    return fig
