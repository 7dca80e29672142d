"""The installed package works without the repository: recipes as package data, entry points, cheap import.

The slow test builds the wheel, installs it into a fresh virtual environment outside the repository (no
download: ``--no-deps --no-index``; the dependencies come from this interpreter's site-packages through
a ``.pth`` file) and lists, loads and starts the recipes there.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ccsam_zoo.cli import main as ccsam_zoo_main
from tests.conftest import REPO

SHIPPED = {
    "cifar10_lt", "cifar100_lt", "imagenet_lt", "places_lt", "inat2018", "cifar10_lt_cpu", "quickstart",
    "tinyimagenet_lt", "tinyimagenet_lt_cpu",
}  # fmt: skip


def _python(code_or_args: str | list[str], cwd: Path = REPO, **env: str) -> subprocess.CompletedProcess:
    args = ["-c", code_or_args] if isinstance(code_or_args, str) else code_or_args
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **env}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=300)


def test_import_is_cheap_and_the_documented_subpackages_are_reachable():
    """`ccsam-zoo --version / --help / list` never import torch (they answer in about a second);
    `import ccsam_zoo` reaches the subpackages (the timm registration is checked by the slow wheel test)."""
    code = """
import contextlib, io, sys
import ccsam_zoo
assert "torch" not in sys.modules, "import ccsam_zoo imported torch"
from ccsam_zoo.cli import main
with contextlib.redirect_stdout(io.StringIO()):
    assert main(["--version"]) == 0 and main(["--help"]) == 0 and main(["list"]) == 0
assert "torch" not in sys.modules, "ccsam-zoo --version / --help / list imported torch"
print(ccsam_zoo.data.long_tailed_counts(10, 5000, 100), ccsam_zoo.data.shot_groups([500, 50, 5]))
print(sorted(set(ccsam_zoo.SUBPACKAGES) - set(dir(ccsam_zoo))), "torch" in sys.modules)
"""
    out = _python(code)
    assert out.returncode == 0, out.stderr[-2000:]
    counts, missing = out.stdout.split("\n")[:2]
    assert counts == "[5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50] ['many', 'medium', 'few']"
    assert missing == "[] False"


def test_recipes_are_package_data_and_the_env_override_still_works(tmp_path):
    recipes = REPO / "ccsam_zoo" / "recipes"
    assert {p.stem for p in recipes.glob("*.yaml")} == SHIPPED and not list((REPO / "recipes").glob("*.yaml"))
    pyproject = (REPO / "pyproject.toml").read_text()
    assert '"recipes/*.yaml"' in pyproject and 'ccsam-zoo = "ccsam_zoo.cli:main"' in pyproject
    (tmp_path / "mine.yaml").write_text("method: ce\nstage1: {epochs: 3}\n")
    out = _python(["-m", "ccsam_zoo.train", "--help"], CCSAM_RECIPES=str(tmp_path))
    assert out.returncode == 0 and "recipes: mine\n" in out.stdout and "quickstart" not in out.stdout


def test_train_entry_points(capsys):
    out = _python(["-m", "ccsam_zoo.train", "--help"])
    assert out.returncode == 0 and "usage: python -m ccsam_zoo.train" in out.stdout
    assert all(name in out.stdout for name in SHIPPED)
    assert ccsam_zoo_main(["train", "--help"]) == 0
    assert "usage: ccsam-zoo train" in capsys.readouterr().out
    assert ccsam_zoo_main(["--help"]) == 0
    assert "train     train a recipe in two stages" in capsys.readouterr().out
    assert ccsam_zoo_main(["train", "--recipe", "quickstart", "--set", "stage1.epochs=three"]) == 1
    assert "stage1.epochs='three' is not valid" in capsys.readouterr().err


@pytest.mark.slow
def test_wheel_installed_outside_the_repo_lists_loads_and_starts_recipes(tmp_path):
    import torch

    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=REPO, capture_output=True
    ).stdout.decode().split("\0")
    src = tmp_path / "src"
    for name in filter(None, files):
        if (REPO / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            (src / name).write_bytes((REPO / name).read_bytes())
    pip = [sys.executable, "-m", "pip"]
    build = subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", str(tmp_path / "dist"), src],
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    wheel = next((tmp_path / "dist").glob("ccsam_zoo-*.whl"))
    assert wheel.stat().st_size < 20 * 2**20, wheel.stat().st_size  # the shipped models keep the wheel small

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    install = subprocess.run(
        [*pip, "--python", str(python), "install", "--no-deps", "--no-index", "-q", str(wheel)],
        capture_output=True,
        text=True,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    site = Path(subprocess.run([str(python), "-c", "import site; print(site.getsitepackages()[0])"],
                               capture_output=True, text=True, check=True).stdout.strip())  # fmt: skip
    (site / "zz_dependencies.pth").write_text(str(Path(torch.__file__).resolve().parents[1]) + "\n")

    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"OMP_NUM_THREADS": "1"}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(list(args), cwd=work, env=env, capture_output=True, text=True, timeout=600)

    code = f"""
import pathlib, ccsam_zoo
from ccsam_zoo.training import list_recipes, load_recipe
here = pathlib.Path(ccsam_zoo.__file__).resolve()
assert here.is_relative_to(pathlib.Path({str(site)!r}).resolve()), here
names = list_recipes()
assert set(names) >= set({sorted(SHIPPED)!r}), names
print(sorted(names), [load_recipe(n)["name"] for n in names] == names)
bench = ccsam_zoo.data.build_benchmark("embedded")
print(bench.num_classes, len(bench.train))
shipped = {{r.alias for r in ccsam_zoo.list_pretrained() if r.status == "shipped"}}
expected = {{"ccsam-cifar10-lt", "ccsam-cifar10-lt:stage1", "ce-crt-cifar10-lt", "mixup-crt-cifar10-lt"}}
assert expected <= shipped, shipped
assert ccsam_zoo.from_pretrained("ccsam-cifar10-lt:stage1").meta["path"].startswith(str(here.parent)), "not shipped"
import timm  # after `import ccsam_zoo`: the CIFAR ResNets register when timm loads
print(type(timm.create_model("resnet20_cifar", num_classes=3)).__name__)
"""
    out = run(str(python), "-c", code)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.splitlines()[-3:] == [f"{sorted(SHIPPED)} True", "10 1236", "CifarResNet"]
    version = run(str(venv / "bin" / "ccsam-zoo"), "--version")
    assert version.returncode == 0 and version.stdout.startswith("ccsam_zoo ")
    helped = run(str(venv / "bin" / "ccsam-zoo"), "train", "--help")
    assert helped.returncode == 0 and "places_lt" in helped.stdout
    started = run(str(python), "-m", "ccsam_zoo.train", "--recipe", "places_lt", "--output-dir", "runs/p")
    assert started.returncode == 1 and "--set data.source=IMAGE_ROOT:SPLIT_DIR" in started.stderr
    assert not (work / "runs").exists()
