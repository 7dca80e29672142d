"""Hostile inputs at inference and loading: every one is refused with a message naming the file / tensor / key.

Non-finite pixels, weights, prototypes and thresholds; empty images; named pipes and devices; one bad file
among many; config / extras fields of the wrong type; pickles and YAML tags that must never execute.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import shutil
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import ccsam_zoo  # noqa: F401
from ccsam_zoo.hub import CheckpointError, from_pretrained
from ccsam_zoo.hub.registry import ASSETS_DIR
from ccsam_zoo.inference import ImageInputError, _images

SHIPPED = ASSETS_DIR / "ccsam-cifar10-lt-cpu"


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    out = {}
    for name in ("a", "b", "c"):
        out[name] = str(d / f"{name}.png")
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(out[name])
    (d / "bad.png").write_text("not an image")
    (d / "empty.png").write_bytes(b"")
    out["bad"], out["empty"] = str(d / "bad.png"), str(d / "empty.png")
    return out


# ------------------------------------------------------------------------------------------- pixels
def _hwc_nan() -> np.ndarray:
    a = np.full((32, 32, 3), 0.5, np.float32)
    a[3, 4, 1] = np.nan
    return a


def _bchw_one_bad() -> torch.Tensor:
    x = torch.rand(2, 3, 8, 8)
    x[1, 2, 7, 7] = float("nan")
    return x


def _half_nan() -> torch.Tensor:
    x = torch.rand(3, 8, 8, dtype=torch.float16)
    x[0, 0, 0] = float("nan")
    return x


@pytest.mark.parametrize(
    "make, where",
    [
        (_hwc_nan, "image 0"),  # HWC float array: the old code answered "probability nan"
        (lambda: torch.full((3, 32, 32), float("inf")), "image 0"),  # CHW float tensor
        (_bchw_one_bad, "image 1"),  # the second image of a BCHW batch
        (_half_nan, "image 0"),  # float16
        (lambda: Image.fromarray(np.full((8, 8), np.nan, np.float32), mode="F"), "image 0"),  # PIL float image
    ],
)
def test_non_finite_pixels_are_rejected(clf, make, where):
    with pytest.raises(ImageInputError, match=rf"{where}: \d+ of \d+ pixel values are not finite \(NaN or inf\)"):
        clf.predict(make())


@pytest.mark.parametrize(
    "bad, needle",
    [
        (np.full((8, 8, 3), None, dtype=object), "unsupported array dtype object"),  # was silently classified
        (np.full((8, 8, 3), "a"), "unsupported array dtype <U1"),
        (np.ones((8, 8, 3), dtype=complex), "unsupported array dtype complex128"),
        (torch.rand(3, 8, 8).to_sparse(), "a sparse_coo tensor holds no dense pixel values"),
        (torch.empty(3, 8, 8, device="meta"), "a meta tensor holds no dense pixel values"),
    ],
)
def test_arrays_and_tensors_without_pixels_are_rejected(clf, bad, needle):
    with pytest.raises(ImageInputError, match=needle):
        clf.predict(bad)
    with pytest.raises(ValueError, match="raw bytes are not an image input"):
        clf.predict(b"\x89PNG\r\n")


def test_non_finite_pixels_with_skip_bad(clf):
    batch = torch.rand(3, 3, 32, 32)
    batch[1, 0, 0, 0] = float("nan")
    res = clf.predict(batch, skip_bad=True)
    assert [("error" in r) for r in res] == [False, True, False]
    assert "not finite" in res[1]["error"] and all(math.isfinite(r["probability"]) for r in (res[0], res[2]))


def test_non_finite_data_batches_are_rejected(clf):
    x = torch.zeros(4, 3, 32, 32)
    x[2, 1, 3, 3] = float("nan")
    before = clf.prototypes.clone()
    with pytest.raises(ValueError, match=r"data batch holds 1 non-finite values \(NaN / inf\)"):
        clf.fit_prototypes((x, torch.arange(4)))
    assert torch.equal(clf.prototypes, before)


def test_empty_images_name_the_file(clf, files, monkeypatch):
    with pytest.raises(ImageInputError, match=r"image 0: empty image of size 0x0"):
        clf.predict(Image.new("RGB", (0, 0)))
    with pytest.raises(ImageInputError, match=r"empty\.png: empty file \(0 bytes\)"):
        clf.predict(files["empty"])
    # a file PIL decodes into a 0 x 0 image (formats that allow it): the file is named, no ZeroDivisionError
    monkeypatch.setattr(_images.Image, "open", lambda f: Image.new("RGB", (0, 0)))
    with pytest.raises(ImageInputError, match=r"cannot read .*a\.png: empty image of size 0x0"):
        clf.predict(files["a"])


# ---------------------------------------------------------------------------------------- thresholds
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), "abc"])
def test_non_finite_thresholds_are_rejected(clf, bad):
    x = torch.rand(3, 32, 32)
    with pytest.raises(ValueError, match="open-set threshold must be a (finite )?number"):
        clf.predict(x, open_set=True, threshold=bad)
    before = dict(clf.open_set)
    with pytest.raises(ValueError, match="open-set threshold must be a (finite )?number"):
        clf.calibrate(score="msp", threshold=bad)
    assert clf.open_set == before


def test_non_finite_prototypes_via_the_api(clf):
    p = torch.nn.functional.normalize(torch.randn(10, 64), dim=1)
    p[3, 3] = float("nan")
    with pytest.raises(ValueError, match=r"prototypes hold 1 non-finite values"):
        clf.set_prototypes(p)
    assert clf.prototypes is not None and bool(torch.isfinite(clf.prototypes).all())


# ------------------------------------------------------------------------------------ special files
def _alarm(seconds: int):
    """Fail instead of hanging forever (the old code blocked in open() on a FIFO)."""

    def handler(signum, frame):
        raise TimeoutError("predict hung on a special file")

    old = signal.signal(signal.SIGALRM, handler)
    signal.alarm(seconds)
    return old


@pytest.mark.skipif(not hasattr(os, "mkfifo") or not hasattr(signal, "SIGALRM"), reason="POSIX only")
def test_named_pipe_and_devices_are_refused_not_read(clf, tmp_path, files):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    old = _alarm(20)
    try:
        with pytest.raises(ImageInputError, match=r"pipe\.png: a named pipe \(FIFO\), not an image file"):
            clf.predict(str(fifo))
        if os.path.exists("/dev/zero"):
            with pytest.raises(ImageInputError, match=r"/dev/zero: a character device"):
                clf.predict("/dev/zero")
        res = clf.predict([files["a"], str(fifo)], skip_bad=True)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    assert "label" in res[0] and "named pipe" in res[1]["error"]
    # inside a folder, special files are not images: the folder's regular images are classified
    shutil.copy(files["b"], tmp_path / "b.png")
    assert [r["source"] for r in clf.predict(tmp_path)] == [str(tmp_path / "b.png")]


# ------------------------------------------------------------------------------- one bad file of many
def test_bad_file_among_many_names_it_and_the_flag(clf, files, tmp_path):
    with pytest.raises(ImageInputError) as err:
        clf.predict([files["a"], files["bad"], files["b"]])
    msg = str(err.value)
    assert files["bad"] in msg and "the other 2 images were not classified" in msg and "skip_bad=True" in msg
    assert err.value.source == files["bad"] and err.value.others == 2
    # a bad file inside a folder: the same
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(files["a"], folder / "a.png")
    shutil.copy(files["bad"], folder / "zz_bad.png")
    with pytest.raises(ImageInputError, match=r"zz_bad\.png: not an image file.*skip_bad=True"):
        clf.predict(folder)
    # a single image: nothing else to classify, no flag suggested
    with pytest.raises(ImageInputError) as err:
        clf.predict(files["bad"])
    assert "skip_bad" not in str(err.value)
    res = clf.predict(folder, skip_bad=True)
    assert "label" in res[0] and "zz_bad.png" in res[1]["error"]


def test_missing_file_is_still_a_file_not_found_error(clf, tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.png"):
        clf.predict(str(tmp_path / "nope.png"))
    with pytest.raises(ValueError, match="empty path"):
        clf.predict("")


# ------------------------------------------------------------------------------------------ checkpoints
def _set(data: dict, dotted: str, value) -> None:
    *parents, last = dotted.split(".")
    for p in parents:
        data = data[p]
    data[last] = value


@pytest.mark.parametrize(
    "key, value",
    [("fc.weight", float("nan")), ("layer3.4.bn2.running_var", float("inf")), ("conv1.weight", -float("inf"))],
)
def test_non_finite_weights_are_refused_at_load(ckpt, key, value):
    state = load_file(str(ckpt / "model.safetensors"))
    state[key].view(-1)[0] = value
    save_file(state, str(ckpt / "model.safetensors"))
    with pytest.raises(CheckpointError, match=rf"model\.safetensors: tensor '{key}' holds 1 non-finite value"):
        from_pretrained(ckpt)


def test_non_finite_prototypes_are_refused_at_load(ckpt):
    protos = load_file(str(ckpt / "prototypes.safetensors"))
    protos["prototypes"][4, 7] = float("nan")
    save_file(protos, str(ckpt / "prototypes.safetensors"))
    with pytest.raises(CheckpointError, match=r"prototypes\.safetensors: tensor 'prototypes' holds 1 non-finite"):
        from_pretrained(ckpt)


@pytest.mark.parametrize(
    "file, key, value, message",
    [
        ("config.json", "architecture", 123, "'architecture' must be a timm model name"),
        ("config.json", "architecture", ["resnet32_cifar"], "'architecture' must be a timm model name"),
        ("config.json", "num_classes", "ten", "'num_classes' must be a positive integer"),
        ("config.json", "pretrained_cfg", "x", "'pretrained_cfg' must be a JSON object"),
        ("config.json", "pretrained_cfg.mean", "x", "'pretrained_cfg.mean' must be a list of finite numbers"),
        ("config.json", "pretrained_cfg.std", [0.2, 0, 0.2], "'pretrained_cfg.std' must be a list of positive"),
        ("config.json", "pretrained_cfg.crop_pct", 123, "'pretrained_cfg.crop_pct' must be a number"),
        ("config.json", "pretrained_cfg.input_size", [3, 0, 32], "'pretrained_cfg.input_size' must be"),
        ("config.json", "pretrained_cfg.interpolation", "sideways", "cannot use this checkpoint"),
        ("ccsam_zoo.json", "class_names", 123, "'class_names' must be a list of class names"),
        ("ccsam_zoo.json", "class_counts", "x", "'class_counts' must be a list of non-negative integers"),
        ("ccsam_zoo.json", "open_set", "x", "'open_set' must be"),
        ("ccsam_zoo.json", "open_set.threshold", float("nan"), "'open_set.threshold' must be a finite number"),
        ("ccsam_zoo.json", "open_set.threshold", "0.8", "'open_set.threshold' must be a finite number"),
        ("ccsam_zoo.json", "open_set.score", "entropy", "'open_set.score' must be one of"),
    ],
)
def test_wrong_types_in_json_are_checkpoint_errors(ckpt, file, key, value, message):
    data = json.loads((ckpt / file).read_text())
    _set(data, key, value)
    (ckpt / file).write_text(json.dumps(data))
    with pytest.raises(CheckpointError) as err:
        from_pretrained(ckpt)
    assert str(err.value).startswith(str(ckpt)) and message in str(err.value), str(err.value)


@pytest.mark.slow
def test_json_fuzz_never_escapes_as_another_error(ckpt, files):
    """Every top-level key (and pretrained_cfg / open_set key) of both JSON files set to values of every type."""
    values = [123, -1, 1.5, True, None, "x", [], [1, "a"], {}, {"a": 1}, float("nan")]
    originals = {f: (ckpt / f).read_text() for f in ("config.json", "ccsam_zoo.json")}
    for file, text in originals.items():
        base = json.loads(text)
        keys = list(base) + [f"{k}.{sub}" for k in ("pretrained_cfg", "open_set") for sub in (base.get(k) or {})]
        for key in keys:
            for value in values:
                data = json.loads(text)
                _set(data, key, value)
                (ckpt / file).write_text(json.dumps(data))
                try:
                    c = from_pretrained(ckpt)
                    c.predict(files["a"], open_set=bool(c.open_set and c.open_set.get("threshold") is not None))
                except CheckpointError:
                    pass
                except ValueError as e:  # prediction-time user errors are fine if they say what to do
                    assert "threshold" in str(e) or "score" in str(e), (file, key, value, e)
        (ckpt / file).write_text(text)


# ------------------------------------------------------------------------------ nothing ever executes
class _Boom:
    """Unpickling this writes a marker file: the test fails if anything ever unpickles it."""

    marker = ""

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "pwned"))


def test_pickles_beside_the_weights_are_never_loaded(ckpt, tmp_path, monkeypatch, capsys):
    marker = tmp_path / "PWNED"
    boom = _Boom()
    boom.marker = str(marker)
    for name in ("pytorch_model.bin", "model.pth", "model.pt", "training_args.bin"):
        (ckpt / name).write_bytes(pickle.dumps({"fc.weight": boom}))

    def refuse(*args, **kwargs):
        raise AssertionError("pickle / torch.load was called")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    c = from_pretrained(ckpt)
    c.predict(torch.rand(3, 32, 32), open_set=True)
    from ccsam_zoo.cli import main

    assert main(["card", str(ckpt)]) == 0
    assert not marker.exists()
    (ckpt / "model.safetensors").unlink()  # only the pickles left: refused by name, not opened
    with pytest.raises(CheckpointError, match="pickle files are never loaded"):
        from_pretrained(ckpt)
    assert not marker.exists()


def test_yaml_tags_never_execute(tmp_path, ckpt):
    """Recipes and a run folder's recipe.yaml are read with yaml.safe_load: a python tag is an error, never run."""
    marker = tmp_path / "PWNED"
    evil = f"name: x\nmethod: !!python/object/apply:os.system ['touch {marker}']\n"
    (tmp_path / "evil.yaml").write_text(evil)
    from ccsam_zoo.training.config import load_recipe

    with pytest.raises(Exception) as err:  # noqa: B017  (RecipeError or yaml's ConstructorError, never a run)
        load_recipe(tmp_path / "evil.yaml")
    assert "python/object/apply" in str(err.value) or "tag" in str(err.value)
    # a run folder (stage2/ inside it) whose recipe.yaml carries the tag: the card ignores it
    run = tmp_path / "run"
    run.mkdir()
    shutil.move(str(ckpt), run / "stage2")
    (run / "recipe.yaml").write_text(evil)
    from ccsam_zoo.hub import render_model_card

    assert "CC-SAM" in render_model_card(run / "stage2")
    assert not marker.exists()


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX paths")
def test_hf_token_never_printed_or_written(tmp_path, monkeypatch, capsys, files):
    """HF_TOKEN set to a sentinel; predict / list / card / a failing push: the sentinel appears nowhere."""
    from unittest import mock

    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    from ccsam_zoo.cli import main
    from ccsam_zoo.hub import push_to_hub

    sentinel = "hf_SENTINELtokenDoNotLeak0123456789"
    monkeypatch.setenv("HF_TOKEN", sentinel)
    run = tmp_path / "run"
    shutil.copytree(SHIPPED, run / "stage2")
    outputs = []
    for argv in (
        ["predict", "--model", str(run), files["a"], "--open-set"],
        ["predict", "--model", str(run), files["a"], files["bad"]],
        ["predict", "--model", "ccsam-imagenet-lt", files["a"]],
        ["list"],
        ["card", str(run), "--output", str(tmp_path / "card.md")],
        ["card", "ccsam-cifar10-lt"],
    ):
        main(argv)
        outputs.extend(capsys.readouterr())

    calls = []

    def denied(self, *args, **kwargs):
        calls.append(kwargs.get("token"))
        raise HfHubHTTPError(
            "401 Client Error: Unauthorized for url: https://huggingface.co/api/repos/create",
            response=mock.Mock(status_code=401, headers={}, url="https://huggingface.co/api/repos/create"),
        )

    monkeypatch.setattr(HfApi, "create_repo", denied)
    with pytest.raises(HfHubHTTPError) as err:
        push_to_hub(run, "me/my-model")
    outputs.extend([str(err.value), repr(err.value)])
    with pytest.raises(HfHubHTTPError) as err:
        push_to_hub(run, "me/my-model", token=sentinel)  # an explicit token goes to the client only
    assert calls == [None, sentinel]
    outputs.extend([str(err.value), repr(err.value), *capsys.readouterr()])
    assert not any(sentinel in o for o in outputs)
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert sentinel.encode() not in path.read_bytes(), path


def test_hf_token_not_leaked_by_a_failed_push_from_the_training_command(tmp_path, monkeypatch, capsys):
    """``recipes/train.py --push-to-hub`` whose push is refused (training replaced by a copy of a checkpoint)."""
    from unittest import mock

    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    from ccsam_zoo.training import cli as train_cli
    from ccsam_zoo.training import trainer

    sentinel = "hf_SENTINELtokenDoNotLeak9876543210"
    monkeypatch.setenv("HF_TOKEN", sentinel)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # past the CLI's offline check; the push itself is refused

    def fake_train(recipe, output_dir, **kwargs):
        shutil.copytree(SHIPPED, Path(output_dir) / "stage2")
        return {"stage2": {"top1": 59.9}}

    def no_data(*args, **kwargs):
        raise AssertionError("training was not intercepted")

    monkeypatch.setattr(trainer, "train", fake_train)
    monkeypatch.setattr(trainer, "_build_data", no_data)  # never a real run, whatever the CLI imports

    def denied(self, *args, **kwargs):
        raise HfHubHTTPError(
            "403 Forbidden: You don't have the rights to create a model under the namespace 'me'.",
            response=mock.Mock(status_code=403, headers={}, url="https://huggingface.co/api/repos/create"),
        )

    monkeypatch.setattr(HfApi, "create_repo", denied)
    out_dir = tmp_path / "run"
    outputs = []
    try:
        rc = train_cli.main(["--recipe", "quickstart", "--output-dir", str(out_dir), "--push-to-hub", "me/x"])
        outputs.append(str(rc))
    except BaseException as err:  # noqa: BLE001  (a traceback today; the message is what is checked)
        outputs.extend([str(err), repr(err)])
    outputs.extend(capsys.readouterr())
    assert (out_dir / "stage2" / "model.safetensors").is_file()  # the run's files are intact
    assert not any(sentinel in o for o in outputs)
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert sentinel.encode() not in path.read_bytes(), path
