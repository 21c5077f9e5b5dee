"""The example notebooks, executed as notebooks (jupytext → nbclient), each showing a figure.

Long examples take a ``parameters`` cell (papermill's convention); CI runs them with the smaller
values of ``QUICK``, injected as a cell right after it. Needs the ``notebooks`` extra
(``pip install -e '.[notebooks]'``); skipped without it.
"""

from __future__ import annotations

import os
import py_compile
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).parents[1] / "examples").glob("[0-9][0-9]_*.py"))
QUICK = {  # parameter overrides that keep each notebook within seconds on a CPU
    "02_codebook_fsm.py": {"PRETRAIN_STEPS": 40, "FINETUNE_STEPS": 20, "PROMPTS_PER_STATE": 1, "N_EVAL": 32},
    "04_main_job.py": {"SAE_STEPS": 30, "BATCH_TOKENS": 256, "D_DICT": 256, "CARD_TOKENS": 2048},
}
FIGURE_MIMES = ("application/vnd.plotly.v1+json", "image/png", "image/svg+xml")


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_compiles(path, tmp_path):
    py_compile.compile(str(path), cfile=str(tmp_path / "x.pyc"), doraise=True)


def run_notebook(path: Path, overrides: dict, cwd: Path):
    jupytext = pytest.importorskip("jupytext")
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")

    nb = jupytext.read(path)
    if overrides:
        at = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
        assert len(at) == 1, f"{path.name} needs exactly one cell tagged 'parameters' to be shortened"
        names = set(overrides)
        assert all(f"{k} =" in nb.cells[at[0]].source for k in names), f"unknown parameters in {names}"
        nb.cells.insert(at[0] + 1, nbformat.v4.new_code_cell("\n".join(f"{k} = {v!r}" for k, v in overrides.items())))
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(cwd)}}).execute()
    return nb


def figure_outputs(nb) -> list[dict]:
    outs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    return [o for o in outs if o.get("output_type") in ("display_data", "execute_result")
            and any(m in o.get("data", {}) for m in FIGURE_MIMES)]


@pytest.mark.slow
@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_runs_as_a_notebook_and_shows_figures(path, tmp_path):
    nb = run_notebook(path, QUICK.get(path.name, {}), tmp_path)
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert errors == []
    assert len(figure_outputs(nb)) >= 1, f"{path.name} shows no figure"
