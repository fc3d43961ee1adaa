"""Datasets as in-memory tensors and device-side batching, one module per concept:

- classes:   the class names of the built-in datasets (all that scores.py needs from here)
- dataset:   Dataset, and narrowing one to some classes or a subset of examples
- sources:   Source, the base of every `data` config option, and the classes a run uses
- synthetic, cifar, folder, arrays: the built-in sources
- images:    decoding image files (forked workers for large sets)
- loading:   load_dataset: a source's examples subsampled and split, the last one kept in memory
- latest:    the one-entry cache behind that and behind batching's padded images
- batching:  training, packed and evaluation batches, with augmentation as batched tensor ops

The `data` config group names its sources by the names below (`_target_: lossbench.data.Synthetic`), and every
run directory records them in its config.yaml: they stay importable from here whatever module defines them.
"""

from lossbench.data.arrays import Arrays
from lossbench.data.cifar import TorchvisionCIFAR
from lossbench.data.folder import ImageFolder
from lossbench.data.sources import Source
from lossbench.data.synthetic import Synthetic

__all__ = ["Arrays", "ImageFolder", "Source", "Synthetic", "TorchvisionCIFAR"]
