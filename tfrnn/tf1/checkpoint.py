"""Reading a TF1 ``tf.train.Saver`` checkpoint by variable name, and telling the model's
variables from what the optimizer and the training loop kept beside them.

No graph is built: ``tf.train.load_checkpoint`` reads the variables as arrays.
"""

from __future__ import annotations

import dataclasses
import os
import re

import numpy as np
import tensorflow as tf

from tfrnn.errors import UsageError

# Scalars TF1's optimizers (Adam's beta powers) and training loops (the step) keep.
OPTIMIZER_SCALARS = ("beta1_power", "beta2_power")
STEP_COUNTER = "global_step"
# The slot names of TF1's optimizers: a slot is ``<variable>/<slot name>``.
SLOT_NAMES = ("Adam", "Adam_1", "Adagrad", "Momentum", "RMSProp", "RMSProp_1", "Ftrl", "Ftrl_1")


def read_checkpoint(prefix: str) -> dict[str, np.ndarray]:
    """Every variable of the TF1 checkpoint at ``prefix`` (or the latest in a folder).

    Raises:
      UsageError: no checkpoint there (naming the checkpoints beside it), or an unreadable one.
    """
    # A file of the checkpoint named instead of its prefix: the reader would find nothing.
    prefix = re.sub(r"\.(index|data-\d{5}-of-\d{5}|meta)$", "", prefix)
    try:
        reader = tf.train.load_checkpoint(prefix)
    except (tf.errors.NotFoundError, ValueError) as error:
        raise UsageError(
            f"--tf1_checkpoint {prefix}: no TF1 checkpoint there (no {os.path.basename(prefix)}"
            f".index and .data-* files, nor a folder with a 'checkpoint' file){_nearby(prefix)}; "
            "variables found: none"
        ) from error
    except tf.errors.OpError as error:  # a damaged or foreign file
        first_line = error.message.strip().splitlines()[0] if error.message.strip() else ""
        raise UsageError(
            f"--tf1_checkpoint {prefix}: cannot read it ({first_line}); variables found: none"
        ) from error
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}


def _nearby(prefix: str) -> str:
    """``; checkpoints in DIR: a, b`` for the prefixes beside a wrong one, if any."""
    folder = os.path.dirname(prefix) or "."
    if not os.path.isdir(folder):
        return ""
    found = sorted(name[: -len(".index")] for name in os.listdir(folder) if name.endswith(".index"))
    return f"; checkpoints in {folder}: {', '.join(found)}" if found else ""


@dataclasses.dataclass(frozen=True)
class TrainingVariables:
    """The names of what a checkpoint holds besides the model.

    Attributes:
      optimizer: the optimizer's slots (``<variable>/Adam``…) and scalars (``beta1_power``…).
      step: ``global_step`` if the checkpoint holds it, else empty.
    """

    optimizer: tuple = ()
    step: tuple = ()

    @classmethod
    def of(cls, names) -> TrainingVariables:
        """The split of ``names``, all of them training variables."""
        step = tuple(name for name in names if name == STEP_COUNTER)
        return cls(tuple(sorted(set(names) - set(step))), step)

    def __len__(self) -> int:
        return len(self.optimizer) + len(self.step)

    def names(self) -> tuple:
        return self.optimizer + self.step

    def describe(self) -> str:
        """``6 optimizer variables and global_step``, for messages."""
        parts = [f"{len(self.optimizer)} optimizer variables"] if self.optimizer else []
        return " and ".join(parts + list(self.step))


def split_training_variables(variables: dict) -> tuple[dict, TrainingVariables]:
    """(the model's variables, what the optimizer and the training loop kept).

    A slot is named after the variable it belongs to, ``<variable>/<slot name>``: one of
    :data:`SLOT_NAMES`, or any name under another variable of the checkpoint.
    """
    slots = {
        name
        for name in variables
        if name in OPTIMIZER_SCALARS
        or name.rpartition("/")[2] in SLOT_NAMES
        or name.rpartition("/")[0] in variables
    }
    step = (STEP_COUNTER,) if STEP_COUNTER in variables else ()
    model = {name: value for name, value in variables.items() if name not in slots | set(step)}
    return model, TrainingVariables(tuple(sorted(slots)), step)


def describe_variables(variables: dict, training: TrainingVariables | None = None) -> str:
    """``name (shape), …`` of the model variables, for error messages (one line)."""
    if not variables:
        return "none"
    listed = ", ".join(
        f"{name} {tuple(np.shape(value))}" for name, value in sorted(variables.items())
    )
    if training:
        listed += f" (and {training.describe()})"
    return listed
