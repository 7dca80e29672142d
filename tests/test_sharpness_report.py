"""save_report (JSON / PNG / summary table) and the ``ccsam-zoo sharpness`` CLI glue with stand-in hub / data."""

from __future__ import annotations

import argparse
import json
import sys
import types

import pytest
import timm
import torch

import ccsam_zoo  # noqa: F401
from ccsam_zoo.diagnostics import landscape_2d, loss_curves, save_report, worst_case_sharpness
from ccsam_zoo.diagnostics.sharpness import add_arguments, run
from ccsam_zoo.hub import registry as _registry  # noqa: F401  (loaded before fake_backends stubs ccsam_zoo.hub)
from ccsam_zoo.hub import render_model_card, save_pretrained

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
COUNTS = [300, 60, 10]


def _strict_json(path) -> dict:
    def reject(token: str):
        raise ValueError(f"non-standard JSON constant {token}")

    return json.loads(path.read_text(), parse_constant=reject)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = timm.create_model("resnet20_cifar", num_classes=3)
    x, y = torch.randn(9, 3, 8, 8), torch.arange(9) % 3
    return model, x, y


def test_save_report_curves(tmp_path, tiny):
    model, x, y = tiny
    result = loss_curves(model, x, y, COUNTS, num_directions=2, ascent_steps=1, progress=False,
                         relative_norms={"global": [0.0, 0.5, 1.0], "local": [0.0, 0.01, 0.05]})  # fmt: skip
    paths = save_report(result, tmp_path / "out")
    assert set(paths) == {"json", "png", "summary"}
    data = _strict_json(paths["json"])
    assert data["kind"] == "loss_curves"
    assert data["curves"]["local"]["mean"]["overall"] == pytest.approx(result["curves"]["local"]["mean"]["overall"])
    assert set(data["summary"]["loss_increase"]) == {"0.01", "0.05"}
    assert paths["png"].read_bytes()[:8] == PNG_MAGIC
    table = paths["summary"].read_text()
    assert table.count("\n") == 2 + 4 and "| few |" in table and "worst-case" in table
    # non-finite numbers become null so the file stays strict JSON
    result["clean"]["overall"] = float("inf")
    result["curves"]["global"]["std"]["many"][1] = float("nan")
    data = _strict_json(save_report(result, tmp_path / "nan", name="x")["json"])
    assert data["clean"]["overall"] is None and data["curves"]["global"]["std"]["many"][1] is None


def test_summary_warns_when_the_worst_case_explodes(tmp_path, tiny):
    model, x, y = tiny
    kw = dict(params="all", num_directions=1, ascent_steps=2, relative_norms=[0.0, 0.01], progress=False)
    small = loss_curves(model, x, y, COUNTS, rho=1e-4, **kw)
    assert "warning" not in save_report(small, tmp_path / "small")["summary"].read_text()
    huge = loss_curves(model, x, y, COUNTS, rho=0.5, rho_mode="relative", **kw)
    assert max(huge["summary"]["worst_case"]["increase"].values()) > 10  # an all-layer ascent at 50% explodes
    text = save_report(huge, tmp_path / "huge")["summary"].read_text()
    assert "beyond the perturbative range" in text and "--rho" in text


def test_plot_comparison_panels_per_param_set(tmp_path, tiny):
    from ccsam_zoo.diagnostics.plots import plot_comparison

    model, x, y = tiny
    kw = dict(num_directions=1, rho=None, relative_norms={"local": [0.0, 0.01]}, progress=False)
    head = loss_curves(model, x, y, COUNTS, params="head", **kw)
    full = loss_curves(model, x, y, COUNTS, params="all", **kw)
    path = plot_comparison({"a, head": head, "b, head": head, "a, all": full}, tmp_path / "cmp.png")
    assert path.read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(ValueError, match="has no 'global' curve"):
        plot_comparison({"a": head}, tmp_path / "x.png", curve="global")


def test_save_report_landscape_and_worst_case(tmp_path, tiny):
    model, x, y = tiny
    land = landscape_2d(model, x, y, COUNTS, alphas=[-1.0, 0.0, 1.0], betas=[-0.5, 0.5], progress=False)
    paths = save_report(land, tmp_path)
    assert paths["json"].name == "landscape_2d.json" and paths["png"].read_bytes()[:8] == PNG_MAGIC
    data = _strict_json(paths["json"])
    assert len(data["losses"]["few"]) == 2 and len(data["losses"]["few"][0]) == 3
    worst = worst_case_sharpness(model, x, y, COUNTS, steps=1, progress=False)
    assert set(save_report(worst, tmp_path)) == {"json"}
    with pytest.raises(ValueError):
        save_report({"kind": "other"}, tmp_path)


# ------------------------------------------------------------------------------------------- CLI


class _Split:
    def __init__(self, n: int, num_classes: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.images = torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=g)
        self.labels = torch.arange(n) % num_classes

    def __len__(self) -> int:
        return len(self.labels)


class _Normalise(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.float() / 127.5 - 1.0


@pytest.fixture
def fake_backends(monkeypatch, tiny):
    calls: dict = {}

    def from_pretrained(name, revision=None, device=None):
        calls["model"] = name
        return types.SimpleNamespace(model=tiny[0], class_counts=COUNTS, pretrained_cfg={})

    def build_benchmark(name, source=None, imbalance_ratio=None, **kw):
        calls["data"] = (name, source, imbalance_ratio)
        return types.SimpleNamespace(
            train=_Split(30, 3), val=None, test=_Split(24, 3), class_counts=COUNTS, shot_thresholds=(100, 20),
            batch_transform=lambda train: _Normalise(),
        )  # fmt: skip

    monkeypatch.setitem(sys.modules, "ccsam_zoo.hub", types.SimpleNamespace(from_pretrained=from_pretrained))
    monkeypatch.setitem(sys.modules, "ccsam_zoo.data", types.SimpleNamespace(build_benchmark=build_benchmark))
    return calls


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ccsam-zoo sharpness")
    add_arguments(parser)
    return parser.parse_args(argv)


def test_cli_writes_report(tmp_path, fake_backends, capsys):
    argv = "--model m --data cifar10_lt --imbalance-ratio 100 --num-samples 12 --directions 1 --ascent-steps 1"
    argv += " --two-d --two-d-points 3 --no-progress --output"
    args = _parse([*argv.split(), str(tmp_path)])
    assert run(args) == 0
    assert fake_backends == {"model": "m", "data": ("cifar10_lt", None, 100.0)}
    out = capsys.readouterr().out
    assert "| overall |" in out and "| few |" in out
    for name in ("sharpness.json", "sharpness.png", "sharpness_summary.md", "landscape_2d.json", "landscape_2d.png"):
        assert (tmp_path / name).is_file(), name
    data = _strict_json(tmp_path / "sharpness.json")
    assert data["config"]["num_samples"] == 12 and data["config"]["split"] == "test"
    assert data["group_samples"] == {"overall": 12, "many": 4, "medium": 4, "few": 4}  # stratified sample
    assert len(_strict_json(tmp_path / "landscape_2d.json")["alphas"]) == 3


def test_cli_json_and_errors(fake_backends, capsys):
    argv = "--model m --data d --split train --params head --groups few --directions 1 --ascent-steps 0"
    args = _parse([*argv.split(), "--json", "--no-progress", "--num-samples", "0"])
    assert run(args) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["config"]["num_samples"] == 30 and set(data["clean"]) == {"overall", "few"}
    assert data["config"]["param_names"] == ["fc.weight", "fc.bias"]
    assert run(_parse(["--model", "m", "--data", "d", "--groups", "tail", "--no-progress"])) == 2
    assert run(_parse(["--model", "m", "--data", "d", "--split", "val", "--no-progress"])) == 2
    assert run(_parse(["--model", "m", "--data", "d", "--params", "blocks:99", "--no-progress"])) == 2
    assert "error" in capsys.readouterr().err


def test_cli_card_adds_the_report_to_the_model_card(tmp_path, fake_backends, tiny, capsys):
    info = dict(class_names=["a", "b", "c"], class_counts=COUNTS, shot_thresholds=[100, 20], shot_rule="paper",
                stage="stage1", method={"name": "ce"}, recipe={"method": "ce", "data": {"name": "cifar10_lt"}},
                metrics={"top1": 0.5, "many": 0.6, "medium": 0.5, "few": 0.4}, dataset="cifar10_lt IR100",
                data_fingerprint=None, prototypes=None, open_set=None, paper_results=None)  # fmt: skip
    folder = save_pretrained(tiny[0], tmp_path / "run" / "stage1", info=info)
    assert "### Sharpness" not in (folder / "README.md").read_text()
    sys.modules["ccsam_zoo.hub"].render_model_card = render_model_card  # the stand-in hub lacks it
    argv = ["--model", str(folder), "--data", "d", "--num-samples", "12", "--directions", "1", "--ascent-steps", "1"]
    assert run(_parse([*argv, "--no-progress", "--card"])) == 0
    card = (folder / "README.md").read_text()
    table = (folder / "sharpness_summary.md").read_text().strip()
    assert "### Sharpness" in card and table in card
    assert "![loss against the relative noise norm](sharpness.png)" in card
    assert "on 12 images of `d` (test split)" in card
    assert card == render_model_card(folder)  # the card is the regular rendering, not a patched text
    capsys.readouterr()
    assert run(_parse([*argv, "--no-progress", "--card", "--output", str(tmp_path / "elsewhere")])) == 2
    assert run(_parse(["--model", "not-a-folder", "--data", "d", "--no-progress", "--card"])) == 2
    assert "--card" in capsys.readouterr().err
