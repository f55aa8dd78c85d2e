"""The notebooks run: their code cells are executed in order, as a fresh kernel would."""

import json
import os

import matplotlib

matplotlib.use("Agg")  # no display in tests; plt.show() is then a no-op

NOTEBOOKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "notebooks")


def code_of(path: str) -> str:
    """The notebook's code cells, without shell (!) and magic (%) lines."""
    with open(path) as f:
        cells = json.load(f)["cells"]
    lines = [
        line
        for cell in cells
        if cell["cell_type"] == "code"
        for line in "".join(cell["source"]).splitlines()
        if not line.lstrip().startswith(("!", "%"))
    ]
    return "\n".join(lines)


def run_notebook(name: str) -> dict:
    namespace = {"__name__": "__notebook__"}
    exec(compile(code_of(os.path.join(NOTEBOOKS, name)), name, "exec"), namespace)
    return namespace


def test_every_notebook_is_tested():
    assert sorted(f for f in os.listdir(NOTEBOOKS) if f.endswith(".ipynb")) == ["quickstart.ipynb"]


def test_quickstart_notebook_runs_and_moves_the_model_to_a_new_resolution():
    ns = run_notebook("quickstart.ipynb")
    assert ns["attention"].shape == (4, 2, 6, 17, 17)  # layers, batch, heads, 1 + 4x4 tokens
    assert ns["params"]["Transformer"]["posembed_input"]["pos_embedding"].shape == (1, 65, 384)
    assert ns["report"].keys("resized") == ["Transformer/posembed_input/pos_embedding"]
