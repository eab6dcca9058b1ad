"""TF1 recurrent cells in a checkpoint: which family each one is, its sizes, and its weights
as the Keras or tfrnn cell that computes the same numbers holds them.

A cell's variables sit under its scope (``rnn/lstm_cell/kernel``), in one of two naming eras:
``kernel``/``bias`` from TF 1.2 on, ``weights``/``biases`` in TF 1.0 and 1.1. The families:

=================  ===================================================  =========================
TF1 cell           variables under its scope (n inputs, u units)        Keras / tfrnn cell
=================  ===================================================  =========================
BasicRNNCell       ``kernel`` (n+u, u), ``bias`` (u)                    ``SimpleRNNCell``
BasicLSTMCell      ``kernel`` (n+u, 4u), ``bias`` (4u)                  ``LSTMCell``
LSTMCell,          the same, and ``w_i_diag``, ``w_f_diag``, ``w_o_diag``  ``LSTMCell``; with
LSTMBlockCell      (u) with peepholes, ``projection/kernel`` (u, p) with    peepholes, projection
                   ``num_proj`` (the kernel is then (n+p, 4u))              or clips ``LSTMPCell``
GRUCell            ``gates/kernel`` (n+u, 2u), ``gates/bias`` (2u),      ``GRUCell(reset_after=
                   ``candidate/kernel`` (n+u, u), ``candidate/bias`` (u)    False)``
=================  ===================================================  =========================

What moves between the two: TF1's LSTM kernels have column blocks i, j, f, o, Keras' i, f, c(=j),
o, and TF1 adds ``forget_bias`` (a constructor argument, never stored) to f at run time, so it is
folded into the bias. TF1's GRU gate kernel has the reset block r first, then the update block
z; Keras' columns are z, r, h. Rows split where the state starts: ``kernel = K[:n]``,
``recurrent_kernel = K[n:]``. What a checkpoint cannot tell, and is the constructor's default
unless said otherwise: ``forget_bias`` (1.0), ``cell_clip`` and ``proj_clip`` (none), and the
activations (tanh and sigmoid).
"""

from __future__ import annotations

import dataclasses
import re

import keras
import numpy as np

from tfrnn.errors import UsageError
from tfrnn.layers.cells import make_cell

# Default scope names of the families (LSTMBlockCell's is LSTMCell's: the same variables and
# the same arithmetic).
DEFAULT_NAMES = {
    "basic_rnn_cell": "BasicRNNCell",
    "basic_lstm_cell": "BasicLSTMCell",
    "lstm_cell": "LSTMCell",
    "gru_cell": "GRUCell",
}
LSTM_FAMILIES = ("BasicLSTMCell", "LSTMCell")
# A variable's name in each era: TF >= 1.2, then TF 1.0 and 1.1.
ERAS = {"kernel": ("kernel", "weights"), "bias": ("bias", "biases")}
PEEPHOLES = {
    "w_i_diag": "input_peephole",
    "w_f_diag": "forget_peephole",
    "w_o_diag": "output_peephole",
}
# The scope levels that hold a cell: a MultiRNNCell's layer, a bidirectional call's direction,
# and the rnn calls' default scope.
_CELL_PARENT = re.compile(r"(^|.*/)(cell_\d+|fw|bw|rnn)$")


@dataclasses.dataclass(frozen=True)
class Cell:
    """One TF1 cell of a checkpoint.

    Attributes:
      scope: the cell's variable scope, e.g. ``rnn/multi_rnn_cell/cell_0/lstm_cell``.
      family: ``BasicRNNCell``, ``BasicLSTMCell``, ``LSTMCell`` or ``GRUCell``.
      units: the state width u (an LSTM's cell state c).
      input_size: the input width n.
      projection: ``num_proj`` p, or 0.
      peepholes: whether it has ``w_*_diag``.
      variables: role (``kernel``, ``bias``, ``w_f_diag``…, ``projection``, ``gates/kernel``…)
        -> the checkpoint's name for it.
    """

    scope: str
    family: str
    units: int
    input_size: int
    projection: int
    peepholes: bool
    variables: dict

    @property
    def output_size(self) -> int:
        return self.projection or self.units

    def describe(self) -> str:
        """``LSTMCell(8, use_peepholes=True, num_proj=4)``: the TF1 constructor it stands for."""
        options = [str(self.units)]
        if self.peepholes:
            options.append("use_peepholes=True")
        if self.projection:
            options.append(f"num_proj={self.projection}")
        return f"{self.family}({', '.join(options)})"


def _leaves(variables: dict) -> dict[str, dict[str, str]]:
    """scope -> {last name component: full name} for every variable."""
    scopes: dict[str, dict[str, str]] = {}
    for name in variables:
        scope, _, leaf = name.rpartition("/")
        scopes.setdefault(scope, {})[leaf] = name
    return scopes


def _slashes(name: str):
    """The positions of the slashes in ``name``: where each of its enclosing scopes ends."""
    return [index for index, char in enumerate(name) if char == "/"]


def _find(leaves: dict, scope: str, role: str) -> str | None:
    """The checkpoint's name of ``role`` (``kernel`` or ``bias``) under ``scope``, either era."""
    names = leaves.get(scope, {})
    found = [names[name] for name in ERAS[role] if name in names]
    return found[0] if found else None


def _refuse_foreign(variables: dict) -> None:
    """One line for what no plain-variable cell explains: cuDNN's buffer, TF 0.12's names."""
    opaque = sorted(name for name in variables if name.endswith("opaque_kernel"))
    if opaque:
        raise UsageError(
            f"{', '.join(opaque)}: CudnnLSTM/CudnnGRU keep their weights in one opaque cuDNN "
            "buffer, which is out of scope; save them as CudnnCompatibleLSTMCell/GRUCell "
            "variables with TF1 (tf.contrib.cudnn_rnn's saveable) and convert that checkpoint"
        )
    old = sorted(name for name in variables if re.search(r"/Linear/(Matrix|Bias)$", name))
    if old:
        raise UsageError(
            f"{', '.join(old)}: TF 0.12's variable names (Linear/Matrix), which tfrnn does not "
            "read; TF 1.x's tensorflow/contrib/rnn/python/tools/checkpoint_convert.py renames "
            "them to TF 1.0's, which it reads"
        )


def find_cells(variables: dict) -> list[Cell]:
    """Every TF1 cell among ``variables`` (the model's variables, name -> array).

    A cell is a scope holding a kernel and a bias (either era) whose name is a family's
    default, or that sits where cells sit (``…/cell_<k>/``, ``…/fw/``, ``…/bw/``, ``rnn/``);
    a GRU is any scope with ``gates/`` and ``candidate/`` kernels. Other variables (a dense
    head, an embedding) are not cells.

    Raises:
      UsageError: a cell whose variables or shapes no family explains, naming them.
    """
    _refuse_foreign(variables)
    leaves = _leaves(variables)
    cells = []
    # Every scope that holds variables or scopes that do (a GRU's holds only gates/, candidate/).
    scopes = {name[:end] for name in variables for end in _slashes(name)}
    for scope in sorted(scopes):
        if _find(leaves, f"{scope}/gates", "kernel") and _find(
            leaves, f"{scope}/candidate", "kernel"
        ):
            cells.append(_gru(scope, leaves, variables))
            continue
        name = scope.rpartition("/")[2]
        holds_weights = _find(leaves, scope, "kernel") and _find(leaves, scope, "bias")
        if name in ("gates", "candidate", "projection") or not holds_weights:
            continue
        if name in DEFAULT_NAMES or _CELL_PARENT.match(scope.rpartition("/")[0]):
            cells.append(_lstm_or_rnn(scope, leaves, variables))
    return cells


def _shape(variables, name) -> tuple:
    return tuple(np.shape(variables[name]))


def _check_owned(scope: str, roles: dict, variables: dict, family: str | None) -> None:
    """Refuses a variable under ``scope`` that ``family`` (None: every family) does not have."""
    extra = sorted(
        name for name in variables if name.startswith(scope + "/") and name not in roles.values()
    )
    if extra and family:
        raise UsageError(f"cell {scope}: {', '.join(extra)} is no variable of a TF1 {family}")
    if extra:
        raise UsageError(
            f"cell {scope}: {', '.join(extra)} is no variable of the TF1 cells tfrnn converts "
            "(BasicRNNCell, BasicLSTMCell, LSTMCell or LSTMBlockCell, GRUCell)"
        )


def _misfit(scope: str, family: str, variables: dict, roles: dict, expected: str):
    shapes = ", ".join(f"{name} {_shape(variables, name)}" for name in sorted(roles.values()))
    return UsageError(f"cell {scope}: {shapes} do not fit a TF1 {family} ({expected})")


def _gru(scope: str, leaves: dict, variables: dict) -> Cell:
    roles = {
        f"{part}/{role}": _find(leaves, f"{scope}/{part}", role)
        for part in ("gates", "candidate")
        for role in ("kernel", "bias")
    }
    missing = [role for role, name in roles.items() if name is None]
    if missing:
        raise UsageError(f"cell {scope}: a GRUCell without {', '.join(missing)}")
    _check_owned(scope, roles, variables, "GRUCell")
    units = _shape(variables, roles["candidate/bias"])[0]
    rows = _shape(variables, roles["candidate/kernel"])[0]
    input_size = rows - units
    expected = {
        "gates/kernel": (rows, 2 * units),
        "gates/bias": (2 * units,),
        "candidate/kernel": (rows, units),
    }
    if input_size <= 0 or any(_shape(variables, roles[r]) != s for r, s in expected.items()):
        raise _misfit(
            scope, "GRUCell", variables, roles, "gates (n+u, 2u), (2u); candidate (n+u, u), (u)"
        )
    return Cell(scope, "GRUCell", units, input_size, 0, False, roles)


def _lstm_or_rnn(scope: str, leaves: dict, variables: dict) -> Cell | tuple:
    """The cell at ``scope``; for a cell of the user's name whose kernel fits both a
    BasicRNNCell and an LSTM, the tuple of both (its neighbours in a stack may tell)."""
    names = leaves[scope]
    roles = {"kernel": _find(leaves, scope, "kernel"), "bias": _find(leaves, scope, "bias")}
    roles.update({diag: names[diag] for diag in PEEPHOLES if diag in names})
    projection_kernel = _find(leaves, f"{scope}/projection", "kernel")
    if projection_kernel:
        roles["projection"] = projection_kernel
    _check_owned(scope, roles, variables, None)
    candidates, misfits = [], []
    for family in _families(scope, roles):
        try:
            candidates.append(_sized(scope, family, roles, variables))
        except UsageError as misfit:
            misfits.append(misfit)
    if not candidates:
        raise misfits[0]
    return candidates[0] if len(candidates) == 1 else tuple(candidates)


def _families(scope: str, roles: dict) -> list[str]:
    """The families a cell's name says, or (a name of the user's) its variables allow."""
    name = scope.rpartition("/")[2]
    if name == "gru_cell":
        raise UsageError(f"cell {scope}: a GRUCell without gates/ and candidate/ variables")
    if name in DEFAULT_NAMES:
        return [DEFAULT_NAMES[name]]
    if set(roles) - {"kernel", "bias"}:
        return ["LSTMCell"]
    return ["BasicRNNCell", "LSTMCell"]


def _sized(scope: str, family: str, roles: dict, variables: dict) -> Cell:
    """The cell of ``family`` at ``scope``, its sizes read from the shapes, or UsageError."""
    if family != "LSTMCell":  # only LSTMCell has peepholes and a projection
        roles = {role: roles[role] for role in ("kernel", "bias")}
    _check_owned(scope, roles, variables, family)
    rows, columns = (_shape(variables, roles["kernel"]) + (0, 0))[:2]
    gates = 4 if family in LSTM_FAMILIES else 1
    units = columns // gates
    projection = _shape(variables, roles["projection"])[-1] if "projection" in roles else 0
    input_size = rows - (projection or units)
    expected = {"bias": (columns,)}
    expected.update({diag: (units,) for diag in PEEPHOLES if diag in roles})
    if projection:
        expected["projection"] = (units, projection)
    peepholes = [diag for diag in PEEPHOLES if diag in roles]
    if (
        columns == 0
        or columns % gates
        or input_size <= 0
        or peepholes not in ([], list(PEEPHOLES))
        or any(_shape(variables, roles[role]) != shape for role, shape in expected.items())
    ):
        form = "kernel (n+u, 4u), bias (4u)" if gates == 4 else "kernel (n+u, u), bias (u)"
        raise _misfit(scope, family, variables, roles, form)
    return Cell(scope, family, units, input_size, projection, bool(peepholes), roles)


def ambiguous(candidates: tuple) -> UsageError:
    """The refusal of a cell whose family neither its name nor its neighbours tell."""
    rnn, lstm = candidates
    kernel = rnn.variables["kernel"]
    return UsageError(
        f"cell {rnn.scope}: {kernel} ({rnn.input_size + rnn.units}, {rnn.units}) fits a "
        f"BasicRNNCell of {rnn.units} units on {rnn.input_size} inputs and an LSTM of "
        f"{lstm.units} on {lstm.input_size}, and neither its name (none of "
        f"{', '.join(DEFAULT_NAMES)}) nor the cells beside it tell them apart"
    )


# --- The Keras side ---------------------------------------------------------------------------


def reorder_lstm_gates(matrix: np.ndarray) -> np.ndarray:
    """TF1's LSTM column blocks i, j, f, o -> Keras' i, f, c(=j), o (the last axis)."""
    i, j, f, o = np.split(matrix, 4, axis=-1)
    return np.concatenate([i, f, j, o], axis=-1)


def lstm_weights(kernel, bias, input_size: int, forget_bias: float):
    """A TF1 LSTM's (kernel, bias) -> Keras ``LSTMCell``'s (kernel, recurrent_kernel, bias):
    rows split at ``input_size``, column blocks reordered, ``forget_bias`` folded into f."""
    folded = np.array(bias, dtype=np.float32)
    units = folded.shape[0] // 4
    folded[2 * units : 3 * units] += np.float32(forget_bias)  # TF1's f block
    return (
        reorder_lstm_gates(kernel[:input_size]),
        reorder_lstm_gates(kernel[input_size:]),
        reorder_lstm_gates(folded),
    )


def gru_weights(gates_kernel, gates_bias, candidate_kernel, candidate_bias, input_size: int):
    """A TF1 ``GRUCell``'s variables -> Keras ``GRUCell(reset_after=False)``'s (kernel,
    recurrent_kernel, bias), columns z, r, h: TF1's gate blocks are r, then z."""
    units = candidate_bias.shape[0]

    def columns(gates, candidate):
        return np.concatenate([gates[..., units:], gates[..., :units], candidate], axis=-1)

    return (
        columns(gates_kernel[:input_size], candidate_kernel[:input_size]),
        columns(gates_kernel[input_size:], candidate_kernel[input_size:]),
        columns(gates_bias, candidate_bias),
    )


@dataclasses.dataclass(frozen=True)
class RunTimeOptions:
    """What a TF1 cell's constructor took and its checkpoint does not store.

    Attributes:
      forget_bias: added to every LSTM's forget gate (TF1's default 1.0; PTB's model used 0).
      cell_clip: ``LSTMCell``'s ``cell_clip``, or None.
      proj_clip: ``LSTMCell``'s ``proj_clip`` (with ``num_proj``), or None.
    """

    forget_bias: float = 1.0
    cell_clip: float | None = None
    proj_clip: float | None = None


def keras_cell(cell: Cell, options: RunTimeOptions) -> keras.layers.Layer:
    """The (unbuilt) Keras or tfrnn cell that computes what ``cell`` computed."""
    if cell.family == "BasicRNNCell":
        return make_cell("simple", cell.units)
    if cell.family == "GRUCell":
        return make_cell("gru", cell.units, reset_after=False)
    clips = cell.family == "LSTMCell" and (options.cell_clip or options.proj_clip)
    if cell.peepholes or cell.projection or clips:
        return make_cell(
            "lstmp",
            cell.units,
            projection_units=cell.projection or None,
            use_peepholes=cell.peepholes,
            cell_clip=options.cell_clip,
            projection_clip=options.proj_clip if cell.projection else None,
            unit_forget_bias=False,
        )
    return make_cell("lstm", cell.units, unit_forget_bias=False)


def keras_weights(cell: Cell, variables: dict, options: RunTimeOptions) -> dict:
    """{attribute of the Keras cell: its value} from the checkpoint's ``variables``."""
    value = {role: variables[name] for role, name in cell.variables.items()}
    if cell.family == "BasicRNNCell":
        kernel = value["kernel"]
        split = cell.input_size
        return {"kernel": kernel[:split], "recurrent_kernel": kernel[split:], "bias": value["bias"]}
    if cell.family == "GRUCell":
        weights = gru_weights(
            value["gates/kernel"],
            value["gates/bias"],
            value["candidate/kernel"],
            value["candidate/bias"],
            cell.input_size,
        )
        return dict(zip(("kernel", "recurrent_kernel", "bias"), weights, strict=True))
    weights = lstm_weights(value["kernel"], value["bias"], cell.input_size, options.forget_bias)
    mapped = dict(zip(("kernel", "recurrent_kernel", "bias"), weights, strict=True))
    mapped.update({PEEPHOLES[diag]: value[diag] for diag in PEEPHOLES if diag in value})
    if cell.projection:
        mapped["projection_kernel"] = value["projection"]
    return mapped


def assign(keras_cell_: keras.layers.Layer, weights: dict) -> None:
    """Sets a built Keras cell's weights from ``weights`` (attribute -> array)."""
    for attribute, value in weights.items():
        variable = getattr(keras_cell_, attribute)
        if tuple(variable.shape) != tuple(np.shape(value)):  # a bug here, not a user error
            raise AssertionError(f"{variable.path}: {variable.shape} != {np.shape(value)}")
        variable.assign(np.asarray(value, dtype=np.float32))
