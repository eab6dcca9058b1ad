"""The one part of tfrnn's build that pyproject.toml cannot declare: ``tfrnn-keras.pth``.

Python runs the ``import`` lines of the ``.pth`` files in site-packages at start-up. This one
lets a program that imports nothing but Keras load a tfrnn model (:mod:`tfrnn.saving`: it
waits for Keras to be imported and registers placeholders for tfrnn's classes, importing
neither Keras nor TensorFlow itself). The file goes to the root of the wheel, which is
site-packages, for ``pip install .`` and ``pip install -e .`` alike.
"""

import os

from setuptools import setup
from setuptools.command.build_py import build_py

PTH_NAME = "tfrnn-keras.pth"
PTH_LINE = "import tfrnn.saving; tfrnn.saving.watch_for_keras()\n"


class BuildPyWithPth(build_py):
    """``build_py`` that also writes :data:`PTH_NAME` beside the packages."""

    def run(self):
        super().run()
        with open(self._pth_path(), "w") as handle:
            handle.write(PTH_LINE)

    def get_outputs(self, include_bytecode=True):
        return [*super().get_outputs(include_bytecode), self._pth_path()]

    def _pth_path(self) -> str:
        # An editable wheel holds the packages as a finder and takes files written for it
        # from the install folder (setuptools' editable_wheel); a regular one, build_lib.
        if getattr(self, "editable_mode", False):
            folder = self.get_finalized_command("install").install_lib
        else:
            folder = self.build_lib
        os.makedirs(folder, exist_ok=True)
        return os.path.join(folder, PTH_NAME)


setup(cmdclass={"build_py": BuildPyWithPth})
