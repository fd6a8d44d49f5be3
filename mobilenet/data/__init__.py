"""Datasets and transforms for classification: image folders (class folders, or flat + labels), zip/tar archives,
CIFAR-10, the bundled digits.

```python
from mobilenet.data import open_image_dataset, split_dataset, train_transform, eval_transform
ds = open_image_dataset("photos.zip", transform=train_transform("imagenet", Preprocessing.imagenet()))
train_ds, val_ds = split_dataset(ds, val_fraction=0.1, seed=0, val_transform=eval_transform(pre))
images, labels = load_tensor_dataset("cifar10:../shared/data/cifar10#test")   # uint8 (N, 3, 32, 32), (N,)
val = open_image_dataset("val/", labels="val.txt", class_names=names)   # flat folder + "<file> <label>" lines
batches = make_eval_loader(val, 64, transform=eval_transform(pre))   # unreadable images left out: batches.skipped
```
"""

from .batch_augment import cutout, iterate_batches, normalize_batch, random_crop_flip
from .cifar10 import CIFAR10_CLASSES, download_cifar10, open_cifar10, read_cifar10_batches, safe_unpickle
from .dataset import (
    ArrayImageDataset,
    EncodedImageDataset,
    ImageDataset,
    LeaveOutUnreadable,
    SubsetView,
    Unreadable,
    split_dataset,
)
from .decode import IMAGE_EXTENSIONS, ImageDecodeError, available_decoders, decode_image, read_image
from .digits import DIGIT_CLASSES, open_digits
from .flat import FROM_FILENAME, index_flat, label_from_filename, open_flat_folder, parse_labels_file
from .loader import make_eval_loader, make_loader
from .sources import open_image_dataset
from .tensors import DecodedImages, load_tensor_dataset
from .transforms import eval_transform, train_transform

__all__ = [
    "CIFAR10_CLASSES", "DIGIT_CLASSES", "FROM_FILENAME", "IMAGE_EXTENSIONS", "ArrayImageDataset", "DecodedImages",
    "EncodedImageDataset", "ImageDataset", "ImageDecodeError", "LeaveOutUnreadable", "SubsetView", "Unreadable",
    "available_decoders", "cutout", "decode_image", "download_cifar10", "eval_transform",
    "index_flat", "iterate_batches", "label_from_filename", "load_tensor_dataset", "make_eval_loader", "make_loader",
    "normalize_batch", "open_cifar10", "open_digits", "open_flat_folder", "open_image_dataset", "parse_labels_file",
    "random_crop_flip", "read_cifar10_batches", "read_image", "safe_unpickle", "split_dataset", "train_transform",
]
