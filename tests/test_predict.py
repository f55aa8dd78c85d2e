"""`python -m vit_jax.predict`: the top classes of images the tests write, checked against the
model's own logits (images prepared independently with Pillow), at the checkpoint's resolution
or adapted to the image's, with the class names stored by training; clear errors."""

import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from tests.cli import ROOT, env
from tests.conftest import SMALL, random_params
from vit_jax import checkpoint, models, predict
from vit_jax.checkpoint import layout

DIGITS = [str(i) for i in range(10)]


def digits_like(image_size=16):
    """A grayscale model with ten classes, like the default digits run."""
    return models.create("Ti/4", num_classes=10, image_size=image_size, **SMALL)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A params-only Orbax checkpoint of `digits_like()` with its config and class names, as
    a training run stores them."""
    path = tmp_path_factory.mktemp("predict") / "run"
    config = {"model": {"variant": "Ti/4", "num_classes": 10, "image_size": 16, **SMALL}}
    config[layout.CLASS_NAMES] = DIGITS
    params = random_params(digits_like(), channels=1)
    checkpoint.save_orbax_params(path, params, config=config)
    return str(path)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """A 16x16 grayscale PNG and a 20x28 RGB JPEG-free PNG, random pixels."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    gray, rgb = str(folder / "gray.png"), str(folder / "color.png")
    Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(gray)
    Image.fromarray(rng.integers(0, 256, (20, 28, 3), dtype=np.uint8)).save(rgb)
    return [gray, rgb]


def expected_top(model, params, file, k=5):
    """The top-k (index, probability) of `file`, prepared with Pillow alone: grayscale, resized
    to the model's resolution (bilinear), scaled to [-1, 1]."""
    h, w = model.image_size
    image = Image.open(file).convert("L").resize((w, h), Image.Resampling.BILINEAR)
    x = np.asarray(image, np.float32)[None, :, :, None] / 127.5 - 1
    logits = np.asarray(model.apply({"params": params}, x), np.float64)[0]
    probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    order = np.argsort(-probs)[:k]
    return [(int(i), probs[i]) for i in order]


def parse(out: str) -> dict[str, list[tuple[int, float, str]]]:
    """{image: [(index, probability, name), ...]} from predict's output."""
    result, current = {}, None
    for line in out.splitlines():
        if not line.startswith(" "):
            current = result.setdefault(line, [])
            continue
        prob, index, *name = line.split()
        current.append((int(index), float(prob), " ".join(name)))
    return result


def assert_same(printed, expected):
    assert [i for i, _, _ in printed] == [i for i, _ in expected]
    np.testing.assert_allclose([p for _, p, _ in printed], [p for _, p in expected], atol=6e-5)
    assert [name for _, _, name in printed] == [DIGITS[i] for i, _ in expected]


def test_images_are_resized_to_the_checkpoint_and_classified_by_its_logits(run, images, capsys):
    assert predict.main(["--checkpoint", run, *images]) == 0
    printed = parse(capsys.readouterr().out)
    assert list(printed) == images
    model = digits_like()
    params, _ = checkpoint.restore_into(run, model, jax.random.key(0), verbose=False)
    for file in images:
        assert_same(printed[file], expected_top(model, params, file))


def test_the_checkpoint_adapts_to_the_image_or_to_a_given_resolution(run, images, capsys):
    color = images[1]  # 20x28: whole 4x4 patches, so nothing is resized
    assert predict.main(["--checkpoint", run, "--fit", "adapt", "--top", "3", color]) == 0
    adapted = capsys.readouterr().out
    model = digits_like(image_size=(20, 28))
    params, _ = checkpoint.restore_into(run, model, jax.random.key(0), verbose=False)
    assert_same(parse(adapted)[color], expected_top(model, params, color, k=3))
    assert predict.main(["--checkpoint", run, "--image-size", "20x28", "--top", "3", color]) == 0
    assert capsys.readouterr().out == adapted


def test_adapting_to_an_image_smaller_than_a_patch_says_it_enlarges_it(run, tmp_path, capsys):
    thin = str(tmp_path / "thin.png")  # 2 pixels high, 9 wide: patches are 4x4
    Image.fromarray(np.full((2, 9), 200, np.uint8)).save(thin)
    assert predict.main(["--checkpoint", run, "--fit", "adapt", "--top", "1", thin]) == 0
    captured = capsys.readouterr()
    assert captured.err == (
        f"note: {thin} is 2x9 pixels, smaller than one 4x4 patch; it runs enlarged to 4x8.\n"
    )
    model = digits_like(image_size=(4, 8))
    params, _ = checkpoint.restore_into(run, model, jax.random.key(0), verbose=False)
    assert_same(parse(captured.out)[thin], expected_top(model, params, thin, k=1))
    assert predict.enlarged_note("a", np.zeros((4, 8)), (4, 4)) is None  # whole patches: quiet


def test_unreadable_images_and_missing_checkpoints_are_one_error_line(run, images, tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not an image")
    command = [sys.executable, "-m", "vit_jax.predict", "--checkpoint", str(tmp_path / "none")]
    result = subprocess.run(
        [*command, images[0], str(tmp_path / "bad.png")],
        env=env(1),
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    # The images are read first: the bad one is named although the checkpoint is missing too.
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith(f"error: cannot read image {tmp_path / 'bad.png'}")
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_missing_checkpoint_is_one_error_line(images, tmp_path, capsys):
    assert predict.main(["--checkpoint", str(tmp_path / "none"), images[0]]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("error: checkpoint")
    assert "does not exist" in captured.err


def test_a_per_patch_model_is_one_error_line_naming_the_python_route(images, tmp_path, capsys):
    """A segmentation checkpoint (classifier="unpooled") has no image-level classes."""
    path = tmp_path / "seg"
    fields = {**SMALL, "classifier": "unpooled"}
    config = {"model": {"variant": "Ti/4", "num_classes": 11, "image_size": 16, **fields}}
    model = models.create("Ti/4", num_classes=11, image_size=16, **fields)
    checkpoint.save_orbax_params(path, random_params(model, channels=1), config=config)
    assert predict.main(["--checkpoint", str(path), images[0]]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.strip().splitlines()) == 1
    assert "classifier='unpooled'" in captured.err and "predict_logits" in captured.err
    opened = checkpoint.open_checkpoint(str(path))
    image = np.asarray(Image.open(images[0]))[..., None]
    assert predict.predict_logits(opened, [image], "resize").shape == (1, 16, 11)
