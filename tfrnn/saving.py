"""A tfrnn model loads with Keras alone: ``keras.saving.load_model("runs/mnist/model.keras")``.

A saved model names each of tfrnn's layers by its registered name (``tfrnn>RNN``) and its
module (``tfrnn.layers.cells``). Keras imports a class's module only for its own packages
(``keras``, ``keras_hub``…); any other class must already be in its registry, where the
class's module puts it when it is imported (``register_keras_serializable``). So installing
tfrnn also puts ``tfrnn-keras.pth`` in site-packages (``setup.py``), and Python runs it at
start-up: it calls :func:`watch_for_keras`, which imports nothing and waits for Keras to be
imported; then a :class:`Placeholder` goes into Keras' registry for each name of
:data:`KERAS_CLASSES`. A placeholder imports its class's module the first time a model file
needs it, and the module's registration replaces it with the class itself. A process that
never imports Keras pays a check of one module name.
"""

from __future__ import annotations

import importlib
import sys

# Every class tfrnn registers with Keras (package "tfrnn"), by its registered name: the module
# that defines it (tests/test_saving.py checks the list against the registry).
KERAS_CLASSES = {
    "tfrnn>ConcatRNNCell": "tfrnn.layers.cells",
    "tfrnn>LSTMPCell": "tfrnn.layers.lstmp_cell",
    "tfrnn>OneHot": "tfrnn.tasks.echo.model",
    "tfrnn>RNN": "tfrnn.layers.cells",
}


class Placeholder:
    """Stands in Keras' registry for a tfrnn class whose module is not imported yet.

    Keras rebuilds a saved object with ``cls.from_config(config)``; a placeholder's imports
    the class and hands the config on.
    """

    def __init__(self, registered_name: str, module_name: str):
        self.registered_name, self.module_name = registered_name, module_name

    def load(self) -> type:
        """The class itself, its module imported (which registers it in place of this)."""
        module = importlib.import_module(self.module_name)
        return getattr(module, self.registered_name.partition(">")[2])

    def from_config(self, config: dict):
        return self.load().from_config(config)

    def __repr__(self):
        return f"Placeholder({self.registered_name!r} from {self.module_name})"


def register_placeholders(keras_module) -> None:
    """Puts a :class:`Placeholder` in Keras' registry for each tfrnn class not yet in it."""
    registry = keras_module.saving.get_custom_objects()
    for registered_name, module_name in KERAS_CLASSES.items():
        registry.setdefault(registered_name, Placeholder(registered_name, module_name))


def watch_for_keras() -> None:
    """:func:`register_placeholders` as soon as Keras is imported, or now if it is."""
    if "keras" in sys.modules:
        register_placeholders(sys.modules["keras"])
    elif not any(isinstance(finder, _KerasWatcher) for finder in sys.meta_path):
        sys.meta_path.insert(0, _KerasWatcher())


class _KerasWatcher:
    """An import finder that finds nothing itself: when ``keras`` is first imported, it
    leaves the path and has the real loader register the placeholders once Keras' own
    ``__init__`` has run. The loader stays Keras' own (its resources, its ``__loader__``)."""

    def find_spec(self, name, path=None, target=None):
        if name != "keras":
            return None
        sys.meta_path.remove(self)
        from importlib import util

        spec = util.find_spec(name)
        if spec is not None and hasattr(spec.loader, "exec_module"):
            run_keras_init = spec.loader.exec_module

            def run_and_register(module):
                run_keras_init(module)
                register_placeholders(module)

            spec.loader.exec_module = run_and_register
        return spec
