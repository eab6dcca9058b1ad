"""Tests of the echo-dependency experiment: a whole training run, the suites, the flags."""

import dataclasses
import json
import os

import keras
import numpy as np
import pytest
from absl import flags

from tfrnn import cli
from tfrnn.data.echo import expected_losses
from tfrnn.errors import UsageError
from tfrnn.tasks.echo import train as echo_train
from tfrnn.tasks.echo.config import EchoConfig
from tfrnn.tasks.echo.model import build_echo_model

# 100 windows of 5 steps an epoch, on 200 streams: the smallest run the curve allows.
SMALL = EchoConfig(series_length=100_000, epochs=2)


def test_a_short_run_learns_the_three_step_echo(tmp_path):
    metrics = echo_train.train_and_evaluate(SMALL, str(tmp_path), verbose=0)
    # Two epochs of 100 windows: two points on the curve, each a mean of 100 windows.
    assert len(metrics["curve"]) == 2
    assert metrics["final_loss"] == metrics["curve"][-1]
    # Below what a model that learned nothing can reach: it found the t-3 echo.
    assert metrics["final_loss"] < 0.62 < expected_losses()["nothing"]
    assert metrics["expected_loss"] == pytest.approx(0.5192, abs=1e-4)

    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["final_loss"] == metrics["final_loss"]
    for key in ("cell", "state_size", "num_steps", "mode"):
        assert written["config"][key] == getattr(SMALL, key)
    assert (tmp_path / "curve.png").stat().st_size > 1000
    assert len(written["epoch_seconds"]) == 2 and written["seconds_per_epoch"] > 0

    # model.keras is the stateless model: any batch and length, the trained weights.
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    assert not loaded.get_layer("rnn").stateful
    symbols = np.random.default_rng(0).integers(0, 2, size=(3, 11)).astype("int32")
    trained = build_echo_model("concat", 4)
    trained.set_weights(loaded.get_weights())
    np.testing.assert_allclose(loaded(symbols), trained(symbols), atol=1e-6)
    assert not np.allclose(loaded.get_layer("logits").get_weights()[1], 0.0)


def test_a_one_point_curve_is_drawn_as_a_dot():
    # One epoch of 100 windows: the curve has one point, which a bare line would not show.
    metrics = {"config": dataclasses.asdict(SMALL), "curve": [0.6]}
    figure = echo_train.curves_figure(
        {"short": metrics, "longer": {**metrics, "curve": [0.6, 0.5]}}
    )
    short, longer = figure.axes[0].get_lines()[:2]
    assert short.get_marker() == "o"
    assert longer.get_marker() in ("None", "", None)


def _metrics(curve, num_steps=5):
    """A run's metrics for the plots: ``curve``, one point per epoch of 100 windows."""
    config = dataclasses.replace(SMALL, num_steps=num_steps, series_length=20_000 * num_steps)
    return {"config": dataclasses.asdict(config), "curve": curve}


def test_points_outside_the_range_are_marked_on_its_edges():
    figure = echo_train.curves_figure({"spiky": _metrics([0.6, 0.95, 0.5, 0.8, 0.4])})
    (axes,) = figure.axes
    assert axes.get_ylim() == echo_train.LOSS_RANGE == (0.43, 0.70)
    above = [line for line in axes.get_lines() if line.get_marker() == "^"]
    below = [line for line in axes.get_lines() if line.get_marker() == "v"]
    assert above[0].get_xydata().tolist() == [[2, 0.70], [4, 0.70]]
    assert below[0].get_xydata().tolist() == [[5, 0.43]]
    assert not above[0].get_clip_on()  # drawn over the edge, not cut off
    assert axes.texts[-1].get_text() == "▲ above 0.70, up to 0.95; ▼ below 0.43, down to 0.40"
    calm = echo_train.curves_figure({"calm": _metrics([0.6, 0.5])}).axes[0]
    assert [line.get_marker() for line in calm.get_lines()[:1]] == ["None"]
    assert not any("above" in text.get_text() for text in calm.texts)


def test_styles_plot_names_the_styles_and_keeps_words_out_of_the_data():
    panels = {
        n: {
            style: _metrics([0.6, 0.52, 0.5], 2 * n if style == "TF-style 2n" else n)
            for style in echo_train.STYLE_LINES
        }
        for n in (5, 10)
    }
    figure = echo_train.styles_figure(panels, title="state 4")
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    (legend,) = figure.legends
    assert [text.get_text() for text in legend.get_texts()] == [
        "TF-style n",
        "TF-style 2n",
        "true n",
    ]
    assert [axes.get_title(loc="left") for axes in figure.axes] == ["n = 5", "n = 10"]
    # The level names beside the last panel only; no word inside any panel.
    assert [len(axes.texts) for axes in figure.axes] == [0, 3]
    for axes in figure.axes:
        box = axes.get_window_extent(renderer)
        for text in [legend, *figure.axes[-1].texts]:
            assert not text.get_window_extent(renderer).overlaps(box)
    # One run: its title names it, and no legend.
    single = echo_train.curves_figure({"run": _metrics([0.6, 0.5])}, title="run")
    assert not single.legends and single.axes[0].get_legend() is None


def test_a_diverging_run_stops_with_a_one_line_error(tmp_path):
    config = dataclasses.replace(SMALL, learning_rate=1e38, epochs=1, jit_compile=False)
    message = r"loss became nan at step 1 \(epoch 1, run of 100 windows 1\)"
    with pytest.raises(UsageError, match=message):
        echo_train.train_and_evaluate(config, str(tmp_path), verbose=0)
    assert (tmp_path / "metrics.json").exists()


def test_canonical_suite_writes_summary(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(echo_train, "CANONICAL", ((2, 2, 1), (3, 4, 1)))
    base = dataclasses.replace(SMALL, series_length=60_000, jit_compile=False)
    echo_train.run_canonical(base, str(tmp_path), verbose=0)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [(r["num_steps"], r["state_size"]) for r in summary] == [(2, 2), (3, 4)]
    assert set(summary[0]) == {
        "num_steps",
        "state_size",
        "cell",
        "mode",
        "epochs",
        "final_loss",
        "expected_loss",
        "seconds_per_epoch",
        "last_epoch_loss",
    }
    # Windows of 2 or 3 steps reach no lag: the tutorial expects the marginal's loss.
    assert summary[0]["expected_loss"] == pytest.approx(expected_losses()["nothing"])
    assert (tmp_path / "summary.png").exists()
    assert "| 3 | 4 | concat | stateful | 1 |" in capsys.readouterr().out


def test_styles_suite_writes_table_and_plot(tmp_path):
    base = dataclasses.replace(SMALL, series_length=40_000, jit_compile=False)
    records = echo_train.run_styles(
        base,
        str(tmp_path / "runs"),
        str(tmp_path / "out"),
        steps=(1,),
        state_sizes=(2,),
        epochs=1,
        verbose=0,
    )
    assert [(r["num_steps"], r["mode"]) for r in records] == [
        (1, "explicit"),
        (2, "explicit"),
        (1, "true"),
    ]
    table = (tmp_path / "out" / "styles.md").read_text()
    assert table.splitlines()[2].startswith("| 2 | 1 | ")
    assert (tmp_path / "out" / "styles_state2.png").exists()
    assert len(json.loads((tmp_path / "out" / "styles.json").read_text())) == 3


def _main(command, *arguments):
    """``command`` in process, with ``arguments`` and every other flag at its default."""
    flags.FLAGS.unparse_flags()
    command.main(flags.FLAGS(["echo_deps", *arguments]))


def test_default_runs_each_write_their_own_folder_under_runs(tmp_path, monkeypatch, echo_command):
    # The canonical suite's first configuration is the default single run's, (5, 4).
    monkeypatch.setattr(echo_train, "CANONICAL", ((5, 4, 1),))
    monkeypatch.setattr(echo_train, "STYLES_N", (1,))
    monkeypatch.setattr(echo_train, "STYLES_STATE_SIZES", (2,))
    monkeypatch.chdir(tmp_path)
    _main(echo_command, "--series_length=100000", "--seed=1")
    _main(echo_command, "--suite=canonical", "--series_length=100000")
    _main(echo_command, "--suite=styles", "--series_length=100000", "--epochs=1")

    root = tmp_path / "runs" / "echo_deps"
    single = json.loads((root / SMALL.name / "metrics.json").read_text())
    assert single["config"]["seed"] == 1  # not overwritten by the suite's seed-0 run
    canonical = json.loads((root / "canonical" / SMALL.name / "metrics.json").read_text())
    summary = json.loads((root / "canonical" / "summary.json").read_text())
    assert [record["final_loss"] for record in summary] == [canonical["final_loss"]]
    assert canonical["final_loss"] != single["final_loss"]
    assert len(json.loads((root / "styles" / "styles.json").read_text())) == 3
    assert (root / "styles" / "concat_steps2_state2_explicit" / "metrics.json").exists()
    assert sorted(os.listdir(tmp_path)) == ["runs"]  # nothing in experiments/


@pytest.mark.parametrize(
    "argument, message",
    [
        ("--num_steps=0", "error: --num_steps must be in [1, 200], got 0"),
        ("--state_size=5000", "error: --state_size must be in [1, 1024], got 5000"),
        ("--epochs=0", "error: --epochs must be in [1, 1000], got 0"),
        ("--cell=gru", "error: --cell must be one of simple, lstm, concat, got 'gru'"),
        ("--mode=tf1", "error: --mode must be one of stateful, explicit, true, got 'tf1'"),
        ("--suite=all", "error: --suite must be one of none, canonical, styles, got 'all'"),
        (
            "--suite=styles --num_steps=4",
            "error: --num_steps is set by --suite styles; leave it out",
        ),
    ],
)
def test_bad_flags_give_one_line_errors(argument, message, echo_command, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        cli.run(echo_command.main, argv=["echo_deps", *argument.split(), f"--workdir={tmp_path}"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == message + "\n"
    assert not os.listdir(tmp_path)  # nothing was started
