"""Published MobileNet v1 numbers as data, each with its source, so that tests and plots compare
against what the paper and TF-slim printed (never against numbers typed from memory into a test).

Sources:

* ``PAPER``: Howard et al. 2017, "MobileNets: Efficient Convolutional Neural Networks for Mobile
  Vision Applications", arXiv:1704.04861 (v1), Tables 1, 2, 4, 5, 6 and 7.
* ``SLIM``: TF-slim's MobileNet v1 page, ``tensorflow/models`` ``research/slim/nets/mobilenet_v1.md``,
  the table of the ``mobilenet_v1_2018_02_22`` checkpoints (float models; the ``_quant`` rows have the
  same MACs and parameters and lower accuracy, and are not repeated here).

``RELEASES`` lists, for each variant of the grid, the published files of ImageNet weights (Keras Applications,
TF-slim's float checkpoints, TF Lite's uint8 files, and on the Hugging Face Hub Google's and timm's): where to
download each and what it is; :mod:`mobilenet.cache` and :mod:`mobilenet.hub` use it for ``pretrained=True``.

Which counting convention reproduces each number is worked out in :mod:`mobilenet.profile`
(``CONVENTIONS``) and pinned by ``tests/test_profile.py``. Where a printed number cannot be
reproduced under any convention, the row says so in ``note``; we keep the printed value here and
pin our own count in the tests.
"""

from __future__ import annotations

from dataclasses import dataclass

PAPER = "Howard et al. 2017, arXiv:1704.04861"
SLIM = "tensorflow/models research/slim/nets/mobilenet_v1.md (mobilenet_v1_2018_02_22)"


@dataclass(frozen=True)
class Table1Row:
    """One printed row of the paper's Table 1: "Type / Stride", "Filter Shape", "Input Size".

    ``repeat`` is 5 for the two rows of the printed "5x" group (the 14x14x512 blocks).
    """

    type_stride: str
    filter_shape: str
    input_size: str
    repeat: int = 1
    note: str = ""


# Table 1, "MobileNet Body Architecture", as printed (x for the paper's multiplication sign).
TABLE1: tuple[Table1Row, ...] = (
    Table1Row("Conv / s2", "3x3x3x32", "224x224x3"),
    Table1Row("Conv dw / s1", "3x3x32 dw", "112x112x32"),
    Table1Row("Conv / s1", "1x1x32x64", "112x112x32"),
    Table1Row("Conv dw / s2", "3x3x64 dw", "112x112x64"),
    Table1Row("Conv / s1", "1x1x64x128", "56x56x64"),
    Table1Row("Conv dw / s1", "3x3x128 dw", "56x56x128"),
    Table1Row("Conv / s1", "1x1x128x128", "56x56x128"),
    Table1Row("Conv dw / s2", "3x3x128 dw", "56x56x128"),
    Table1Row("Conv / s1", "1x1x128x256", "28x28x128"),
    Table1Row("Conv dw / s1", "3x3x256 dw", "28x28x256"),
    Table1Row("Conv / s1", "1x1x256x256", "28x28x256"),
    Table1Row("Conv dw / s2", "3x3x256 dw", "28x28x256"),
    Table1Row("Conv / s1", "1x1x256x512", "14x14x256"),
    Table1Row("Conv dw / s1", "3x3x512 dw", "14x14x512", repeat=5),
    Table1Row("Conv / s1", "1x1x512x512", "14x14x512", repeat=5),
    Table1Row("Conv dw / s2", "3x3x512 dw", "14x14x512"),
    Table1Row("Conv / s1", "1x1x512x1024", "7x7x512"),
    Table1Row("Conv dw / s2", "3x3x1024 dw", "7x7x1024",
              note="erratum: printed s2, but its input is already 7x7 and the next row's input is 7x7 too; "
                   "stride 1 in TF-slim's code and in every released checkpoint"),
    Table1Row("Conv / s1", "1x1x1024x1024", "7x7x1024"),
    Table1Row("Avg Pool / s1", "Pool 7x7", "7x7x1024"),
    Table1Row("FC / s1", "1024x1000", "1x1x1024"),
    Table1Row("Softmax / s1", "Classifier", "1x1x1000",
              note="not a layer of the model: it returns logits, and softmax has no parameters or MACs"),
)


def table1_expanded() -> list[Table1Row]:
    """Table 1 with the "5x" group unrolled in execution order (dw, pw, dw, pw, ...): 28 rows."""
    rows: list[Table1Row] = []
    i = 0
    while i < len(TABLE1):
        row = TABLE1[i]
        if row.repeat > 1:  # the repeated group is two consecutive rows (dw then pw)
            group = TABLE1[i:i + 2]
            for _ in range(row.repeat):
                rows.extend(Table1Row(r.type_stride, r.filter_shape, r.input_size, 1, r.note) for r in group)
            i += 2
        else:
            rows.append(row)
            i += 1
    return rows


@dataclass(frozen=True)
class Table2Row:
    """Table 2, "Resource Per Layer Type": percent of mult-adds and of parameters."""

    layer_type: str  # our profiler's type name
    printed_type: str  # the paper's label
    mult_adds_pct: float
    params_pct: float
    note: str = ""


TABLE2: tuple[Table2Row, ...] = (
    Table2Row("1x1 conv", "Conv 1x1", 94.86, 74.59),
    Table2Row("depthwise conv", "Conv DW 3x3", 3.06, 1.06),
    Table2Row("full conv", "Conv 3x3", 1.19, 0.02,
              note="printed 1.19% of mult-adds is not reproducible: the four printed shares then sum to 99.29%; "
                   "the stem's real share is 1.91% (the printed digits transposed), which makes them sum to 100%"),
    Table2Row("FC", "Fully Connected", 0.18, 24.33),
)


@dataclass(frozen=True)
class PaperModel:
    """One model row of Tables 4-7: ImageNet top-1 (%), million mult-adds, million parameters."""

    table: str
    name: str
    top1: float
    mult_adds_m: float
    params_m: float
    # keyword overrides for MobileNetV1 that build this model (resolution 224, 1000 classes unless given)
    config: tuple[tuple[str, object], ...] = ()
    note: str = ""

    @property
    def overrides(self) -> dict[str, object]:
        return dict(self.config)


PAPER_MODELS: tuple[PaperModel, ...] = (
    PaperModel("Table 4", "Conv MobileNet", 71.7, 4866, 29.3, (("conv_type", "full"),),
               note="4866M is our count without the FC layer (4866.27M); with it, as every other row counts, "
                    "4867.29M"),
    PaperModel("Table 4", "MobileNet", 70.6, 569, 4.2),
    PaperModel("Table 5", "0.75 MobileNet", 68.4, 325, 2.6, (("width_mult", 0.75),)),
    PaperModel("Table 5", "Shallow MobileNet", 65.3, 307, 2.9, (("shallow", True),)),
    PaperModel("Table 6", "1.0 MobileNet-224", 70.6, 569, 4.2),
    PaperModel("Table 6", "0.75 MobileNet-224", 68.4, 325, 2.6, (("width_mult", 0.75),)),
    PaperModel("Table 6", "0.5 MobileNet-224", 63.7, 149, 1.3, (("width_mult", 0.5),)),
    PaperModel("Table 6", "0.25 MobileNet-224", 50.6, 41, 0.5, (("width_mult", 0.25),)),
    PaperModel("Table 7", "1.0 MobileNet-224", 70.6, 569, 4.2),
    PaperModel("Table 7", "1.0 MobileNet-192", 69.1, 418, 4.2, (("resolution", 192),)),
    PaperModel("Table 7", "1.0 MobileNet-160", 67.2, 290, 4.2, (("resolution", 160),),
               note="we count 290.68M (TF-slim prints 291); 290 is that number truncated, while the other "
                    "rows are rounded (569 for 568.74M)"),
    PaperModel("Table 7", "1.0 MobileNet-128", 64.4, 186, 4.2, (("resolution", 128),)),
)


@dataclass(frozen=True)
class PublishedRow:
    """One row of TF-slim's MobileNet v1 table: million MACs, million parameters, top-1/top-5 (%)."""

    macs_m: float
    params_m: float
    top1: float
    top5: float
    note: str = ""


_SLIM_075 = ("TF-slim's 0.75 MACs are our count minus the stem convolution (e.g. 325.40M - 8.13M = 317.27M); "
             "the stem is included in every other width, so no single convention reproduces this row")

# Keyed by our variant names (mobilenet.zoo.variant_name); slim's names are MobileNet_v1_{alpha}_{resolution}.
SLIM_V1: dict[str, PublishedRow] = {
    "mobilenet_v1_100_224": PublishedRow(569, 4.24, 70.9, 89.9),
    "mobilenet_v1_100_192": PublishedRow(418, 4.24, 70.0, 89.2),
    "mobilenet_v1_100_160": PublishedRow(291, 4.24, 68.0, 87.7),
    "mobilenet_v1_100_128": PublishedRow(186, 4.24, 65.2, 85.8),
    "mobilenet_v1_075_224": PublishedRow(317, 2.59, 68.4, 88.2, _SLIM_075),
    "mobilenet_v1_075_192": PublishedRow(233, 2.59, 67.2, 87.3, _SLIM_075),
    "mobilenet_v1_075_160": PublishedRow(162, 2.59, 65.3, 86.0, _SLIM_075),
    "mobilenet_v1_075_128": PublishedRow(104, 2.59, 62.1, 83.9, _SLIM_075),
    "mobilenet_v1_050_224": PublishedRow(150, 1.34, 63.3, 84.9,
                                         "we count 149.4976M, 0.0024M below the rounding tie; 150 follows only "
                                         "if rounded twice (149.50, then 150); the paper's Table 6 prints 149"),
    "mobilenet_v1_050_192": PublishedRow(110, 1.34, 61.7, 83.6),
    "mobilenet_v1_050_160": PublishedRow(77, 1.34, 59.1, 81.9),
    "mobilenet_v1_050_128": PublishedRow(49, 1.34, 56.3, 79.4),
    "mobilenet_v1_025_224": PublishedRow(41, 0.47, 49.8, 74.2),
    "mobilenet_v1_025_192": PublishedRow(34, 0.47, 47.7, 72.3,
                                         "not reproducible: we count 30.21M, and 34M fits no convention "
                                         "(the other 0.25 rows scale with resolution squared as ours do)"),
    "mobilenet_v1_025_160": PublishedRow(21, 0.47, 45.5, 70.3),
    "mobilenet_v1_025_128": PublishedRow(14, 0.47, 41.5, 66.3),
}


# ------------------------------------------------------------------------------------ published weights files

KERAS_WEIGHTS = "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet/"
TF_MODELS = "https://storage.googleapis.com/download.tensorflow.org/models/"
HF_HUB = "https://huggingface.co/"

# Width multipliers as each publisher spells them in file names.
_KERAS_ALPHA = {1.0: "1_0", 0.75: "7_5", 0.5: "5_0", 0.25: "2_5"}  # keras.applications.mobilenet's alpha_text
_TF_ALPHA = {1.0: "1.0", 0.75: "0.75", 0.5: "0.5", 0.25: "0.25"}


@dataclass(frozen=True)
class Release:
    """One published file of ImageNet weights for a variant of the grid.

    ``source`` is the name the weights keep in the pretrained cache (:mod:`mobilenet.hub`), i.e. what
    ``mobilenet convert`` makes of the file: ``keras`` (Keras Applications ``.h5``, 1000 classes), ``slim``
    (TF-slim's float checkpoint, 1001 classes, in a ``.tgz`` with the float ``.tflite``), ``tflite_quant``
    (the quantization-aware trained uint8 ``.tflite``, 1001 classes, in a ``.tgz``), ``huggingface`` (Google's
    checkpoint as a transformers ``MobileNetV1ForImageClassification``) or ``timm`` (timm's own training).
    ``url`` downloads it by hand; ``hub`` is ``(repo id, file)`` on the Hugging Face Hub where it is there.
    """

    source: str
    url: str
    hub: tuple[str, str] | None = None
    note: str = ""

    @property
    def file_name(self) -> str:
        """The name of the downloaded file (the last part of the URL)."""
        return self.url.rsplit("/", 1)[-1]


# Google's checkpoints converted by Hugging Face (transformers' MobileNetV1, 1001 classes) and timm's own
# training, the only MobileNet v1 weights of the grid on the Hugging Face Hub.
_HUB: dict[str, tuple[Release, ...]] = {
    "mobilenet_v1_100_224": (
        Release("huggingface", HF_HUB + "google/mobilenet_v1_1.0_224/resolve/main/pytorch_model.bin",
                ("google/mobilenet_v1_1.0_224", "pytorch_model.bin"), "Google's TF-slim checkpoint, 1001 classes"),
        Release("timm", HF_HUB + "timm/mobilenetv1_100.ra4_e3600_r224_in1k/resolve/main/model.safetensors",
                ("timm/mobilenetv1_100.ra4_e3600_r224_in1k", "model.safetensors"),
                "timm's own training (ReLU6, symmetric padding: the timm preset), 1000 classes"),
    ),
    "mobilenet_v1_075_192": (
        Release("huggingface", HF_HUB + "google/mobilenet_v1_0.75_192/resolve/main/pytorch_model.bin",
                ("google/mobilenet_v1_0.75_192", "pytorch_model.bin"), "Google's TF-slim checkpoint, 1001 classes"),
    ),
}


def _releases(width_mult: float, resolution: int) -> tuple[Release, ...]:
    keras, tf = _KERAS_ALPHA[width_mult], _TF_ALPHA[width_mult]
    return (
        Release("keras", f"{KERAS_WEIGHTS}mobilenet_{keras}_{resolution}_tf.h5",
                note="Keras Applications, 1000 classes"),
        Release("slim", f"{TF_MODELS}mobilenet_v1_2018_02_22/mobilenet_v1_{tf}_{resolution}.tgz",
                note="TF-slim float checkpoint (.tgz), 1001 classes"),
        Release("tflite_quant", f"{TF_MODELS}mobilenet_v1_2018_08_02/mobilenet_v1_{tf}_{resolution}_quant.tgz",
                note="TF Lite uint8, quantization-aware trained (.tgz), 1001 classes"),
    )


# Keyed by our variant names (mobilenet.zoo.variant_name): every file published for that variant.
RELEASES: dict[str, tuple[Release, ...]] = {
    f"mobilenet_v1_{round(100 * a):03d}_{r}": _releases(a, r) + _HUB.get(f"mobilenet_v1_{round(100 * a):03d}_{r}", ())
    for a in _KERAS_ALPHA for r in (224, 192, 160, 128)
}
