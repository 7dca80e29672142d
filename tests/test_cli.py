"""The ``ccsam-zoo`` command: exit codes, JSON output, one-line errors, subcommand wiring."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import ccsam_zoo  # noqa: F401
from ccsam_zoo.cli import main
from ccsam_zoo.data.sources import EMBEDDED_DIR

CLASS_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
COUNTS = [500, 299, 179, 107, 64, 38, 23, 13, 8, 5]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run folder whose stage2/ is a saved checkpoint (random resnet20_cifar with prototypes + calibration)."""
    from ccsam_zoo.hub import save_pretrained
    from ccsam_zoo.inference import Classifier

    torch.manual_seed(0)
    model = timm.create_model("resnet20_cifar", num_classes=10).eval()
    with torch.no_grad():
        model.fc.weight.mul_(0.05)
    clf = Classifier(model, class_names=CLASS_NAMES, class_counts=COUNTS, pretrained_cfg=dict(model.pretrained_cfg))
    g = torch.Generator().manual_seed(0)
    imgs = torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8, generator=g)
    clf.fit_prototypes((imgs, torch.arange(40) % 10))
    clf.calibrate((imgs, torch.arange(40) % 10), score="cosine", tpr=0.95)
    run = tmp_path_factory.mktemp("run")
    info = dict(
        class_names=CLASS_NAMES,
        class_counts=COUNTS,
        shot_thresholds=[100, 20],
        shot_rule="paper",
        stage="stage2",
        method={"name": "ce"},
        recipe={"method": "ce", "data": {"name": "cifar10_lt", "imbalance_ratio": 100}},
        metrics={},
        dataset="cifar10_lt",
        prototypes=clf.prototypes,
        open_set=clf.open_set,
    )
    save_pretrained(model, run / "stage2", info=info)
    return run


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(3):
        p = d / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    (d / "broken.jpg").write_text("not an image")
    return paths, str(d / "broken.jpg")


def _run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _one_line_error(err: str, *needles: str) -> None:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], (n, lines[0])


def test_predict_json_matches_classifier(capsys, run_dir, images):
    from ccsam_zoo.hub import from_pretrained

    paths, _ = images
    rc, out, err = _run(capsys, "predict", "--model", run_dir / "stage2", *paths, "--top-k", "3", "--json")
    assert rc == 0, err
    res = json.loads(out)
    assert [r["source"] for r in res] == paths
    clf = from_pretrained(run_dir / "stage2")
    want = clf.predict(paths, top_k=3)
    for r, w in zip(res, want):
        assert r["label"] == w["label"] and len(r["top_k"]) == 3
        assert [p for _, p in r["top_k"]] == pytest.approx([p for _, p in w["top_k"]], abs=1e-6)


def test_predict_table_and_open_set(capsys, run_dir, images):
    paths, _ = images
    rc, out, _ = _run(capsys, "predict", "--model", run_dir / "stage2", paths[0], "--open-set")
    assert rc == 0
    assert "img0.png" in out and "known" in out and "open-set score: cosine (checkpoint default), threshold" in out
    assert "(calibrated at 95% TPR)" in out
    rc, out, _ = _run(capsys, "predict", "--model", run_dir / "stage2", paths[0], "--open-set", "--json",
                      "--score", "msp", "--threshold", "1.5")  # fmt: skip
    r = json.loads(out)[0]
    assert rc == 0 and r["label"] == "unknown" and r["known"] is False and r["score_type"] == "msp"
    assert r["threshold"] == 1.5 and r["class_index"] is None and r["probability"] is None
    assert r["nearest_class"] == r["top_k"][0][0] and r["nearest_probability"] == pytest.approx(r["top_k"][0][1])
    rc, out, _ = _run(capsys, "predict", "--model", run_dir / "stage2", paths[0], "--open-set",
                      "--score", "msp", "--threshold", "1.5")  # fmt: skip
    assert rc == 0 and f"unknown (nearest: {r['nearest_class']}, {r['nearest_probability']:.2f})" in out



def test_predict_open_set_without_calibration_names_threshold(capsys, run_dir, images, tmp_path):
    """A checkpoint without a calibrated threshold (e.g. trained without a validation split)."""
    folder = tmp_path / "uncalibrated"
    shutil.copytree(run_dir / "stage2", folder)
    extras = json.loads((folder / "ccsam_zoo.json").read_text())
    (folder / "ccsam_zoo.json").write_text(json.dumps({**extras, "open_set": None}))
    rc, _, err = _run(capsys, "predict", "--model", folder, images[0][0], "--open-set")
    _one_line_error(err, "no open-set threshold for score 'cosine' (this model has no calibrated threshold)",
                    "--threshold T, a cosine score")  # fmt: skip
    assert rc == 1 and "OLTR" not in err
    rc, out, _ = _run(capsys, "predict", "--model", folder, images[0][0], "--open-set", "--threshold", "0.5")
    assert rc == 0 and "open-set score: cosine (fallback (the checkpoint stores no default score;" in out
    assert "threshold 0.5 (given)" in out


def test_predict_bad_inputs(capsys, run_dir, images):
    paths, broken = images
    rc, out, err = _run(capsys, "predict", "--model", run_dir / "stage2", paths[0], broken)
    assert rc == 1 and out == ""
    _one_line_error(err, "broken.jpg")
    rc, out, err = _run(capsys, "predict", "--model", run_dir / "stage2", paths[0], broken, "--skip-bad", "--json")
    res = json.loads(out)
    assert rc == 0 and "error" in res[1] and "broken.jpg" in err
    rc, _, err = _run(capsys, "predict", "--model", run_dir / "stage2", broken, "--skip-bad")
    assert rc == 1  # nothing could be classified
    rc, _, err = _run(capsys, "predict", "--model", run_dir / "nope", paths[0])
    assert rc == 1
    _one_line_error(err, "nope")


@pytest.mark.parametrize(
    "argv",
    [
        ["predict", "x.png"],  # --model missing
        ["predict", "--model", "m", "x.png", "--top-k", "0"],
        ["predict", "--model", "m", "x.png", "--score", "entropy"],
        ["evaluate", "--model", "m"],  # --data missing
        ["frobnicate"],
        [],
    ],
)
def test_usage_errors_exit_2(capsys, argv):
    rc, _, err = _run(capsys, *argv)
    assert rc == 2 and "usage:" in err


def test_evaluate_unknown_data_is_usage_error(capsys, run_dir):
    rc, _, err = _run(capsys, "evaluate", "--model", run_dir / "stage2", "--data", "no_such_benchmark")
    assert rc == 2 and "no_such_benchmark" in err and "Traceback" not in err


def _small_parquet_benchmark(folder, ood_parquet=None):
    """train = the embedded CIFAR-10-LT train split, test = 3 images per class; open = 30 OOD images."""
    import pyarrow.parquet as pq

    folder.mkdir()
    shutil.copy(EMBEDDED_DIR / "train.parquet", folder / "train.parquet")
    test = pq.read_table(EMBEDDED_DIR / "test.parquet")
    pq.write_table(test.take([c * 100 + i for c in range(10) for i in range(3)]), folder / "test.parquet")
    if ood_parquet is None:
        return None
    ood = pq.read_table(ood_parquet).slice(0, 30)
    pq.write_table(ood, folder.parent / "ood.parquet")
    return folder.parent / "ood.parquet"


def test_evaluate_json_and_output(capsys, run_dir, tmp_path, ood_dir, monkeypatch):
    from ccsam_zoo.data import build_benchmark
    from ccsam_zoo.hub import from_pretrained
    from ccsam_zoo.inference import evaluate_model

    monkeypatch.chdir(tmp_path)  # runs without --output write the default ./open_set_histograms.png: not in the repo
    ood = _small_parquet_benchmark(tmp_path / "bench", ood_dir / "test.parquet")
    out_file = tmp_path / "eval" / "report.json"
    argv = ["evaluate", "--model", run_dir / "stage2", "--data", tmp_path / "bench", "--open-data", ood]
    rc, out, err = _run(capsys, *argv, "--json", "--output", out_file)
    assert rc == 0, err
    rep = json.loads(out)
    assert rep == json.loads(out_file.read_text())
    assert rep["data"] == "parquet" and rep["num_samples"] == 30 and rep["num_open"] == 30
    assert set(rep) >= {"top1", "many", "medium", "few", "per_class", "open_set", "class_names", "shot_rule"}
    assert set(rep["open_set"]) == {"msp", "max_logit", "energy", "cosine", "euclidean", "reachability", "hybrid"}
    assert rep["open_set"]["cosine"]["threshold_source"] == "checkpoint" and rep["default_score"] == "cosine"
    assert rep["default_score_source"] == "checkpoint default"
    groups = rep["open_set"]["cosine"]["rejected_known_by_group"]
    assert set(groups) == {"many", "medium", "few"} and all(0.0 <= v <= 100.0 for v in groups.values())
    png = out_file.with_suffix(".png")
    assert rep["open_set_plot"] == str(png) and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size
    # progress on stderr (tqdm bars of the known and the open images), the JSON alone on stdout
    assert "known images" in err and "open-set images" in err and f"score histograms: {png}" in err, err
    # the same numbers as the library call, in % (the library returns fractions)
    bench = build_benchmark("parquet", str(tmp_path / "bench"), open_source=str(ood), image_size=32)
    direct = evaluate_model(from_pretrained(run_dir / "stage2"), bench.test, bench.open)
    assert rep["top1"] == pytest.approx(100 * direct["top1"])
    assert rep["per_class"] == pytest.approx([100 * v for v in direct["per_class"]])
    for s, m in direct["open_set"].items():
        for k in ("auroc", "fpr95", "f_measure", "rejected_known", "rejected_open"):
            assert rep["open_set"][s][k] == pytest.approx(100 * m[k]), (s, k)
        assert rep["open_set"][s]["threshold"] == pytest.approx(m["threshold"])  # thresholds keep their units
    assert rep["open_set"]["msp"]["auroc"] > 1.0 or direct["open_set"]["msp"]["auroc"] <= 0.01
    rc, out, _ = _run(capsys, *argv, "--scores", "msp,cosine")
    assert rc == 0 and "top-1 %" in out and "AUROC" in out and "per class" in out and "airplane" in out
    assert "many rej. %" in out and "open rej. %" in out and "cosine (default)" in out
    assert "default: cosine (checkpoint default)" in out
    rc, _, err = _run(capsys, *argv, "--scores", "msp,entropy")
    assert rc == 2 and "entropy" in err
    rc, _, err = _run(capsys, *argv, "--scores", "mahalanobis")  # the checkpoint has no open_set_stats
    assert rc == 1 and "mahalanobis" in err and "fit_open_set" in err


def test_evaluate_default_plot_path_quiet_and_none(capsys, run_dir, tmp_path, ood_dir, monkeypatch):
    """Without --output / --plot the histograms go to ./open_set_histograms.png (printed); --plot none: no PNG."""
    ood = _small_parquet_benchmark(tmp_path / "bench", ood_dir / "test.parquet")
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    argv = ["evaluate", "--model", run_dir / "stage2", "--data", tmp_path / "bench", "--open-data", ood]
    rc, out, err = _run(capsys, *argv, "--scores", "msp,cosine")
    assert rc == 0, err
    assert (work / "open_set_histograms.png").read_bytes()[:4] == b"\x89PNG"
    assert "score histograms: open_set_histograms.png" in out and "known images" in err
    rc, out, err = _run(capsys, *argv, "--scores", "msp", "--plot", "none", "--quiet", "--json")
    assert rc == 0 and err == "" and json.loads(out)["open_set_plot"] is None
    rc, out, err = _run(capsys, *argv, "--scores", "msp", "--plot", tmp_path)  # a folder: the PNG goes into it
    assert rc == 0 and (tmp_path / "open_set_histograms.png").read_bytes()[:4] == b"\x89PNG"
    assert f"score histograms: {tmp_path / 'open_set_histograms.png'}" in out


def test_evaluate_user_errors_name_the_flag(capsys, run_dir, tmp_path, monkeypatch):
    import types

    import ccsam_zoo.data

    (tmp_path / "bench").mkdir()
    argv = ["evaluate", "--model", run_dir / "stage2", "--data", tmp_path / "bench"]
    (tmp_path / "afile").write_text("x")
    rc, out, err = _run(capsys, *argv, "--output", tmp_path / "afile" / "report.json")  # refused before any work
    assert rc == 2 and out == "" and "cannot write --output" in err and "afile is not a folder" in err
    rc, _, err = _run(capsys, *argv, "--output", tmp_path)
    assert rc == 2 and "is a folder; give a file name" in err
    stub = types.SimpleNamespace(val=None, num_classes=10, class_names=[], class_counts=None)
    monkeypatch.setattr(ccsam_zoo.data, "build_benchmark", lambda *a, **k: stub)
    rc, out, err = _run(capsys, *argv, "--split", "val")
    assert rc == 2 and out == "" and "has no val split: add --val-per-class N" in err and "Traceback" not in err


def test_sharpness_bad_device_before_any_work(capsys, monkeypatch):
    from ccsam_zoo.diagnostics import sharpness

    monkeypatch.setattr(sharpness, "run", lambda args: pytest.fail("sharpness ran with a bad --device"))
    rc, _, err = _run(capsys, "sharpness", "--model", "m", "--data", "embedded", "--device", "toaster")
    assert rc == 2 and "--device 'toaster' is not a device" in err


def test_open_set_without_threshold_or_prototypes_names_the_flag(capsys, run_dir, images, tmp_path):
    folder = tmp_path / "stage2"
    shutil.copytree(run_dir / "stage2", folder)
    extras = json.loads((folder / "ccsam_zoo.json").read_text())
    (folder / "ccsam_zoo.json").write_text(json.dumps({**extras, "open_set": None}))  # like val_per_class: 0
    img = images[0][0]
    rc, out, err = _run(capsys, "predict", "--model", folder, img, "--open-set")
    assert rc == 1 and out == ""
    _one_line_error(err, "no open-set threshold for score 'cosine'", "--threshold T")
    rc, out, _ = _run(capsys, "predict", "--model", folder, img, "--open-set", "--threshold", "0.5", "--json")
    assert rc == 0 and json.loads(out)[0]["score_type"] == "cosine"
    rc, out, _ = _run(capsys, "predict", "--model", folder, img, "--open-set", "--score", "msp", "--json")
    r = json.loads(out)[0]
    assert rc == 0 and r["score_type"] == "msp" and r["threshold"] == 0.1 and r["score_source"] == "given"
    assert r["threshold_source"] == "OLTR's fixed 0.1 (no calibrated msp threshold)"
    (folder / "prototypes.safetensors").unlink()
    (folder / "ccsam_zoo.json").write_text(json.dumps({**extras, "open_set": None, "prototypes": None}))
    rc, out, _ = _run(capsys, "predict", "--model", folder, img, "--open-set", "--threshold", "0.5", "--json")
    r = json.loads(out)[0]  # no prototypes: the fallback chain ends at msp, and the output says so
    assert rc == 0 and r["score_type"] == "msp" and r["score_source"].startswith("fallback (") and r["threshold"] == 0.5
    rc, _, err = _run(capsys, "predict", "--model", folder, img, "--open-set", "--score", "cosine")
    _one_line_error(err, "'cosine' needs class prototypes and this model has none", "use a score this model has: msp")


def test_list_json(capsys):
    rc, out, _ = _run(capsys, "list", "--json")
    rows = json.loads(out)
    assert rc == 0 and any(r["alias"] == "ccsam-cifar10-lt" for r in rows)
    rc, out, _ = _run(capsys, "list")
    assert rc == 0 and "alias" in out.splitlines()[0]


def test_card(capsys, run_dir, tmp_path):
    rc, out, err = _run(capsys, "card", run_dir)
    assert rc == 0, err
    assert out.startswith("---") and "airplane" in out
    rc, _, err = _run(capsys, "card", tmp_path / "missing")
    assert rc == 1
    _one_line_error(err, "missing")


def test_sharpness_is_wired(capsys, monkeypatch):
    from ccsam_zoo.diagnostics import sharpness

    rc, out, _ = _run(capsys, "sharpness", "--help")
    assert rc == 0 and "--params" in out
    seen = {}

    def fake_run(args):
        seen.update(model=args.model, data=args.data)
        return 0

    monkeypatch.setattr(sharpness, "run", fake_run)
    rc, _, _ = _run(capsys, "sharpness", "--model", "m", "--data", "embedded")
    assert rc == 0 and seen == {"model": "m", "data": "embedded"}


def test_debug_shows_traceback(capsys, images):
    with pytest.raises(Exception, match="nope"):
        main(["--debug", "predict", "--model", "./nope", images[0][0]])


def test_console_script(images):
    exe = shutil.which("ccsam-zoo") or shutil.which(
        "ccsam-zoo", path=str(__import__("pathlib").Path(sys.executable).parent)
    )
    if exe is None:
        pytest.skip("console script not installed (pip install -e . --no-deps)")
    p = subprocess.run([exe, "predict", "--model", "./nope", images[0][0]], capture_output=True, text=True, timeout=120)
    assert p.returncode == 1 and p.stdout == ""
    _one_line_error(p.stderr, "nope")


# ------------------------------------------------------------------------------------ user errors (issue 14)
def test_bad_image_among_many_names_it_and_skip_bad(capsys, run_dir, images, tmp_path):
    paths, broken = images
    rc, out, err = _run(capsys, "predict", "--model", run_dir / "stage2", paths[0], broken, paths[1])
    assert rc == 1 and out == ""
    _one_line_error(err, "broken.jpg", "the other 2 images were not classified", "--skip-bad")
    assert "skip_bad=True" not in err  # the CLI names its own flag, not the Python argument
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(paths[0], folder / "a.png")
    shutil.copy(broken, folder / "b.png")
    rc, out, err = _run(capsys, "predict", "--model", run_dir / "stage2", folder)
    assert rc == 1
    _one_line_error(err, str(folder / "b.png"), "--skip-bad")
    rc, out, err = _run(capsys, "predict", "--model", run_dir / "stage2", folder, "--skip-bad")
    assert rc == 0 and "a.png" in out and "b.png" not in out  # the table keeps the good rows
    assert "skipped:" in err and "b.png" in err


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--threshold", "nan"], "argument --threshold: must be a finite number, got 'nan'"),
        (["--threshold", "inf"], "argument --threshold: must be a finite number"),
        (["--batch-size", "0"], "argument --batch-size: must be >= 1, got 0"),
    ],
)
def test_predict_non_finite_and_non_positive_options_are_usage_errors(capsys, run_dir, images, extra, needle):
    rc, out, err = _run(capsys, "predict", "--model", run_dir / "stage2", images[0][0], "--open-set", *extra)
    assert rc == 2 and out == "" and needle in err and "Traceback" not in err


def test_bad_device_is_one_line(capsys, run_dir, images):
    rc, _, err = _run(capsys, "predict", "--model", run_dir / "stage2", images[0][0], "--device", "toaster")
    assert rc == 2 and "--device 'toaster' is not a device; use auto, cpu, cuda" in err
    assert len(err.strip().splitlines()) == 1
    if not torch.cuda.is_available():
        rc, _, err = _run(capsys, "predict", "--model", run_dir / "stage2", images[0][0], "--device", "cuda")
        assert rc == 2 and "CUDA is not available on this machine; use --device cpu" in err


def test_list_says_what_is_shipped_and_what_is_not_published(capsys):
    rc, out, _ = _run(capsys, "list", "--json")
    rows = {r["alias"]: r for r in json.loads(out)}
    assert rc == 0
    assert rows["ccsam-cifar10-lt-cpu"]["status"] == "shipped"
    assert rows["ccsam-imagenet-lt"]["status"] == "not published"
    assert rows["ccsam-imagenet-lt"]["architecture"] == "resnext50_32x4d"
    rc, out, _ = _run(capsys, "list")
    lines = out.splitlines()
    assert rc == 0 and lines[0].split()[:2] == ["alias", "status"]
    assert lines[2].split()[:2] == ["ccsam-cifar10-lt", "shipped"]  # what works now comes first
    assert next(ln for ln in lines if ln.startswith("ce-crt-cifar10-lt ")).split()[2:6] == [
        "resnet32_cifar", "cifar10_lt", "cifar10_lt", "ce"]  # fmt: skip
    row = next(ln for ln in lines if ln.startswith("ccsam-imagenet-lt "))
    assert "not published" in row and "resnext50_32x4d" in row and "imagenet_lt" in row
    assert "not published: nothing uploaded under this name yet" in out


def test_card_accepts_aliases(capsys, tmp_path):
    rc, out, err = _run(capsys, "card", "ccsam-cifar10-lt-cpu")
    assert rc == 0, err
    assert out.startswith("---") and 'ccsam_zoo.from_pretrained("ccsam-cifar10-lt-cpu")' in out
    rc, out, err = _run(capsys, "card", "ccsam-imagenet-lt")
    assert rc == 1 and out == ""
    _one_line_error(err, "'ccsam-imagenet-lt' is not published yet", "--recipe imagenet_lt")
    rc, _, err = _run(capsys, "card", "ccsam-cifar10-l")
    assert rc == 1
    _one_line_error(err, "Did you mean 'ccsam-cifar10-lt'")
    afile = tmp_path / "x.png"
    afile.write_bytes(b"x")
    rc, _, err = _run(capsys, "card", afile)
    _one_line_error(err, "x.png is a file; pass a run folder, a checkpoint folder, an alias")
    rc, out, _ = _run(capsys, "card", "ccsam-cifar10-lt-cpu", "--output", tmp_path / "new" / "card.md")
    assert rc == 0 and (tmp_path / "new" / "card.md").read_text().startswith("---")


def test_unexpected_errors_say_how_to_see_the_traceback(capsys, monkeypatch):
    import ccsam_zoo.hub

    def broken():
        raise KeyError("status")

    monkeypatch.setattr(ccsam_zoo.hub, "list_pretrained", broken)
    rc, _, err = _run(capsys, "list")
    assert rc == 1
    _one_line_error(err, "KeyError: 'status'", "rerun with --debug for the traceback")
    with pytest.raises(KeyError):
        main(["--debug", "list"])


def test_evaluate_uses_an_oltr_benchmarks_own_open_split(capsys, tmp_path, monkeypatch):
    """ImageNet-LT layout with ImageNet_LT_open.txt: evaluate reports open-set metrics without --open-data."""
    from ccsam_zoo.hub import save_pretrained
    from tests.test_data_sources import _write_oltr

    monkeypatch.chdir(tmp_path)  # the default histogram PNG goes to the working folder, never into the repository
    _write_oltr(tmp_path, "ImageNet_LT")
    torch.manual_seed(0)
    model = timm.create_model("resnet20_cifar", num_classes=3).eval()
    info = dict(class_names=["n00", "n01", "n02"], class_counts=[6, 3, 1], stage="stage2", method={"name": "ce"},
                recipe={}, metrics={}, dataset="imagenet_lt")  # fmt: skip
    save_pretrained(model, tmp_path / "ckpt", info=info)
    rc, out, err = _run(capsys, "evaluate", "--model", tmp_path / "ckpt", "--data", "imagenet_lt",
                        "--source", tmp_path, "--json")  # fmt: skip
    assert rc == 0, err
    rep = json.loads(out)
    assert rep["num_samples"] == 6 and rep["num_open"] == 3 and rep["open_data"] == "the benchmark's open split"
    assert set(rep["open_set"]) == {"msp", "max_logit", "energy"} and rep["default_score"] == "msp"
