"""The notebooks: executed fresh as Jupyter or Colab would (nbclient, a new kernel), offline and
with fewer training steps; committed with their outputs, so that the repository shows them."""

import json
import os
import re
import tomllib

import nbformat
import pytest
from nbclient import NotebookClient

from tests.cli import ROOT

NOTEBOOKS = os.path.join(ROOT, "notebooks")
QUICKSTART = os.path.join(NOTEBOOKS, "quickstart.ipynb")
STEPS = 20  # under test; the notebook trains 800 (about a minute on 2 CPU cores)

# Appended to the quickstart under test: what its cells computed, as JSON on the last line.
FACTS = """
import json

_h, _w = model.grid
_maps = viz.similarity_maps(tables["learned (trained)"], model.grid).reshape(_h * _w, -1)
_rows = viz.rollout(attention).sum(-1)
_pos_embedding = params_32["Transformer"]["posembed_input"]["pos_embedding"]
print(json.dumps({
    "workdir": os.path.abspath(workdir),
    "step": summary["step"],
    "run_accuracy": summary["accuracy"],
    "shown_accuracy": float(accuracy),
    "predictions_are_the_argmax": bool((predictions == np.asarray(logits).argmax(-1)).all()),
    "attention_shape": list(attention.shape),
    "rollout_row_sums": [float(_rows.min()), float(_rows.max())],
    "learned_peaks_at_its_own_patch": bool((_maps.argmax(-1) == np.arange(_h * _w)).all()),
    "pos_embedding_32": list(_pos_embedding.shape),
    "resized": report.keys("resized"),
    "accuracy_32": float(accuracy_32),
}))
"""


def repository_url() -> str:
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)["project"]["urls"]["Repository"]


def colab_url(url: str, notebook: str) -> str:
    return (
        f"https://colab.research.google.com/github/{url.removeprefix('https://github.com/')}"
        f"/blob/main/notebooks/{notebook}"
    )


def read(path: str) -> nbformat.NotebookNode:
    return nbformat.read(path, as_version=4)


def test_every_notebook_is_tested():
    assert sorted(f for f in os.listdir(NOTEBOOKS) if f.endswith(".ipynb")) == ["quickstart.ipynb"]


def test_the_repository_url_is_pyprojects_in_the_notebook_and_the_readme():
    url = repository_url()
    assert re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", url)
    notebook = read(QUICKSTART)
    setup = notebook.cells[1].source  # the first code cell: the Colab install
    assert f'REPOSITORY = "{url}"' in setup and '"google.colab" in sys.modules' in setup
    assert f"({colab_url(url, 'quickstart.ipynb')})" in notebook.cells[0].source  # its badge
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    assert f"({colab_url(url, 'quickstart.ipynb')})" in readme


def test_the_quickstart_is_committed_with_its_outputs():
    notebook = read(QUICKSTART)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert [cell.execution_count for cell in code] == list(range(1, len(code) + 1))
    outputs = [output for cell in code for output in cell.outputs]
    assert not [output for output in outputs if output.output_type == "error"]
    pictures = [output for output in outputs if "image/png" in output.get("data", {})]
    assert len(pictures) >= 7
    text = "".join(output.get("text", "") for output in outputs)
    assert "done: step 800," in text and "resized Transformer/posembed_input" in text


@pytest.mark.slow
def test_quickstart_trains_looks_inside_and_moves_to_twice_the_resolution(digits_dir, tmp_path):
    notebook = read(QUICKSTART)
    notebook.cells.append(nbformat.v4.new_code_cell(FACTS))
    env = {
        **os.environ,
        "PYTHONPATH": ROOT,
        "JAX_NUM_CPU_DEVICES": "1",  # as on a laptop or Colab (the tests simulate 8)
        "TFDS_DATA_DIR": digits_dir,
        "VIT_JAX_QUICKSTART_STEPS": str(STEPS),
        "VIT_JAX_QUICKSTART_WORKDIR": str(tmp_path / "run"),
    }
    client = NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": NOTEBOOKS}}
    )
    client.execute(env=env)  # raises CellExecutionError, with the cell, if any cell fails

    facts = json.loads(notebook.cells[-1].outputs[-1].text.splitlines()[-1])
    assert facts["workdir"] == str(tmp_path / "run")  # not the quick-start run of the checkout
    assert facts["step"] == STEPS
    assert facts["shown_accuracy"] == facts["run_accuracy"]
    assert facts["predictions_are_the_argmax"]
    assert facts["attention_shape"] == [4, 4, 4, 17, 17]  # layers, digits, heads, 1 + 4x4
    assert facts["rollout_row_sums"] == pytest.approx([1.0, 1.0], abs=1e-5)
    assert facts["learned_peaks_at_its_own_patch"]
    assert facts["pos_embedding_32"] == [1, 65, 96]  # 1 + 8x8 rows
    assert facts["resized"] == ["Transformer/posembed_input/pos_embedding"]
    assert 0.0 <= facts["accuracy_32"] <= 1.0
    # The training run drew its plots into the workdir at its end.
    assert sorted(os.listdir(tmp_path / "run" / "plots")) == ["curves.png", "posemb.png"]
    pictures = [
        output
        for cell in notebook.cells
        for output in cell.get("outputs", [])
        if "image/png" in output.get("data", {})
    ]
    assert len(pictures) >= 7
