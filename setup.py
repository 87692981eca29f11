"""Build hook: the shipped task manifests and schemas live at the top of the checkout
(`adapters/`, `schemas/`, as documented) and travel in the wheel as package data under
app/data/, where `app.settings.shipped_dir` finds them in an installed copy."""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

SHIPPED = {
    "adapters": ("*.yaml", "*.yml"),
    "adapters/terminologies": ("*.tsv", "*.csv", "*.md"),
    "schemas": ("*.json",),
}


class BuildWithShippedFiles(build_py):
    def run(self) -> None:
        super().run()
        root = Path(__file__).resolve().parent
        for folder, patterns in SHIPPED.items():
            target = Path(self.build_lib) / "app" / "data" / folder
            target.mkdir(parents=True, exist_ok=True)
            for pattern in patterns:
                for source in sorted((root / folder).glob(pattern)):
                    self.copy_file(str(source), str(target / source.name))


setup(cmdclass={"build_py": BuildWithShippedFiles})
