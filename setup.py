"""Build hook: copy the sbatch templates of the top-level ``slurm/`` folder into the wheel.

``slurm/`` is their single source; the wheel carries them as package data in
``scalable_hrank/distributed/sbatch/``, where ``scalable_hrank.distributed.slurm`` looks first.
Everything else is configured in pyproject.toml.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildPyWithTemplates(build_py):
    """``build_py`` that also copies ``slurm/*.sbatch`` into the built package."""

    def run(self) -> None:
        super().run()
        target = Path(self.build_lib, "scalable_hrank", "distributed", "sbatch")
        target.mkdir(parents=True, exist_ok=True)
        for template in sorted(Path(__file__).resolve().parent.glob("slurm/*.sbatch")):
            shutil.copy2(template, target / template.name)


setup(cmdclass={"build_py": BuildPyWithTemplates})
