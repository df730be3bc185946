"""Every notebook in notebooks/ runs end to end at tiny settings (TLTK_NOTEBOOK_TINY=1)."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
KERNEL = "tltk-test-python"
# Kernels at once: most of a tiny run is single-threaded graph tracing, so two kernels
# keep both cores of a small CI machine busy.
PARALLEL = 2


def write_kernel_spec(root: Path) -> None:
    """A kernel spec for this very interpreter, so no `ipykernel install` is needed."""
    spec = root / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "tltk tests", "language": "python"}))


async def execute_all(paths: list[Path]) -> dict[str, tuple[nbformat.NotebookNode, float, str]]:
    """Execute notebooks, PARALLEL at a time: name -> (executed notebook, seconds, error)."""
    gate = asyncio.Semaphore(PARALLEL)

    async def one(path: Path):
        notebook = nbformat.read(path, as_version=4)
        client = NotebookClient(notebook, kernel_name=KERNEL, timeout=180,
                                resources={"metadata": {"path": str(NOTEBOOKS)}})
        async with gate:
            started, error = time.time(), ""
            try:
                await client.async_execute()
            except Exception as exc:  # noqa: BLE001 - reported per notebook below
                error = f"{type(exc).__name__}: {str(exc)[-3000:]}"
            return path.name, (notebook, time.time() - started, error)

    return dict(await asyncio.gather(*(one(p) for p in paths)))


@pytest.mark.slow
def test_every_notebook_runs_end_to_end(tmp_path, monkeypatch):
    paths = sorted(NOTEBOOKS.glob("*.ipynb"))
    assert [p.name for p in paths] == ["01_quickstart.ipynb", "02_flowers_transfer.ipynb",
                                       "03_dogs_recipe.ipynb", "04_tuning.ipynb"]
    write_kernel_spec(tmp_path / "jupyter")
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the tiny runs' throwaway folders
    monkeypatch.setenv("TLTK_NOTEBOOK_TINY", "1")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    results = asyncio.run(execute_all(paths))
    for name, (_, seconds, error) in results.items():
        print(f"{name}: {seconds:.1f} s{' FAILED' if error else ''}")
    failed = {name: error for name, (_, _, error) in results.items() if error}
    assert not failed, "\n\n".join(f"{name}: {error}" for name, error in failed.items())
    for name, (notebook, _, _) in results.items():
        outputs = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs]
        assert any(o.output_type == "execute_result" for o in outputs), f"{name} shows nothing"
