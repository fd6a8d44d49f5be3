"""One training engine for every task.

=============  ============================================================================================
``loop``       :func:`~mobilenet.engine.loop.run`: devices and DDP, AMP, EMA, schedules, signals,
               checkpoints and exact resume, metrics, curves; the :class:`~mobilenet.engine.loop.Task` protocol
``data``       how batches reach a task: per-sample seeded datasets through a DataLoader, or a decoded set
               on the device augmented batch by batch (:class:`~mobilenet.engine.data.DeviceData`)
``classify``   image classification: ``train(cfg)`` / ``fit(cfg)`` with a :class:`~mobilenet.recipe.TrainConfig`
``detect``     SSD detection: ``train_detector(cfg)`` / ``fit_detector(cfg)`` with a
               :class:`~mobilenet.recipe.DetectConfig`
=============  ============================================================================================
"""

from .classify import fit, train
from .detect import fit_detector, train_detector
from .loop import final_weights, run

__all__ = ["final_weights", "fit", "fit_detector", "run", "train", "train_detector"]
