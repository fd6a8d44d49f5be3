"""Pretrained weights by name: the cache (mobilenet.cache), filling it (mobilenet.hub, `mobilenet pretrained`),
`create_model(name, pretrained=True)`. Nothing here reaches the network: the caches are built by the tests, and
the Hugging Face Hub is a real HTTP server on 127.0.0.1 serving a file the test wrote."""

from __future__ import annotations

import hashlib
import http.server
import importlib.util
import io
import os
import socket
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import mobilenet
from mobilenet.cache import PretrainedNotFound, cache_dir, cache_path, cached, not_found_message, resolve_weights
from mobilenet.checkpoint import WeightsFileError
from mobilenet.cli import main
from mobilenet.convert import import_model
from mobilenet.convert.keras import name_hints
from mobilenet.hub import add
from mobilenet.published import RELEASES
from mobilenet.zoo import VARIANTS
from tests.conftest import REPO, shared_file
from tests.convert_writers import hf_state, randomize_bn, slim_variables, write_tf_checkpoint

TFLITE = ("weights", "tflite", "mobilenet_v1_0.25_128_quant.tflite")


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MOBILENET_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The real command in a child process (the Hub client reads HF_ENDPOINT when it is imported)."""
    return subprocess.run([sys.executable, "-m", "mobilenet", *args], capture_output=True, text=True, timeout=300,
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO), **env})


def test_cache_location(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MOBILENET_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "mobilenet"
    monkeypatch.setenv("MOBILENET_CACHE", str(tmp_path / "mine"))
    expected = tmp_path / "mine" / "pretrained" / "mobilenet_v1_025_128.keras.safetensors"
    assert cache_path("mobilenet_v1_025_128", "keras") == expected
    from mobilenet.data.cifar10 import cifar10_cache_path

    assert cifar10_cache_path().parent == tmp_path / "mine"  # one cache for downloads and weights


def test_every_variant_has_its_published_files() -> None:
    assert set(RELEASES) == set(VARIANTS)
    for name, releases in RELEASES.items():
        cfg = VARIANTS[name]
        by_source = {r.source: r for r in releases}
        assert {"keras", "slim", "tflite_quant"} <= set(by_source), name
        # the file names are those the importers read the width and resolution from
        assert name_hints(by_source["keras"].file_name) == (cfg["width_mult"], cfg["resolution"])
        for source, suffix in (("slim", ".tgz"), ("tflite_quant", "_quant.tgz")):
            alpha, resolution = by_source[source].file_name.removesuffix(suffix).split("_")[2:]
            assert (float(alpha), int(resolution)) == (cfg["width_mult"], cfg["resolution"]), name
    hub = {name: [r.hub for r in rs if r.hub] for name, rs in RELEASES.items() if any(r.hub for r in rs)}
    assert hub == {"mobilenet_v1_100_224": [("google/mobilenet_v1_1.0_224", "pytorch_model.bin"),
                                            ("timm/mobilenetv1_100.ra4_e3600_r224_in1k", "model.safetensors")],
                   "mobilenet_v1_075_192": [("google/mobilenet_v1_0.75_192", "pytorch_model.bin")]}


def test_missing_weights_say_what_to_download_in_one_line(cache: Path) -> None:
    with pytest.raises(PretrainedNotFound) as e:
        mobilenet.create_model("mobilenet_v1_025_128", pretrained=True)
    line = str(e.value)
    assert "\n" not in line and str(cache / "pretrained") in line
    assert "download https://storage.googleapis.com/tensorflow/keras-applications/mobilenet/mobilenet_2_5_128_tf.h5" \
           in line and "`mobilenet pretrained mobilenet_v1_025_128 --add mobilenet_2_5_128_tf.h5`" in line
    hub = not_found_message("mobilenet_v1_100_224")
    assert "or run `mobilenet pretrained mobilenet_v1_100_224` online (Hugging Face Hub google/mobilenet_v1_1.0_224)" \
           in hub
    with pytest.raises(ValueError, match="unknown model 'mobilenet_v1_100_225'"):
        mobilenet.create_model("mobilenet_v1_100_225", pretrained=True)
    with pytest.raises(ValueError, match="no published caffe file for mobilenet_v1_025_128"):
        mobilenet.create_model("mobilenet_v1_025_128", pretrained="caffe")


def test_pretrained_from_the_cache_equals_the_published_file(cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tflite = shared_file(*TFLITE)
    assert main(["pretrained", "mobilenet_v1_025_128", "--add", str(tflite)]) == 0
    target = cache / "pretrained" / "mobilenet_v1_025_128.tflite_quant.safetensors"
    assert f"added mobilenet_v1_025_128 (tflite_quant): {target}" in capsys.readouterr().out
    assert [(c.name, c.source) for c in cached()] == [("mobilenet_v1_025_128", "tflite_quant")]
    assert resolve_weights("mobilenet_v1_025_128") == target == resolve_weights("mobilenet_v1_025_128.tflite_quant")

    model = mobilenet.create_model("mobilenet_v1_025_128", pretrained=True)
    assert not model.training  # with weights it comes back in eval mode, as from mobilenet.load
    reference = import_model(tflite)
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))
    info = model.weights_info
    assert info.classes[1] == "n01440764" and info.preprocessing == reference.weights_info.preprocessing
    assert info.source.format == "tflite" and model.config.preset == "tf"

    # fine-tuning: the body of the file, a new classifier; conflicting architecture refused in one line
    tuned = mobilenet.create_model("mobilenet_v1_025_128", pretrained=True, num_classes=3, dropout=0.2)
    assert tuned.num_classes == 3 and tuned.weights_info.classes is None and tuned.config.dropout == 0.2
    key = "blocks.12.pw.conv.weight"
    assert torch.equal(tuned.state_dict()[key], reference.state_dict()[key])
    with pytest.raises(WeightsFileError, match="holds a preset='tf' model: mobilenet_v1_025_128 with preset='paper'"):
        mobilenet.create_model("mobilenet_v1_025_128", pretrained=True, preset="paper")
    with pytest.raises(ValueError, match="pretrained= or weights=, not both"):
        mobilenet.create_model("mobilenet_v1_025_128", pretrained=True, weights=str(target))


def _tgz(path: Path, files: dict[str, bytes]) -> Path:
    """An archive laid out as Google publishes them (members under ./, one folder level)."""
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            member = tarfile.TarInfo(f"./{name}")
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    return path


def test_google_archives_are_added_as_published(cache: Path, tmp_path: Path) -> None:
    # the uint8 archive: its .tflite
    tflite = shared_file(*TFLITE)
    quant = _tgz(tmp_path / "mobilenet_v1_0.25_128_quant.tgz", {
        "mobilenet_v1_0.25_128_quant.tflite": tflite.read_bytes(),
        "mobilenet_v1_0.25_128_quant_info.txt": b"Model: mobilenet_v1_0.25_128_quant\n"})
    entry = add(quant)
    assert (entry.name, entry.source) == ("mobilenet_v1_025_128", "tflite_quant")
    # the float archive: the TF-slim checkpoint (real BatchNorm statistics) rather than its folded .tflite
    model = randomize_bn(mobilenet.MobileNetV1(width_mult=0.5, resolution=160, preset="tf", num_classes=1001))
    (tmp_path / "ckpt").mkdir()
    prefix = write_tf_checkpoint(tmp_path / "ckpt" / "mobilenet_v1_0.5_160.ckpt", slim_variables(model))
    files = {p.name: p.read_bytes() for p in prefix.parent.iterdir()}
    slim = _tgz(tmp_path / "mobilenet_v1_0.5_160.tgz", {**files, "mobilenet_v1_0.5_160.tflite": b"TFL3 ignored"})
    entry = add(slim)
    assert (entry.name, entry.source) == ("mobilenet_v1_050_160", "slim")
    again = mobilenet.create_model("mobilenet_v1_050_160", pretrained="slim").eval()
    x = torch.randn(1, 3, 160, 160)
    with torch.no_grad():
        torch.testing.assert_close(again(x), model.eval()(x), rtol=0, atol=1e-5)
    assert [c.source for c in cached("mobilenet_v1_050_160")] == ["slim"]


def test_a_file_outside_the_grid_is_refused(cache: Path, tmp_path: Path) -> None:
    model = mobilenet.MobileNetV1(width_mult=0.25, resolution=96, preset="tf", num_classes=1001)
    prefix = write_tf_checkpoint(tmp_path / "mobilenet_v1_0.25_96.ckpt", slim_variables(model))
    with pytest.raises(ValueError, match="0.25, 96 px MobileNet v1, not a variant of the grid"):
        add(f"{prefix}.index")
    with pytest.raises(FileNotFoundError, match="published weights file not found"):
        add(tmp_path / "nothing.h5")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_offline_hub_fails_at_once_in_one_line(tmp_path: Path) -> None:
    env = {"MOBILENET_CACHE": str(tmp_path / "cache"), "HF_ENDPOINT": f"http://127.0.0.1:{_closed_port()}",
           "HF_HUB_OFFLINE": ""}
    done = run_cli("pretrained", "mobilenet_v1_100_224", env=env)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    line = done.stderr.strip()
    assert len(line.splitlines()) == 1, done.stderr
    assert "offline:" in line and "unreachable" in line or "huggingface_hub is not installed" in line
    assert "download https://huggingface.co/google/mobilenet_v1_1.0_224/resolve/main/pytorch_model.bin" in line
    assert "`mobilenet pretrained mobilenet_v1_100_224 --add pytorch_model.bin`" in line


class _Hub(http.server.BaseHTTPRequestHandler):
    """The two requests the Hub client makes for a file: HEAD (commit, ETag, size) then GET."""

    files: dict[str, bytes] = {}

    def _answer(self) -> bytes | None:
        data = self.files.get(self.path)
        self.send_response(200 if data is not None else 404)
        self.send_header("Content-Length", str(len(data) if data is not None else 0))
        if data is not None:
            self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
            self.send_header("X-Repo-Commit", "0" * 40)
        self.end_headers()
        return data

    def do_HEAD(self) -> None:  # noqa: N802 (http.server's name)
        self._answer()

    def do_GET(self) -> None:  # noqa: N802
        data = self._answer()
        if data is not None:
            self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def local_hub() -> Iterator[type[_Hub]]:
    handler = type("Hub", (_Hub,), {"files": {}})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    handler.endpoint = f"http://127.0.0.1:{server.server_address[1]}"  # type: ignore[attr-defined]
    yield handler
    server.shutdown()
    server.server_close()


@pytest.mark.slow
def test_download_from_the_hub_over_http(tmp_path: Path, local_hub: type[_Hub],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    if importlib.util.find_spec("huggingface_hub") is None:
        pytest.skip("huggingface_hub is not installed (pip install 'mobilenet[hub]')")
    # Google's 0.75/192 checkpoint as Hugging Face publishes it: transformers' layout, torch.save'd
    model = randomize_bn(mobilenet.MobileNetV1(width_mult=0.75, resolution=192, preset="tf", num_classes=1001))
    blob = io.BytesIO()
    torch.save(hf_state(model), blob)
    local_hub.files["/google/mobilenet_v1_0.75_192/resolve/main/pytorch_model.bin"] = blob.getvalue()
    env = {"MOBILENET_CACHE": str(tmp_path / "cache"), "HF_ENDPOINT": local_hub.endpoint,  # type: ignore[attr-defined]
           "HF_HUB_OFFLINE": "", "HF_HUB_DISABLE_TELEMETRY": "1"}
    done = run_cli("pretrained", "mobilenet_v1_075_192", env=env)
    assert done.returncode == 0, done.stderr
    target = tmp_path / "cache" / "pretrained" / "mobilenet_v1_075_192.huggingface.safetensors"
    assert f"downloaded mobilenet_v1_075_192 (huggingface): {target}" in done.stdout
    monkeypatch.setenv("MOBILENET_CACHE", str(tmp_path / "cache"))
    again = mobilenet.create_model("mobilenet_v1_075_192", pretrained=True).eval()
    x = torch.randn(1, 3, 192, 192)
    with torch.no_grad():
        torch.testing.assert_close(again(x), model.eval()(x), rtol=0, atol=1e-5)
    assert again.config.resolution == 192 and again.weights_info.classes[0] == "background"
    # cached now: asking again answers from the cache, without the Hub
    done = run_cli("pretrained", "mobilenet_v1_075_192", env={**env, "HF_ENDPOINT": f"http://127.0.0.1:{_closed_port()}"})
    assert done.returncode == 0 and str(target) in done.stdout
