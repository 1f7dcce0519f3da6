"""Packaging hook: the wheel carries what ships with handoff inside the package.

The shipped examples (``workflows/``, ``schemas/``, ``topics/``) and the local broker's files
(``deploy/kafka/``) live at the top of the checkout, where people read and edit them; a wheel
copies them to ``processors/shipped/``, where :mod:`processors.project` finds them when handoff is
installed rather than checked out. Everything else is declared in ``pyproject.toml``.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

SHIPPED = ("workflows", "schemas", "topics", "deploy/kafka")


class BuildWithShippedFiles(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):  # an editable install reads the checkout itself
            return
        for folder in SHIPPED:
            shutil.copytree(folder, Path(self.build_lib) / "processors" / "shipped" / folder, dirs_exist_ok=True)


setup(cmdclass={"build_py": BuildWithShippedFiles})
