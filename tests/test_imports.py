"""Importing prunekit has no side effects: no heavy optional libraries loaded, matplotlib's backend untouched."""
import subprocess
import sys

import pytest

HEAVY = ("matplotlib", "sklearn", "scipy", "onnx", "onnxruntime", "safetensors", "skops", "yaml", "tqdm")
LISTING = f"sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})"


def loaded_after(statement: str) -> list:
    """The heavy modules loaded by ``statement`` in a fresh interpreter."""
    out = subprocess.run([sys.executable, "-c", f"{statement}; import sys; print({LISTING})"], capture_output=True,
                         text=True, check=True, timeout=120)
    return eval(out.stdout.strip().splitlines()[-1])  # a printed list of module names


def test_import_prunekit_loads_no_heavy_library():
    # torch itself imports tqdm (torch.hub); anything beyond what torch loads is ours
    torch_loads = set(loaded_after("import torch"))
    ours = sorted(set(loaded_after("import prunekit")) - torch_loads)
    assert ours == []
    assert not {m.split(".")[0] for m in loaded_after("import prunekit")} & {
        "matplotlib", "sklearn", "scipy", "onnx", "onnxruntime", "safetensors", "skops", "yaml"}


@pytest.mark.parametrize("package", ["prunekit.schedule", "prunekit.search", "prunekit.recipe", "prunekit.reduce",
                                     "prunekit.report"])
def test_package_import_does_not_touch_matplotlib(package):
    code = (f"import matplotlib; before = matplotlib.get_backend(); import {package}; "
            "assert matplotlib.get_backend() == before, (before, matplotlib.get_backend())")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    assert not any(m.startswith("matplotlib") for m in loaded_after(f"import {package}"))


def test_report_plot_draws_without_switching_backend():
    code = ("import matplotlib; matplotlib.use('svg'); from prunekit.report.plots import new_figure, figure_to_data_uri; "
            "fig, ax = new_figure(); ax.plot([0, 1]); uri = figure_to_data_uri(fig); "
            "assert uri.startswith('data:image/png;base64,'); assert matplotlib.get_backend() == 'svg'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
