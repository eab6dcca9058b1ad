"""What ``python -m tfrnn.export`` answers for a workdir it cannot export: one line that
says what to export or run instead (the exports themselves: tests/test_export.py)."""

import pytest
import tensorflow as tf
from absl import flags

from tfrnn.errors import UsageError
from tfrnn.serving import export


def test_a_stray_argument_is_refused(tmp_path):
    values = flags.FlagValues()
    export.define_flags(values)
    argv = values(["export", f"--workdir={tmp_path}", f"--export_dir={tmp_path}", "extra"])
    with pytest.raises(UsageError, match=r"^unexpected arguments: extra \(the command takes"):
        export.main(argv, values)


def test_a_file_as_workdir_is_a_file_not_a_folder(tmp_path):
    (tmp_path / "model.keras").write_text("")
    with pytest.raises(UsageError) as error:
        export.export_workdir(str(tmp_path / "model.keras"), str(tmp_path / "models"))
    assert str(error.value) == f"--workdir {tmp_path}/model.keras is a file, not a folder"


def test_a_suite_folder_names_its_runs(tmp_path):
    for name in ("concat_steps5_state4_stateful", "concat_steps10_state16_stateful"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.keras").write_text("")
    (tmp_path / "summary.json").write_text("[]")
    with pytest.raises(UsageError) as error:
        export.export_workdir(str(tmp_path), str(tmp_path / "models"))
    assert str(error.value) == (
        f"{tmp_path} is a suite's folder, not a run's: export one of its runs, "
        f"{tmp_path}/concat_steps10_state16_stateful, {tmp_path}/concat_steps5_state4_stateful"
    )


def test_a_run_stopped_before_its_end_is_told_to_run_again(tmp_path):
    manager = tf.train.CheckpointManager(
        tf.train.Checkpoint(step=tf.Variable(1)), str(tmp_path / "checkpoints"), 3
    )
    manager.save(checkpoint_number=20)
    with pytest.raises(UsageError) as error:
        export.export_workdir(str(tmp_path), str(tmp_path / "models"))
    assert str(error.value) == (
        f"{tmp_path} holds a run stopped before its end (last checkpoint "
        f"{tmp_path}/checkpoints/ckpt-20): run the same training command again, which finishes"
        " it and writes model.keras"
    )
