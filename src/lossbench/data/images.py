"""Image decoding: any file PIL reads, made 8-bit RGB by what its values mean, resized, in parallel.

Large sets are decoded by forked worker processes (Linux), each set up to ignore the terminal's signals and to die
with its parent (prctl's PR_SET_PDEATHSIG, through ctypes); smaller ones, and other systems, by threads.
"""

from __future__ import annotations

import ctypes
import math
import multiprocessing
import os
import signal
import sys
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import contextmanager
from functools import lru_cache, partial
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from lossbench.cpus import usable_cpus
from lossbench.errors import LossbenchError, one_line

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}  # and every one PIL reads:
# PIL's registered formats that can be opened, except stubs and formats it identifies but cannot decode here.
UNDECODABLE_FORMATS = {"BUFR", "GRIB", "HDF5", "WMF", "MPEG", "EPS"}


@lru_cache(maxsize=1)
def image_extensions() -> frozenset[str]:
    """Every file extension PIL reads images from (.ppm, .jfif, .pgm, .tga, .ico, ...), lower case."""
    from PIL import Image

    Image.init()
    readable = {
        ext.lower()
        for ext, fmt in Image.registered_extensions().items()
        if fmt in Image.OPEN and fmt not in UNDECODABLE_FORMATS
    }
    return frozenset(readable | IMAGE_EXTENSIONS)


ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa"}


def to_rgb(img):
    """8-bit RGB from any PIL mode, by what its values mean rather than by clipping them:
    - 16-bit grey (I;16, I;16B, ...): 0..65535 -> 0..255 (divided by 257);
    - I (32-bit integer, how many tools store 16-bit data): read as 16-bit too, clamped to 0..65535 first;
    - F (32-bit float): read as 0..1, or as 0..255 when its values go above 1 (as many tools write floats), clamped
      (NaN -> 0);
    - transparency (RGBA, LA, PA, a palette or colour key): composited over black, so a transparent pixel is 0
      whatever colour it happens to hide;
    - everything else (1, L, P, CMYK, YCbCr, LAB, HSV ...): PIL's own conversion."""
    from PIL import Image

    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        values = np.asarray(img, dtype=np.float64)
        scale = 1 / 257
        if img.mode == "F":
            scale = 1.0 if np.nanmax(values, initial=0.0) > 1 else 255.0
        values = np.nan_to_num(values * scale, nan=0.0)
        return Image.fromarray(values.clip(0, 255).round().astype(np.uint8), "L").convert("RGB")
    if img.mode in ALPHA_MODES or "transparency" in img.info:
        rgba = img.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba).convert("RGB")
    return img.convert("RGB")


PROCESS_DECODE_MIN = 2000  # images; fewer decode faster in threads than worker processes start
DECODE_CHUNK = 500  # images a worker decodes at a time: short enough that no worker waits long on another


def decode_images(paths: Sequence[Path], size: int) -> Tensor:
    """The images at `paths`, in order, as one uint8 tensor [N, 3, size, size]. Decoding a small image is mostly
    Python, so threads take turns on the GIL and more cores barely help them. Large sets are therefore split
    between forked worker processes on Linux (a fork imports nothing; the workers run only PIL), one per core this
    process may use (lossbench.cpus: its affinity and cgroup quota); elsewhere threads decode."""
    linux = sys.platform == "linux"
    workers = min(usable_cpus(), max(1, len(paths)))
    if workers > 1 and len(paths) >= PROCESS_DECODE_MIN and linux:
        # Chunks of at most DECODE_CHUNK images: no worker waits long on another's last chunk, nor Ctrl-C on them.
        step = min(DECODE_CHUNK, math.ceil(len(paths) / workers))
        chunks = [paths[i : i + step] for i in range(0, len(paths), step)]
        with (
            _forking_from_threads(),
            ProcessPoolExecutor(
                workers,
                mp_context=multiprocessing.get_context("fork"),
                initializer=_follow_parent,
                initargs=(os.getpid(),),
            ) as pool,
        ):
            try:
                arrays = list(pool.map(partial(_decode_all, size=size), chunks))
            except BaseException:
                # Ctrl-C: the chunks not started are dropped, and only those being decoded are waited for. map
                # cancels them itself only once it has submitted every chunk; a Ctrl-C while it submits (the first
                # chunks already decoding) would otherwise wait for all of them.
                pool.shutdown(cancel_futures=True)
                raise
    else:
        arrays = [_decode_all(paths, size, threads=workers)]
    return torch.from_numpy(np.concatenate(arrays))


@contextmanager
def _forking_from_threads() -> Iterator[None]:
    """Python 3.12+ warns at each fork of a process with threads (torch's OpenMP pool, once it has run) that the
    child may deadlock on a lock another thread held at the fork. The decoding workers run only PIL and numpy on
    their own chunk: never torch or OpenMP, whose state a fork breaks; glibc's malloc is fork-safe, and Python
    reinitialises its interpreter's and logging's locks in a forked child. Spawn or forkserver would cost each
    worker an import of lossbench, torch included, which takes longer than decoding a small set."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r".*use of fork\(\) may lead to deadlocks", DeprecationWarning)
        yield


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _follow_parent(parent: int) -> None:
    """A decoding worker's set-up. It ignores Ctrl-C and SIGTERM (which reach the whole process group): the parent
    stops the pool and reports the interruption once, instead of each worker printing a traceback. And it dies
    with its parent: after a kill -9 of the parent, forked workers would wait forever for work on a queue whose
    other end their siblings still hold open."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the line above took effect
        os._exit(1)


def _decode_all(paths: Sequence[Path], size: int, threads: int = 1) -> np.ndarray:
    """[len(paths), 3, size, size] uint8, decoded by `threads` threads."""
    from PIL import Image

    # _decode warns about large images naming the file; PIL's own warning (the same, without the file) is dropped.
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    with ThreadPoolExecutor(max_workers=threads) as pool:
        images = list(pool.map(partial(_decode, size=size), paths))
    return np.stack(images) if images else np.empty((0, 3, size, size), dtype=np.uint8)


def _decode(path: Path, size: int) -> np.ndarray:
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            if img.width * img.height > (Image.MAX_IMAGE_PIXELS or math.inf):  # PIL's own warning names no file
                warnings.warn(
                    f"{path}: {img.width}x{img.height} pixels, more than PIL's limit of "
                    f"{Image.MAX_IMAGE_PIXELS} (a decompression bomb?); decoding it anyway",
                    stacklevel=2,
                )
            img = to_rgb(ImageOps.exif_transpose(img))
            if img.size != (size, size):
                img = img.resize((size, size), Image.BILINEAR)
            pixels = np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as err:
        raise LossbenchError(f"{path}: cannot read image ({one_line(err)})") from None
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))
