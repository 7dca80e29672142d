"""What ``from_pretrained`` and the Python API validate (issue 25): weights, config ranges, arguments, images, imports.

Each hostile input is refused with a message naming the tensor / key / file / argument, or handled by a
documented rule (signed 32-bit images by value range, EXIF orientation of PIL images, non-finite scores never
"known").
"""

from __future__ import annotations

import ast
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import ccsam_zoo
from ccsam_zoo import jsonio
from ccsam_zoo.hub import CheckpointError, from_pretrained
from ccsam_zoo.hub.registry import ASSETS_DIR
from ccsam_zoo.inference import Classifier, ImageInputError, LargeImageWarning, _images
from ccsam_zoo.inference.open_set_stats import log_pvalue

SHIPPED = ASSETS_DIR / "ccsam-cifar10-lt-cpu"
PACKAGE = Path(ccsam_zoo.__file__).parent


def _edit_weights(folder: Path, key: str, fn) -> None:
    state = load_file(str(folder / "model.safetensors"))
    state[key] = fn(state[key])
    save_file(state, str(folder / "model.safetensors"))


def _edit_config(folder: Path, key: str, value) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    cfg["pretrained_cfg"][key] = value
    (folder / "config.json").write_text(json.dumps(cfg))


def _load_error(folder: Path) -> str:
    with pytest.raises(CheckpointError) as err:
        from_pretrained(folder)
    return str(err.value)


# ------------------------------------------------------------------------------------------------ weights
@pytest.mark.parametrize(
    "key, dtype",
    [("conv1.weight", torch.bool), ("fc.weight", torch.int64), ("layer2.0.bn1.weight", torch.int32),
     ("fc.weight", torch.float8_e4m3fn), ("layer1.0.bn1.running_var", torch.bool)],
)  # fmt: skip
def test_weights_that_are_not_floating_point_are_refused(ckpt, key, dtype):
    """bool / integer / float8 weights were cast by load_state_dict without a word (bool gave NaN)."""
    _edit_weights(ckpt, key, lambda t: t.to(dtype))
    msg = _load_error(ckpt)
    name = str(dtype).removeprefix("torch.")
    assert msg.startswith(str(ckpt / "model.safetensors")), msg
    assert f"tensor {key!r} is stored as {name}" in msg and "never cast" in msg, msg


def test_integer_counters_must_stay_integers(ckpt):
    _edit_weights(ckpt, "layer1.0.bn1.num_batches_tracked", lambda t: t.float())
    msg = _load_error(ckpt)
    assert "tensor 'layer1.0.bn1.num_batches_tracked' is stored as float32, but the model's" in msg and "int64" in msg


def test_half_precision_weights_load_as_their_values(ckpt, tmp_path):
    """float16 / bfloat16 files load; the model equals the float32 model of the same rounded values."""
    import shutil

    state = load_file(str(ckpt / "model.safetensors"))
    rounded = tmp_path / "rounded"
    shutil.copytree(ckpt, rounded)
    half = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in state.items()}
    save_file(half, str(ckpt / "model.safetensors"))
    save_file({k: v.float() if v.is_floating_point() else v for k, v in half.items()},
              str(rounded / "model.safetensors"))  # fmt: skip
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(from_pretrained(ckpt)(x), from_pretrained(rounded)(x))


def test_negative_batchnorm_variance_is_refused_naming_the_tensor(ckpt):
    """It loaded and predicted NaN probabilities marked known (evaluate: 10.00%)."""
    _edit_weights(ckpt, "layer2.1.bn2.running_var", lambda t: t.index_fill(0, torch.tensor([3, 5]), -0.5))
    msg = _load_error(ckpt)
    assert "BatchNorm tensor 'layer2.1.bn2.running_var' holds 2 negative variances (min -0.5)" in msg, msg


@pytest.mark.parametrize(
    "key, scale, layer",
    [("fc.weight", 1e37, "'fc' (Linear"), ("fc.bias", 1e6, "'fc' (Linear"), ("conv1.weight", 1e36, "'conv1'")],
)
def test_absurd_logits_on_the_probe_batch_name_the_layer(ckpt, key, scale, layer):
    """fc weights x1e37 gave probability 1.0 to every image; the probe batch refuses them, naming the layer."""
    _edit_weights(ckpt, key, lambda t: t * scale)
    msg = _load_error(ckpt)
    assert "the model's logits on constant test images have" in msg and "limit 10000" in msg, msg
    assert f"the first layer whose output goes wrong is {layer}" in msg and repr(key) in msg, msg


def test_a_config_the_weights_do_not_fit_is_a_clear_error(ckpt, tmp_path):
    """A one-channel config (valid in itself) for three-channel weights; a model that cannot run its input size."""
    from ccsam_zoo.hub.loading import _probe

    for key, value in (("input_size", [1, 32, 32]), ("mean", [0.5]), ("std", [0.25])):
        _edit_config(ckpt, key, value)
    msg = _load_error(ckpt)
    assert msg.startswith(str(ckpt / "model.safetensors")) and "conv1.weight" in msg and "[16, 1, 3, 3]" in msg, msg

    class Fixed(torch.nn.Linear):  # accepts 8 x 8 inputs only
        pretrained_cfg = {"input_size": (3, 32, 32)}

    with pytest.raises(CheckpointError) as err:
        _probe(Fixed(64, 2), tmp_path)
    msg = str(err.value)
    assert msg.startswith(str(tmp_path / "config.json")) and "does not run on its own input size [3, 32, 32]" in msg


def test_shipped_models_pass_the_probe_with_small_logits():
    """The limit (1e4) is far above what trained models give on constant images (single digits)."""
    from ccsam_zoo.hub.loading import PROBE_LOGIT_LIMIT, _probe_batch, load_checkpoint

    model = load_checkpoint(SHIPPED).model
    x = _probe_batch(model)
    assert x.shape == (3, 3, 32, 32)
    mean = torch.tensor(model.pretrained_cfg["mean"]).view(3, 1, 1)
    std = torch.tensor(model.pretrained_cfg["std"]).view(3, 1, 1)
    assert torch.allclose(x[1], (0.5 - mean) / std)
    with torch.no_grad():
        assert float(model(x).abs().max()) < PROBE_LOGIT_LIMIT / 100


# ------------------------------------------------------------------------------------ non-finite, never known
def test_non_finite_logits_are_an_error_naming_the_image(clf, tmp_path):
    """A Classifier built by hand around broken weights (from_pretrained refuses them): predict names the image."""
    import copy

    model = copy.deepcopy(clf.model)
    with torch.no_grad():
        model.fc.weight[0, 0] = float("nan")
    broken = Classifier(model, class_names=clf.class_names, pretrained_cfg=clf.pretrained_cfg,
                        open_set_stats=clf.open_set_stats, prototypes=clf.prototypes)  # fmt: skip
    path = tmp_path / "a.png"
    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(path)
    for kwargs in ({}, {"open_set": True, "score": "msp+layer_stats", "threshold": -5.0}):
        with pytest.raises(ValueError, match=rf"logits are not finite \(NaN / inf\) for image {path}"):
            broken.predict(str(path), **kwargs)
    with pytest.raises(ValueError, match=r"logits are not finite .* for image #0 of the batch"):
        broken.calibrate((torch.zeros(2, 3, 32, 32, dtype=torch.uint8), torch.tensor([0, 1])), score="msp")


def test_a_non_finite_score_is_never_known(clf, monkeypatch):
    from ccsam_zoo.inference import classifier as mod

    real = mod.open_set_score
    monkeypatch.setattr(mod, "open_set_score", lambda name, **kw: real(name, **kw) * float("nan"))
    out = clf.predict(torch.rand(2, 3, 32, 32), open_set=True, score="msp", threshold=0.1)
    assert all(r["known"] is False and r["label"] == "unknown" and np.isnan(r["score"]) for r in out), out
    assert all(r["nearest_class"] in clf.class_names for r in out)


def test_log_pvalue_of_nan_is_nan_not_the_largest():
    """searchsorted put NaN after every reference: log p = 0, the most 'known' value (the layer_stats scores)."""
    ref = torch.tensor([0.0, 1.0, 2.0])
    got = log_pvalue(ref, torch.tensor([float("nan"), 1.0, float("inf")]))
    assert torch.isnan(got[0]) and got[1:].exp().tolist() == pytest.approx([0.75, 1.0])


# ------------------------------------------------------------------------------------- config.json ranges
@pytest.mark.parametrize(
    "key, value, message",
    [
        ("mean", [0.5], "'pretrained_cfg.mean' must be a list of 3 numbers, one per input channel"),
        ("mean", [0.5] * 7, "'pretrained_cfg.mean' must be a list of 3 numbers"),
        ("std", [0.2, 0.2], "'pretrained_cfg.std' must be a list of 3 numbers"),
        ("crop_pct", 0.001, "'pretrained_cfg.crop_pct' must be a number in [0.5, 1.5]"),
        ("crop_pct", 1.6, "'pretrained_cfg.crop_pct' must be a number in [0.5, 1.5]"),
        ("input_size", [3, 40000, 40000], "'pretrained_cfg.input_size' must be [channels, height, width] with sides "
                                          "of at most 1024 px"),
        ("input_size", [4, 32, 32], "'pretrained_cfg.input_size' must be [channels, height, width] with 1 or 3"),
        ("input_size", [3, 32], "'pretrained_cfg.input_size' must be [channels, height, width]"),
    ],
)  # fmt: skip
def test_config_fields_out_of_range_name_the_key(ckpt, key, value, message):
    _edit_config(ckpt, key, value)
    msg = _load_error(ckpt)
    assert msg.startswith(str(ckpt / "config.json")) and message in msg, msg


@pytest.mark.parametrize("crop_pct", [0.5, 0.875, 1.0, 1.15])
def test_crop_pct_in_range_is_used(ckpt, crop_pct):
    """timm's own values (0.875 to 1.15) load; the eval transform resizes to input size / crop_pct."""
    _edit_config(ckpt, "crop_pct", crop_pct)
    clf = from_pretrained(ckpt)
    assert clf.data_config["crop_pct"] == crop_pct and clf._short_side() == int(32 / crop_pct)


@pytest.mark.parametrize("file", ["config.json", "ccsam_zoo.json"])
def test_deeply_nested_json_names_the_file(ckpt, file):
    """100,000 nested arrays overflowed the recursion limit (a RecursionError from deep inside json)."""
    (ckpt / file).write_text('{"x": ' + "[" * 100_000 + "]" * 100_000 + "}")
    msg = _load_error(ckpt)
    assert msg.startswith(str(ckpt / file)) and "JSON nested too deeply" in msg and "re-download" in msg, msg


def test_jsonio_loads_turns_recursion_into_a_value_error():
    assert jsonio.loads('{"a": [1, {"b": null}]}') == {"a": [1, {"b": None}]}
    with pytest.raises(jsonio.JSONNestingError, match=r"^cfg\.json: JSON nested too deeply"):
        jsonio.loads("[" * 50_000, "cfg.json")


# ----------------------------------------------------------------------------------------- API arguments
@pytest.mark.parametrize("arg", ["top_k", "batch_size"])
@pytest.mark.parametrize(
    "value, error", [(None, TypeError), ("3", TypeError), (1.5, TypeError), (True, TypeError), (0, ValueError),
                     (-2, ValueError)],
)  # fmt: skip
def test_count_arguments_of_the_wrong_type_name_the_argument(clf, arg, value, error):
    with pytest.raises(error, match=rf"^{arg} must be"):
        clf.predict(torch.rand(3, 32, 32), **{arg: value})


def test_count_arguments_accept_numpy_integers(clf):
    out = clf.predict(torch.rand(3, 3, 32, 32), top_k=np.int64(2), batch_size=np.int32(2))
    assert len(out) == 3 and all(len(r["top_k"]) == 2 for r in out)
    for call in (lambda: clf.calibrate(torch.rand(2, 3, 32, 32), score="msp", batch_size="8"),
                 lambda: clf.fit_prototypes(torch.rand(2, 3, 32, 32), batch_size=None)):  # fmt: skip
        with pytest.raises(TypeError, match="^batch_size must be an integer >= 1, got"):
            call()


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2])
def test_float8_pixels_are_a_clear_error(clf, dtype):
    x = torch.rand(3, 32, 32).to(dtype)
    with pytest.raises(ImageInputError, match=rf"image 0: unsupported tensor dtype {str(dtype)[6:]}; pass uint8"):
        clf.predict(x)
    with pytest.raises(ValueError, match=r"a data batch of dtype float8"):
        clf.fit_prototypes((torch.rand(2, 3, 32, 32).to(dtype), torch.tensor([0, 1])))


def test_expanded_views_are_checked_without_materialising_them(clf, monkeypatch):
    """torch.zeros(...).expand(...): the finite and range checks look at the stored values only."""
    seen: list[int] = []
    real = torch.isfinite
    monkeypatch.setattr(torch, "isfinite", lambda t: seen.append(t.numel()) or real(t))
    big = torch.full((3, 1, 1), 0.25).expand(3, 6_000, 6_000)  # 432 MB if materialised (a regression stays safe)
    out = _images.tensor_to_input(big, 0)
    assert out.shape == (3, 6_000, 6_000) and out.stride() == (1, 0, 0) and max(seen) == 3
    seen.clear()
    batch = torch.zeros(1, 3, 32, 32).expand(300, 3, 32, 32)
    res = clf.predict(batch, batch_size=100)
    assert len(res) == 300 and len({r["label"] for r in res}) == 1
    assert max(seen) <= 3 * 32 * 32, max(seen)  # one image at a time (and one batch of logits), never all 300


# ------------------------------------------------------------------------------------------------- images
def test_signed_32bit_tiff_is_scaled_by_its_value_range(tmp_path):
    """PIL mode "I" with negative values was clipped to black; now its own [min, max] maps to [0, 255]."""
    ramp = np.linspace(-1000, 1000, 64 * 32).reshape(32, 64).astype(np.int32)
    path = tmp_path / "signed.tif"
    Image.fromarray(ramp, mode="I").save(path)
    img = _images.open_image(path, 32)
    assert img.mode == "RGB"
    g = np.asarray(img)[:, :, 0].astype(int)
    assert g.min() == 0 and g.max() == 255 and np.all(np.diff(g.flatten()) >= 0)
    expected = np.rint((ramp.astype(float) + 1000) * 255 / 2000)
    assert np.abs(g - expected).max() <= 1
    small = Image.fromarray(np.arange(200, dtype=np.int32).reshape(10, 20), mode="I")  # 8-bit range: as is
    assert np.array_equal(np.asarray(_images.pil_to_rgb(small))[:, :, 0], np.arange(200).reshape(10, 20))
    wide = Image.fromarray(np.full((4, 4), -7, np.int32), mode="I")  # constant outside the ranges: mid-grey
    assert np.asarray(_images.pil_to_rgb(wide)).max() == np.asarray(_images.pil_to_rgb(wide)).min() == 128


def test_exif_orientation_applies_to_pil_images_as_to_paths(clf, tmp_path):
    """The same photo gave dog 0.64 from its path and cat 0.49 from Image.open (rotation ignored)."""
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, (24, 48, 3), dtype=np.uint8)
    pixels[:, :24] //= 4  # left half dark: a rotation changes the prediction input
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to view"
    path = tmp_path / "rotated.jpg"
    Image.fromarray(pixels).save(path, exif=exif, quality=95)
    with Image.open(path) as im:
        upright = _images.pil_to_rgb(im)
        assert upright.size == (24, 48)  # turned: width and height swap
        from_pil = clf.predict(im)[0]
    from_path = clf.predict(str(path))[0]
    assert from_pil["top_k"] == from_path["top_k"]
    plain = Image.open(path)
    plain.getexif().clear()
    plain.info.pop("exif", None)  # the tag removed: pixels as stored
    assert _images.pil_to_rgb(plain).size == (48, 24)


def test_decompression_bomb_warning_and_error_are_clear_messages(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.fromarray(np.zeros((32, 40, 3), np.uint8)).save(path)  # 1,280 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # warning above 1,000, error above 2,000
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        img = _images.open_image(path, 32)
    assert img.size == (40, 32)
    kinds = [w.category for w in caught]
    assert Image.DecompressionBombWarning not in kinds and kinds == [LargeImageWarning], kinds
    assert str(caught[0].message).startswith(f"{path}: 40x32 = 1,280 pixels is above PIL's decompression-bomb limit")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 600)
    with pytest.raises(ImageInputError) as err:
        _images.open_image(path, 32)
    assert str(err.value).startswith(f"{path}: possible decompression bomb: 1,280 pixels, more than twice")


def test_one_channel_models_get_grayscale_inputs():
    """input_size [1, H, W] (allowed by the config check): images become grayscale (PIL's luma), not RGB."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model("resnet20_cifar", num_classes=3, in_chans=1).eval()
    clf = Classifier(model, class_names=None, pretrained_cfg={"input_size": (1, 32, 32), "mean": (0.5,),
                                                              "std": (0.25,)})  # fmt: skip
    rgb = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    gray = np.asarray(Image.fromarray(rgb).convert("L"))
    a = dict(clf.predict(Image.fromarray(rgb))[0]["top_k"])
    b = dict(clf.predict(Image.fromarray(gray))[0]["top_k"])
    c = dict(clf.predict(torch.from_numpy(rgb).permute(2, 0, 1))[0]["top_k"])  # float luma, no uint8 rounding
    assert a == b and sorted(a) == sorted(c) == ["0", "1", "2"]
    assert [a[k] for k in "012"] == pytest.approx([c[k] for k in "012"], abs=1e-3)


# ------------------------------------------------------------------------------------------- import graph
def _module(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """Modules of ``modules`` that ``path`` imports anywhere (top level, functions, TYPE_CHECKING blocks)."""
    me = _module(path)
    package = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            subs = {f"{base}.{a.name}" for a in node.names} & modules
            out.update(subs)
            if len(subs) < len(node.names):  # names that are not submodules come from the module itself
                out.add(base)
    return {m for m in out if m in modules and m != me}


def test_hub_and_inference_have_no_import_cycle():
    """card <-> checkpoint <-> registry and open_set <-> open_set_stats were circles; every arrow points one way."""
    files = [p for sub in ("hub", "inference") for p in (PACKAGE / sub).rglob("*.py")]
    modules = {_module(p) for p in files}
    graph = {_module(p): _imports(p, modules) for p in files}
    assert "ccsam_zoo.hub._format" in graph["ccsam_zoo.hub.card"]
    assert "ccsam_zoo.inference.open_set_stats" in graph["ccsam_zoo.inference.open_set"]
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert graph["ccsam_zoo.hub._format"] <= {"ccsam_zoo.inference.open_set"}  # the low module imports no hub module
