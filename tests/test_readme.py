"""README.md as a user reads it: every ```python block runs as written (offline; a block whose
first line is `# not run: REASON` is skipped, and such marks stay rare), and every command of
the ```bash blocks names configs, modules, scripts and files that exist."""

import importlib.util
import os
import re
import shlex
import tomllib

import pytest

from tests.cli import ROOT
from vit_jax.train.command_line import packaged_configs

with open(os.path.join(ROOT, "README.md")) as _f:
    README = _f.read()
NOT_RUN = "# not run:"


def blocks(language: str) -> list[str]:
    """The code of every ```LANGUAGE block of the README, in order."""
    return re.findall(rf"^```{language}\n(.*?)^```", README, re.DOTALL | re.MULTILINE)


def test_the_readme_has_python_blocks_and_few_are_not_run():
    code = blocks("python")
    not_run = [c for c in code if c.startswith(NOT_RUN)]
    assert code and len(not_run) <= len(code) // 4, "most README snippets must run"


@pytest.mark.parametrize(
    "code",
    [c for c in blocks("python") if not c.startswith(NOT_RUN)],
    ids=lambda c: c.splitlines()[0][:40],
)
def test_every_python_block_runs_as_written(code):
    exec(compile(code, "README.md", "exec"), {"__name__": "__readme__"})


def test_every_command_names_what_exists():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        scripts = tomllib.load(f)["project"]["scripts"]
    commands = [
        shlex.split(line, comments=True)
        for code in blocks("bash")
        for line in code.replace("\\\n", " ").splitlines()
    ]
    checked = 0
    for words in commands:
        for i, word in enumerate(words):
            if word.startswith("vit-"):
                assert word in scripts, word
            elif word == "-m" and words[i - 1] == "python":
                assert importlib.util.find_spec(words[i + 1]) is not None, words[i + 1]
            elif word.startswith("--config="):
                target = word.removeprefix("--config=").split(":")[0]
                assert target in packaged_configs() or os.path.isfile(os.path.join(ROOT, target))
            elif word.startswith(("launch/", "configs/", ".ci/")):
                assert os.path.isfile(os.path.join(ROOT, word)), word
            else:
                continue
            checked += 1
    assert checked >= 20  # the commands were found
