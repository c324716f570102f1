"""The package's layout: no import cycle, training apart from the models, old paths kept."""

import ast
import importlib
from pathlib import Path

import pytest
from astropy.utils.exceptions import AstropyDeprecationWarning

import specutils_deepclean

PACKAGE = Path(specutils_deepclean.__file__).resolve().parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in PACKAGE.rglob("*.py")}


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Package modules that ``name`` imports anywhere in its code (functions included)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # ``from package import name``: the submodule when there is one, else the
            # package itself (its __init__ runs).
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                for alias in node.names
            ]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return out


def test_no_import_cycle():
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    assert _cycles(graph) == []


def test_no_module_over_900_lines():
    """One concept per module (issue 14): no package module grows past 900 lines."""
    long = {
        name: n
        for name, path in _modules().items()
        if (n := len(path.read_text("utf-8").splitlines())) > 900
    }
    assert long == {}


def test_models_hold_no_training():
    """``models/`` keeps networks and inference: every ``fit_*``/``train_*`` is in training/."""
    found = [
        f"{path.name}:{node.name}"
        for path in (PACKAGE / "models").glob("*.py")
        for node in ast.parse(path.read_text("utf-8")).body
        if isinstance(node, ast.FunctionDef) and node.name.startswith(("fit_", "train_"))
    ]
    assert found == []


@pytest.mark.parametrize(
    ("old", "name", "new", "new_name"),
    [
        ("specutils_deepclean.denoiser_training", "train_denoiser", "training.denoiser", None),
        ("specutils_deepclean.denoiser_training", "fit_residual_basis", "training.denoiser", None),
        ("specutils_deepclean.kde", "fit_kde", "training.kde", "train_kde"),
        ("specutils_deepclean.kde", "scott_factor", "training.kde", None),
        ("specutils_deepclean.models.generator", "fit_generator", "training.generator",
         "train_generator"),
        ("specutils_deepclean.models.noiseflow", "fit_noiseflow", "training.noiseflow",
         "train_noiseflow"),
        ("specutils_deepclean.models.cdae", "fit_cdae", "training.cdae", "train_cdae"),
        ("specutils_deepclean.models.karaoke", "velocity_whiten", "training.karaoke", None),
        ("specutils_deepclean.tellurics", "reference_lines", "training.karaoke", None),
        ("specutils_deepclean.benchmarking.survey", "observe_split", "training.telluric_data",
         None),
        ("specutils_deepclean.metrics", "win_rates_by", "benchmarking.grouping", None),
        ("specutils_deepclean.metrics", "grouped", "benchmarking.grouping", None),
        ("specutils_deepclean.spectra", "rebin", "resample", None),
        ("specutils_deepclean.spectra", "bin_edges", "resample", None),
        ("specutils_deepclean.spectra", "rebin_matrix", "resample", None),
        ("specutils_deepclean.spectra", "shift_flux", "doppler", None),
        ("specutils_deepclean.spectra", "doppler_shift", "doppler", None),
    ],
)  # fmt: skip
def test_old_paths_still_work_with_a_deprecation_warning(old, name, new, new_name):
    module = importlib.import_module(old)
    with pytest.warns(AstropyDeprecationWarning, match=f"{old}.{name} moved to"):
        found = getattr(module, name)
    target = importlib.import_module(f"specutils_deepclean.{new}")
    assert found is getattr(target, new_name or name)


def test_kde_numpy_copies_are_deprecated():
    import specutils_deepclean.kde as kde

    with pytest.warns(AstropyDeprecationWarning, match="use KDEPrior.log_prob"):
        assert callable(kde.evaluate)
    with pytest.raises(AttributeError):
        _ = kde.nope


def test_one_array_path_for_the_denoiser():
    """Median-normalise -> map_estimate -> rescale is written once (inference.py):
    ``denoise``, the benchmark and the training code call `denoise_arrays`."""
    root = PACKAGE.parent
    allowed = {
        "specutils_deepclean/inference.py",
        # train_denoiser's last score: spectra already normalised by the truth's median
        "specutils_deepclean/training/denoiser.py:train_denoiser",
    }
    found = []
    for path in [*PACKAGE.rglob("*.py"), *(root / "benchmarks").rglob("*.py")]:
        relative = path.relative_to(root).as_posix()
        tree = ast.parse(path.read_text("utf-8"))
        for function in ast.walk(tree):
            if not isinstance(function, ast.FunctionDef):
                continue
            for node in ast.walk(function):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "map_estimate"
                    and relative not in allowed
                    and f"{relative}:{function.name}" not in allowed
                ):
                    found.append(f"{relative}:{function.name}")
    assert found == []


def test_benchmarks_folder_layout():
    """Every script of ``benchmarks/`` stands in one of its four folders (see its README)."""
    benchmarks = PACKAGE.parent / "benchmarks"
    if not benchmarks.is_dir():  # an installed package without the repository
        pytest.skip("no benchmarks/ folder next to the package")
    folders = {"training", "benchmarks", "studies", "figures", "results", "work"}
    loose = sorted(
        path.name
        for path in benchmarks.iterdir()
        if (path.is_dir() and path.name not in folders | {"__pycache__"})
        or (path.is_file() and path.name != "README.rst")
    )
    assert loose == [], "put these in training/, benchmarks/, studies/ or figures/"
