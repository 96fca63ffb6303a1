"""Tests of fmnist_jax.plotting.adversarial: Figure 7 and the attack's curves are written as
PNGs with the panels and titles the exercise's figure has, from a hand-made AttackResult."""

import numpy as np

from fmnist_jax.adversarial.search import AttackResult
from fmnist_jax.data import CLASS_NAMES
from fmnist_jax.plotting import adversarial as figures

PNG = b"\x89PNG\r\n\x1a\n"
DRESS, TROUSER, BAG = 3, 1, 8


def result_of_two() -> tuple[np.ndarray, AttackResult]:
    """Two images and their search results: a Dress (p 0.99934) turned Trouser (p 0.95031),
    and a Bag search that failed."""
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, (2, 28, 28, 1)).astype(np.float32)
    noise = rng.normal(0, 0.05, images.shape).astype(np.float32)
    adversarial = np.clip(images + noise, 0, 1)
    delta = np.abs(adversarial - images).reshape(2, -1)
    result = AttackResult(
        adversarial=adversarial,
        targets=np.array([TROUSER, 0]),
        steps=np.array([35, 300]),
        success=np.array([True, False]),
        p_target=np.array([0.95031, 0.4]),
        predicted=np.array([TROUSER, BAG]),
        p_predicted=np.array([0.95031, 0.6]),
        clean_predicted=np.array([DRESS, BAG]),
        clean_p_predicted=np.array([0.99934, 0.9]),
        l0=(delta > 0.5 / 255).sum(1),
        l1=delta.sum(1),
        l2=np.sqrt((delta**2).sum(1)),
        linf=delta.max(1),
    )
    return images, result


def test_class_title_names_the_class_and_its_probability():
    assert figures.class_title(CLASS_NAMES, DRESS, 0.99934) == "Dress, w.p. 0.9993"
    assert figures.class_title(CLASS_NAMES, np.int32(TROUSER), 0.95031) == "Trouser, w.p. 0.9503"


def test_figure7_has_original_noise_adversarial_rows_with_their_titles(tmp_path):
    images, result = result_of_two()
    path = tmp_path / "figure.png"
    fig = figures.plot_examples(path, images, result, [0, 1], CLASS_NAMES, "Figure 7")
    assert path.read_bytes()[:8] == PNG and path.stat().st_size > 10_000
    assert fig.get_suptitle() == "Figure 7"
    panels = [ax for ax in fig.axes if ax.images and ax.get_title()]
    assert len(panels) == 6 and len(fig.axes) == 8  # 2 rows of 3 panels, a colorbar per row
    l1 = float(result.l1[0])
    assert [ax.get_title() for ax in panels[:3]] == [
        "Dress, w.p. 0.9993",
        f"add noise (L1 {l1:.1f})",
        "Trouser, w.p. 0.9503",
    ]
    assert panels[3].get_title() == "Bag, w.p. 0.9000"  # a failed search is drawn as it is
    assert panels[5].get_title() == "Bag, w.p. 0.6000"
    # The noise panel has its own symmetric scale: its largest change is the colour limit.
    low, high = panels[1].images[0].get_clim()
    noise = result.adversarial[0, ..., 0] - images[0, ..., 0]
    assert low == -high and high == np.abs(noise).max()
    np.testing.assert_array_equal(panels[2].images[0].get_array(), result.adversarial[0, ..., 0])


def test_curves_plot_p_target_and_per_method_histograms_of_the_successes(tmp_path):
    history = np.linspace(0.1, 0.96, 11)[:, None] * np.ones((1, 3))
    records = {
        "sign": [{"success": True, "steps": s, "l1": 20.0 + s} for s in (0, 5, 35)],
        "pgd": [{"success": True, "steps": 8, "l1": 28.0}, {"success": False, "steps": 100}],
    }
    path = tmp_path / "curves.png"
    fig = figures.plot_curves(path, history, 0.95, records, "sign")
    assert path.read_bytes()[:8] == PNG and path.stat().st_size > 10_000
    curves, steps, l1 = fig.axes
    assert curves.get_title() == "p(target) during sign searches"
    assert len(curves.lines) == 3 + 1  # one line per replayed search, and the threshold
    assert curves.lines[-1].get_ydata()[0] == 0.95
    assert steps.get_title() == "steps (log)" and steps.get_xscale() == "log"
    assert l1.get_title() == "L1 (successful samples)"
    for ax in (steps, l1):
        assert [t.get_text() for t in ax.get_legend().get_texts()] == ["sign", "pgd"]
    sign_counts = [p.get_height() for p in steps.containers[0]]
    assert sum(sign_counts) == 3 and sum(p.get_height() for p in steps.containers[1]) == 1


def test_curves_without_any_success_draw_empty_histograms(tmp_path):
    records = {"fgsm": [{"success": False, "steps": 1, "l1": 57.8}]}
    fig = figures.plot_curves(tmp_path / "curves.png", np.full((2, 1), 0.2), 0.95, records, "fgsm")
    assert (tmp_path / "curves.png").read_bytes()[:8] == PNG
    for ax in fig.axes[1:]:
        assert not ax.containers and ax.get_legend() is None


def test_comparison_puts_each_methods_noise_changed_pixels_and_adversarial_side_by_side(
    tmp_path,
):
    images, result = result_of_two()
    sparse = images.copy()
    sparse[0, 3, 4, 0], sparse[0, 5, 6, 0] = 1.0, 0.0  # two pixels changed, one up, one down
    smaller = result._replace(adversarial=sparse, l1=result.l1 / 2)
    path = tmp_path / "minl1.png"
    results = {"exercise": result, "minl1": smaller}
    fig = figures.plot_comparison(path, images, results, [0], CLASS_NAMES)
    assert path.read_bytes()[:8] == PNG and path.stat().st_size > 10_000
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == [
        "Dress, w.p. 0.9993",
        f"exercise: L1 {float(result.l1[0]):.1f}",
        f"{int(result.l0[0])} pixels changed",
        "p(Trouser) 0.9503",
        f"minl1: L1 {float(result.l1[0]) / 2:.1f}",
        "2 pixels changed",
        "p(Trouser) 0.9503",
    ]
    np.testing.assert_allclose(fig.axes[4].images[0].get_array(), (sparse - images)[0, ..., 0])
    changed = np.asarray(fig.axes[5].images[0].get_array())
    assert changed[3, 4] == 1 and changed[5, 6] == -1 and np.sum(changed != 0) == 2
    assert "exercise, minl1" in fig.get_suptitle()
