"""The standard plots: written from computed results for a study trial, `eeopt train` and `eeopt exits evaluate
--plots`; each figure is a real PNG of a sensible size; the grid fits the exit count."""

from __future__ import annotations

import pytest
from PIL import Image

from eeopt.cli import main
from eeopt.plots import TRIAL_PLOTS, save_plots, save_variant_plots
from eeopt.plots.base import grid_shape, setting
from eeopt.core.synthetic import synthetic_exit_outputs


def _size(path):
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        return img.size


def test_grid_fits_the_exit_count():
    assert [grid_shape(k) for k in (1, 3, 5, 6, 7, 8, 10, 12)] == [
        (1, 1), (1, 3), (1, 5), (2, 3), (2, 4), (2, 4), (2, 5), (3, 5)]
    for k in range(1, 30):  # never a whole empty row, at most one row's worth of spare panels
        rows, cols = grid_shape(k)
        assert rows * cols >= k and (rows - 1) * cols < k


def test_titles_name_split_score_and_calibration():
    assert setting("test", "msp", "temperature", "val") == "test split · score msp · calibration temperature (fitted on val)"
    assert setting("val", None, "none", "val") == "val split · calibration none"


@pytest.mark.slow  # renders every trial plot: 1.5-2 s a case
@pytest.mark.parametrize("exits", [3, 7])
def test_variant_plots_are_written(tmp_path, exits):
    from eeopt.assess import assess_model

    val = synthetic_exit_outputs(exits, 900, 10, seed=1, with_scores=True)
    test = synthetic_exit_outputs(exits, 800, 10, seed=2, with_scores=True)
    variant = assess_model(val, test, calibration="temperature", trials=40).primary
    paths = save_variant_plots(variant, tmp_path / "plots")
    assert list(paths) == list(TRIAL_PLOTS)
    sizes = {name: _size(path) for name, path in paths.items()}
    assert all(w > 400 and h > 300 for w, h in sizes.values()), sizes
    rows, cols = grid_shape(exits)
    width, height = sizes["reliability"]
    assert width / height == pytest.approx(cols / rows * 3.1 / 3.9, rel=0.35)  # the grid, not a fixed 4 columns


def test_plots_without_a_fit_split(tmp_path):
    """In-sample (no validation split): the same files, without the lines that need one."""
    from eeopt.core.evaluation import evaluate
    from eeopt.core.prepared import prepare

    split = prepare(synthetic_exit_outputs(4, 600, 5, seed=3), None, "msp", "test")
    paths = save_plots(tmp_path, split, evaluate(split))
    assert sorted(p.name for p in paths.values()) == sorted(f"{n}.png" for n in TRIAL_PLOTS)


@pytest.mark.slow  # renders every trial plot twice: about 2.7 s
def test_exits_evaluate_writes_the_plots(tmp_path, capsys):
    for offset, split in enumerate(("val", "test")):
        synthetic_exit_outputs(4, 700, 10, seed=10 + offset, with_scores=True).save(tmp_path / f"{split}.npz")
    plots = tmp_path / "plots"
    assert main(["exits", "evaluate", str(tmp_path / "test.npz"), "--fit-on", str(tmp_path / "val.npz"),
                 "--calibrate", "temperature", "--plots", str(plots)]) == 0
    out = capsys.readouterr().out
    assert {p.name for p in plots.iterdir()} == {f"{n}.png" for n in TRIAL_PLOTS}
    assert f"plots: {plots / 'accuracy_vs_cost.png'}" in out
    assert main(["exits", "evaluate", str(tmp_path / "test.npz"), "--plots", str(tmp_path / "alone"), "--json"]) == 0
    assert len(list((tmp_path / "alone").glob("*.png"))) == len(TRIAL_PLOTS)


def test_exits_evaluate_plots_into_a_file_is_refused_first(tmp_path, capsys):
    synthetic_exit_outputs(3, 300, 4, seed=1).save(tmp_path / "test.npz")
    (tmp_path / "taken").write_text("a file")
    assert main(["exits", "evaluate", str(tmp_path / "test.npz"), "--plots", str(tmp_path / "taken")]) == 2
    err = capsys.readouterr().err
    assert "--plots" in err and "not a directory" in err and err.count("\n") == 1


def test_accuracy_vs_cost_fits_its_y_range_to_the_budgets():
    """A curve that climbs from 60 % to 99 % by 45 % of the cost, then stays: the y axis spans what lies from 40 %
    of the cost on (not the climb), with a margin; the whole range, the climb included, is what the inset shows."""
    import numpy as np

    from eeopt.plots.efficiency import ZOOM_FROM, _y_ranges

    x = np.linspace(20, 100, 81)
    y = np.where(x < 45, 60 + (x - 20) / 25 * 39, 99 + (x - 45) / 55 * 0.5)
    points = {"sweep": (np.array([25.0, 50.0]), np.array([66.0, 99.1]), np.array([25.0, 50.0])),
              "search": (np.array([]),) * 3,
              "exits": (np.array([20.0, 60.0, 100.0]), np.array([60.0, 98.0, 99.5]), np.array([1.0, 2.0, 3.0]))}
    whole, fitted = _y_ranges([(x, y, {})], points)
    shown = np.concatenate([y[x >= ZOOM_FROM], [99.1, 98.0, 99.5]])
    assert whole[0] < 60 and whole[1] > 99.5
    assert fitted[0] < shown.min() and fitted[1] > shown.max()  # everything from 40 % on is inside
    assert fitted[0] > 90  # ... and the axis spends its height there, not on the climb
    assert fitted[1] - fitted[0] < 0.25 * (whole[1] - whole[0])


def test_accuracy_vs_cost_draws_the_sweep_over_the_search(tmp_path):
    """Where both policies' test curves coincide, the global sweep's thin line is drawn on top of the per-exit
    search's wide band: each stays visible (their val lines dashed, under both)."""
    from eeopt.assess import assess_model
    from eeopt.plots.efficiency import _lines

    val = synthetic_exit_outputs(4, 900, 10, seed=1, with_scores=True)
    test = synthetic_exit_outputs(4, 800, 10, seed=2, with_scores=True)
    variant = assess_model(val, test, trials=40).primary
    styles = {s["label"]: s for _, _, s in _lines(variant.test_report, variant.val_report, variant.search,
                                                  float(test.costs[-1]), "test", "val")}
    sweep, search = styles["global threshold, test"], styles["the same policies on test"]
    assert sweep["zorder"] > search["zorder"] and search["lw"] > 2 * sweep["lw"]
    assert all(s.get("ls") == "--" and s["zorder"] < search["zorder"] for name, s in styles.items() if "val" in name)
