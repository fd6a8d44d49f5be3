"""`mobilenet embed`: vectors from real image files, the three file formats, nearest neighbours, the command,
and retrieval with imported ImageNet weights on the shared photos."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mobilenet.checkpoint import save
from mobilenet.cli import main
from mobilenet.embed import embed_images, nearest, precision_at_1, read_embeddings, write_embeddings
from mobilenet.model import MobileNetV1
from tests.conftest import shared_file


@pytest.fixture
def photos(tmp_path):
    """Six colour pictures in two looks (stripes and blobs), and one broken file."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(6):
        arr = rng.integers(0, 40, (48, 48, 3)).astype(np.uint8)
        if i % 2:
            arr[::6] = 255  # stripes
        else:
            arr[16:32, 16:32] = (200, 40, 40)  # a red blob
        Image.fromarray(arr).save(folder / f"{i}.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    return folder


def calibrated() -> MobileNetV1:
    """A new network whose BatchNorm statistics saw one batch (fresh statistics make the features vanish)."""
    model = MobileNetV1(width_mult=0.25, resolution=32, num_classes=4).train()
    with torch.no_grad():
        model(torch.randn(16, 3, 32, 32))
    return model.eval()


@pytest.fixture
def weights(tmp_path):
    path = tmp_path / "w.safetensors"
    save(calibrated(), path, class_names=list("abcd"))
    return path


def test_embed_images_files_and_formats(photos, tmp_path):
    model = calibrated()
    paths = sorted(photos.iterdir())
    names, vectors, problems = embed_images(model, paths, batch_size=4)
    assert len(names) == 6 and vectors.shape == (6, model.num_features)
    assert torch.allclose(vectors.norm(dim=1), torch.ones(6), atol=1e-5)
    assert len(problems) == 1 and problems[0].startswith(str(photos / "broken.png"))
    _, stage2, _ = embed_images(model, paths[:2], layer=2, normalize=False)
    assert stage2.shape == (2, model.feature_info[2]["num_chs"]) and not torch.allclose(stage2.norm(dim=1),
                                                                                         torch.ones(2))
    with pytest.raises(ValueError, match="layer must be in 0..4"):
        embed_images(model, paths[:1], layer=7)
    for suffix in (".npy", ".safetensors", ".csv"):
        written = write_embeddings(tmp_path / f"e{suffix}", names, vectors)
        assert all(p.is_file() for p in written)
        back_names, back = read_embeddings(tmp_path / f"e{suffix}")
        assert back_names == names and torch.allclose(back, vectors, atol=1e-6)
    with pytest.raises(ValueError, match="must end in one of"):
        write_embeddings(tmp_path / "e.txt", names, vectors)


def test_nearest_and_precision_at_1():
    v = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    assert [i for i, _ in nearest(v[0], v, 2)] == [0, 1]
    (best, sim), = nearest(v[0], v, 1, exclude=0)
    assert best == 1 and sim == pytest.approx(0.9 / np.hypot(0.9, 0.1))
    assert precision_at_1(v, v, ["a", "a", "b", "b"], ["a", "a", "b", "b"], leave_one_out=True) == 1.0
    assert precision_at_1(v, v, ["a", "b", "a", "b"], ["a", "b", "a", "b"], leave_one_out=True) == 0.0


def test_embed_command(photos, weights, tmp_path, capsys):
    code = main(["embed", str(photos), "--weights", str(weights), "--out", str(tmp_path / "e.csv"),
                 "--similar", str(photos / "0.png"), "--top", "3", "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 0 and "wrote 6 x 256 embeddings" in out and "skipped" in err and "broken.png" in err
    lines = out.split("nearest to")[1].strip().splitlines()[1:]
    assert len(lines) == 3 and not any(line.endswith("/0.png") for line in lines)  # the query itself left out
    assert read_embeddings(tmp_path / "e.csv")[1].shape == (6, 256)
    for argv, message in ((["--out", str(tmp_path / "e.txt")], "--out must end in one of"),
                          ([], "nothing to do"), (["--out", str(tmp_path / "x.npy"), "--top", "0"], "--top")):
        assert main(["embed", str(photos), "--weights", str(weights), *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0]


@pytest.mark.slow
@pytest.mark.realdata
def test_imported_imagenet_weights_find_each_photo_from_another_view():
    """The TF Lite ImageNet classifier, imported: each shared photo's centre crop, mirrored, finds its original
    among the 100 far above chance (1 %); a random network of the same shape does not."""
    from PIL import ImageOps

    from mobilenet.convert import import_model
    from mobilenet.embed import embed_batch
    from mobilenet.predict import model_preprocessing

    model = import_model(shared_file("weights", "tflite", "mobilenet_v1_0.25_128_quant.tflite"))
    photos = sorted(shared_file("imagenet", "images").glob("*.JPEG"))
    pre = model_preprocessing(model)
    images = [Image.open(p).convert("RGB") for p in photos]
    views = [ImageOps.mirror(im.crop((im.width // 5, im.height // 5, im.width * 4 // 5, im.height * 4 // 5)))
             for im in images]
    ids = list(range(len(photos)))

    def p1(net: torch.nn.Module) -> float:
        gallery = embed_batch(net.eval(), torch.stack([pre(im) for im in images]))
        queries = embed_batch(net, torch.stack([pre(im) for im in views]))
        return precision_at_1(queries, gallery, ids, ids)

    random_net = MobileNetV1(width_mult=0.25, resolution=128, num_classes=0, preset=model.config.preset)
    assert len(photos) == 100 and p1(model) >= 0.9 and p1(random_net) < 0.3
