"""Datasets as uint8 tensors (synthetic, image folder), subsets, class restriction, and batched augmentation."""

from __future__ import annotations

import os
import re
import sys
import warnings
from dataclasses import make_dataclass
from pathlib import Path

import pytest
import torch
from conftest import HANG_S, make_cfg
from hydra.utils import get_object
from omegaconf import OmegaConf
from PIL import Image

import lossbench.data.images as images_module
import lossbench.data.loading as loading_module
from lossbench.data.batching import Batches, feature_stats
from lossbench.data.classes import CIFAR10_CLASSES, CIFAR100_CLASSES
from lossbench.data.latest import Latest
from lossbench.data.loading import load_dataset, stratified_subset
from lossbench.data.sources import Source, dataset_classes
from lossbench.data.synthetic import synthetic
from lossbench.errors import LossbenchError
from lossbench.scores import load_scores
from lossbench.trust import check_config, own_targets

ROOT = Path(__file__).resolve().parent.parent


def synthetic_data(*overrides: str):
    cfg = make_cfg("data.train_size=600", "data.test_size=200", "data.val_size=null", *overrides)
    classes = dataset_classes(cfg.data)
    scores = load_scores(cfg.scores.name, classes, warn=False)
    return load_dataset(cfg.data, classes, scores.matrix), scores


def test_synthetic_is_deterministic_uint8_cifar_shaped():
    a, _ = synthetic_data()
    b, _ = synthetic_data()
    assert a.train_x.dtype == torch.uint8 and a.train_x.shape == (600, 3, 32, 32)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    assert a.classes == CIFAR10_CLASSES
    assert torch.bincount(a.train_y).tolist() == [60] * 10
    c, _ = synthetic_data("data.seed=1")
    assert not torch.equal(a.train_x, c.train_x)


def test_synthetic_classes_with_higher_scores_look_more_alike():
    data, scores = synthetic_data("data.noise=0")
    means = torch.stack([data.train_x[data.train_y == c].float().mean(0).flatten() for c in range(10)])
    corr = torch.corrcoef(means)
    s = scores.matrix
    near = corr[(s == 1)].mean()
    far = corr[(s == -1)].mean()
    assert near > far + 0.2


def test_restrict_classes_relabels_in_the_given_order():
    data, _ = synthetic_data("data.classes=[truck,cat]")
    assert data.classes == ["truck", "cat"]
    assert set(data.train_y.tolist()) == {0, 1}


def test_absent_class_is_an_error():
    with pytest.raises(LossbenchError, match=r"data.classes: \['unicorn'\] not in the synthetic dataset"):
        dataset_classes(make_cfg("data.classes=[cat,unicorn]").data)


def test_stratified_subset_is_seeded_and_balanced():
    labels = torch.arange(1000) % 4
    a = stratified_subset(labels, 102, 4, torch.Generator().manual_seed(0))
    b = stratified_subset(labels, 102, 4, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and len(a) == 102
    assert sorted(torch.bincount(labels[a]).tolist()) == [25, 25, 26, 26]


def make_folder(root, classes=("cat", "dog"), per_class=3, size=40):
    for split in ("train", "test"):
        for i, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True)
            for j in range(per_class):
                Image.new("RGB", (size, size), (40 * i + j, 100, 200)).save(folder / f"{j}.png")
    return root


def folder_cfg(root, *overrides):
    return make_cfg(
        "data=imagefolder", f"data.root={root}", f"data.cache_dir={root}/cache", "data.val_size=null", *overrides
    ).data


def test_image_folder_is_decoded_resized_and_cached(tmp_path):
    root = make_folder(tmp_path / "images")
    cfg = folder_cfg(root)
    classes = dataset_classes(cfg)
    assert classes == ["cat", "dog"]
    data = load_dataset(cfg, classes, torch.eye(2))
    assert data.train_x.shape == (6, 3, 32, 32) and data.train_x.dtype == torch.uint8
    assert data.train_y.tolist() == [0, 0, 0, 1, 1, 1]
    assert data.train_x[4, :, 0, 0].tolist() == [41, 100, 200]
    assert len(list((root / "cache" / "lossbench").glob("*.pt"))) == 1
    again = load_dataset(cfg, classes, torch.eye(2))
    assert torch.equal(again.train_x, data.train_x)


def test_image_folder_errors_name_the_culprit(tmp_path):
    with pytest.raises(LossbenchError, match="directory not found"):
        dataset_classes(folder_cfg(tmp_path / "missing"))
    root = make_folder(tmp_path / "a")
    (root / "test" / "dog").rename(root / "test" / "bird")
    with pytest.raises(LossbenchError, match=r"train and test have different classes \(only in train: \['dog'\]"):
        dataset_classes(folder_cfg(root))
    root = make_folder(tmp_path / "b")
    for f in (root / "train" / "dog").iterdir():
        f.unlink()
    with pytest.raises(LossbenchError, match=r"train/dog: no image files"):
        load_dataset(folder_cfg(root), ["cat", "dog"], torch.eye(2))
    root = make_folder(tmp_path / "c")
    (root / "train" / "cat" / "0.png").write_bytes(b"not an image")
    with pytest.raises(LossbenchError, match=r"train/cat/0.png: cannot read image"):
        load_dataset(folder_cfg(root), ["cat", "dog"], torch.eye(2))
    empty = tmp_path / "d"
    (empty / "train").mkdir(parents=True)
    (empty / "test").mkdir()
    with pytest.raises(LossbenchError, match="no class directories"):
        dataset_classes(folder_cfg(empty))


def test_cifar_not_found_without_download(tmp_path):
    cfg = make_cfg("experiment=cifar10", f"data.root={tmp_path}", "data.download=false").data
    with pytest.raises(LossbenchError, match="cifar10 not found"):
        load_dataset(cfg, CIFAR10_CLASSES, torch.eye(10))


def batches(images, padding=4, flip=True, seed=0):
    labels = torch.arange(len(images))
    mean, std = torch.zeros(1, 3, 1, 1), torch.ones(1, 3, 1, 1)
    return Batches(images, labels, 4, mean, std, torch.Generator().manual_seed(seed), padding, flip)


def test_batches_without_augmentation_return_the_images_channels_last():
    images = torch.randint(0, 256, (8, 3, 6, 6), dtype=torch.uint8)
    loader = batches(images, padding=0, flip=False)
    assert len(loader) == 2
    for x, y in loader:
        assert x.is_contiguous(memory_format=torch.channels_last) and x.dtype == torch.float32
        torch.testing.assert_close(x, images[y].float())


def test_crop_and_flip_are_shifted_or_mirrored_copies():
    images = torch.randint(1, 256, (64, 3, 8, 8), dtype=torch.uint8)  # no zeros: padding is recognisable
    index = torch.arange(64)
    loader = batches(images)
    out = loader.examples(index, loader.draw(len(index)))
    padded = torch.nn.functional.pad(images.float(), (4, 4, 4, 4))
    flips = 0
    for i in range(64):
        found = [
            (dy, dx, f)
            for dy in range(9)
            for dx in range(9)
            for f in (False, True)
            if torch.equal(out[i], (lambda c: c.flip(2) if f else c)(padded[i, :, dy : dy + 8, dx : dx + 8]))
        ]
        assert found, i
        flips += found[0][2]
    assert 10 < flips < 54  # about half are mirrored


def test_same_seed_same_order_and_augmentation():
    images = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8)
    a = [x for x, _ in batches(images, seed=3)]
    b = [x for x, _ in batches(images, seed=3)]
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_feature_stats():
    images = torch.full((4, 3, 2, 2), 10, dtype=torch.uint8)
    images[:, 1] = 20
    mean, std = feature_stats(images)
    assert mean.flatten().tolist() == pytest.approx([10, 20, 10])
    assert std.shape == (1, 3, 1, 1)


def test_synthetic_generic_names():
    cfg = make_cfg(
        "data.names=generic", "data.num_classes=3", "scores=identity", "data.train_size=30", "data.test_size=30"
    ).data
    classes = dataset_classes(cfg)
    assert classes == ["class_000", "class_001", "class_002"]
    assert synthetic(cfg, classes, torch.eye(3)).train_x.shape[0] == 30


def test_image_folder_decodes_only_the_chosen_subset(tmp_path, monkeypatch):
    """A small trial run on a large folder pays only for the images it uses; the cache is keyed on them."""
    root = make_folder(tmp_path / "images")
    decoded = []
    real_decode = images_module._decode
    monkeypatch.setattr(images_module, "_decode", lambda path, size: decoded.append(path) or real_decode(path, size))
    small = load_dataset(folder_cfg(root, "data.train_size=2", "data.test_size=2"), ["cat", "dog"], torch.eye(2))
    assert len(small.train_y) == 2 and len(decoded) == 4  # 2 train + 2 test, not the whole folder
    decoded.clear()
    # as a new process: only the disk cache remains
    monkeypatch.setattr(loading_module, "_last_loaded", Latest())
    load_dataset(folder_cfg(root, "data.train_size=2", "data.test_size=2"), ["cat", "dog"], torch.eye(2))
    assert decoded == []  # the disk cache
    full = load_dataset(folder_cfg(root), ["cat", "dog"], torch.eye(2))
    assert len(decoded) == len(full.train_y) + len(full.test_y)  # another subset: another cache entry


needs_fork_and_two_cores = pytest.mark.skipif(
    sys.platform != "linux" or (os.cpu_count() or 1) < 2, reason="worker processes decode on Linux with 2+ cores"
)


@needs_fork_and_two_cores
def test_large_image_sets_are_decoded_by_worker_processes_into_the_same_tensor(tmp_path, monkeypatch):
    """Threads take turns on the GIL, so large sets go to forked workers: same images, same order."""
    paths = sorted((make_folder(tmp_path / "images", per_class=7) / "train").rglob("*.png"))
    by_threads = images_module.decode_images(paths, 8)
    pools = []
    real_pool = images_module.ProcessPoolExecutor
    monkeypatch.setattr(images_module, "ProcessPoolExecutor", lambda *a, **k: pools.append(a) or real_pool(*a, **k))
    monkeypatch.setattr(images_module, "PROCESS_DECODE_MIN", 1)
    by_processes = images_module.decode_images(paths, 8)
    assert pools and by_processes.dtype == torch.uint8 and by_processes.shape == (14, 3, 8, 8)
    assert torch.equal(by_processes, by_threads)


@needs_fork_and_two_cores
def test_forking_the_decoding_workers_from_a_process_with_threads_warns_nobody(tmp_path, monkeypatch):
    """Python 3.12+ warns at each fork of a process with threads, as torch's is once its OpenMP pool has run;
    here os.fork warns as 3.12's does, on any Python."""
    real_fork = os.fork

    def fork_as_in_python_3_12() -> int:
        warnings.warn(
            f"This process (pid={os.getpid()}) is multi-threaded, use of fork() may lead to deadlocks in the child.",
            DeprecationWarning,
            stacklevel=2,
        )
        return real_fork()

    monkeypatch.setattr(os, "fork", fork_as_in_python_3_12)
    monkeypatch.setattr(images_module, "PROCESS_DECODE_MIN", 1)
    paths = sorted((make_folder(tmp_path / "images") / "train").rglob("*.png"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert images_module.decode_images(paths, 8).shape == (len(paths), 3, 8, 8)


@needs_fork_and_two_cores
def test_a_broken_image_decoded_by_a_worker_process_is_named_in_one_line(tmp_path, monkeypatch):
    paths = sorted((make_folder(tmp_path / "images") / "train").rglob("*.png"))
    paths[3].write_bytes(b"not an image")
    monkeypatch.setattr(images_module, "PROCESS_DECODE_MIN", 1)
    with pytest.raises(LossbenchError, match=f"{paths[3]}: cannot read image"):
        images_module.decode_images(paths, 8)


INTERRUPTED_DECODE = """
import os, signal, sys, time
from pathlib import Path
import lossbench.data.images as images_module
real = images_module._decode
def slow_decode(path, size):  # forked workers inherit it; each says whether stop signals are left to the parent
    left = signal.getsignal(signal.SIGINT) == signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
    os.write(1, f"worker leaves stop signals to the parent: {left}\\n".encode())  # one write: lines never interleave
    time.sleep(0.2)
    return real(path, size)
images_module._decode = slow_decode
images_module.PROCESS_DECODE_MIN, images_module.DECODE_CHUNK = 1, 1
paths = sorted(Path(sys.argv[1]).rglob("*.png"))
print("decoding", flush=True)
try:
    images_module.decode_images(paths, 8)
except KeyboardInterrupt:
    print("interrupted", file=sys.stderr)
    sys.exit(130)
"""


@needs_fork_and_two_cores
def test_ctrl_c_stops_worker_processes_quietly_and_soon(tmp_path):
    """Ctrl-C reaches the whole process group: the workers leave it to the parent (no traceback from each), and the
    chunks not yet started are dropped: of 150 images, one per chunk, far fewer are decoded. Counted, not timed,
    so that a loaded machine answers as an idle one."""
    import signal
    import subprocess

    root = make_folder(tmp_path / "images", per_class=75)
    process = subprocess.Popen(
        [sys.executable, "-c", INTERRUPTED_DECODE, str(root)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert process.stdout.readline() == "decoding\n"
    first = process.stdout.readline()  # a worker has started decoding
    os.killpg(process.pid, signal.SIGINT)
    stdout, stderr = process.communicate(timeout=HANG_S)
    assert process.returncode == 130 and stderr == "interrupted\n"
    said = [first.rstrip("\n"), *stdout.splitlines()]
    assert set(said) == {"worker leaves stop signals to the parent: True"}
    assert len(said) < 150 // 2, f"{len(said)} of 150 images decoded after Ctrl-C"


KILLED_DECODE = """
import os, sys, time
from pathlib import Path
import lossbench.data.images as images_module
real = images_module._decode
def slow_decode(path, size):  # forked workers inherit it and say who they are
    os.write(1, f"{os.getpid()}\\n".encode())
    time.sleep(0.2)
    return real(path, size)
images_module._decode = slow_decode
images_module.PROCESS_DECODE_MIN, images_module.DECODE_CHUNK = 1, 1
images_module.decode_images(sorted(Path(sys.argv[1]).rglob("*.png")), 8)
"""


def is_gone(pid: int) -> bool:
    """No such process, or a zombie (dead; a container's init may never reap it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except FileNotFoundError:
        return True


@needs_fork_and_two_cores
def test_decoding_workers_die_with_a_killed_parent(tmp_path):
    """After a kill -9 of the parent, forked workers would wait forever on a queue their siblings hold open."""
    import signal
    import subprocess
    import time

    root = make_folder(tmp_path / "images", per_class=75)
    process = subprocess.Popen([sys.executable, "-c", KILLED_DECODE, str(root)], stdout=subprocess.PIPE, text=True)
    workers = {int(process.stdout.readline()) for _ in range(6)}  # both workers have started decoding
    assert len(workers) == 2 and process.pid not in workers
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=HANG_S)
    deadline = time.monotonic() + HANG_S
    while not all(is_gone(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    survivors = [pid for pid in workers if not is_gone(pid)]
    for pid in survivors:  # leave no orphan behind when this fails
        os.kill(pid, signal.SIGKILL)
    assert not survivors, f"workers {survivors} outlived their parent"


def grey_ramp(mode: str) -> tuple[Image.Image, list[int]]:
    """A 4x1 image in `mode` holding black, two greys and white in that mode's own value range, with the
    8-bit values they must decode to."""
    import numpy as np

    levels = {
        "I;16": [0, 257 * 64, 257 * 128, 65535],
        "I;16B": [0, 257 * 64, 257 * 128, 65535],
        "I": [0, 257 * 64, 257 * 128, 65535],
        "F": [0.0, 64 / 255, 128 / 255, 1.0],
    }[mode]
    if mode == "I;16B":
        return Image.frombytes("I;16B", (4, 1), np.array(levels, dtype=">u2").tobytes()), [0, 64, 128, 255]
    dtype = {"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode]
    return Image.fromarray(np.array([levels], dtype=dtype)), [0, 64, 128, 255]


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I", "F"])
def test_high_bit_depth_images_are_scaled_not_clipped(mode):
    from lossbench.data.images import to_rgb

    image, expected = grey_ramp(mode)
    assert image.mode == mode
    rgb = to_rgb(image)
    assert rgb.mode == "RGB" and [rgb.getpixel((x, 0)) for x in range(4)] == [(v, v, v) for v in expected]


def test_sixteen_bit_png_is_not_white(tmp_path):
    import numpy as np

    from lossbench.data.images import _decode

    path = tmp_path / "g16.png"
    Image.fromarray(np.full((8, 8), 257 * 100, dtype=np.uint16)).save(path)
    assert Image.open(path).mode == "I;16"
    assert _decode(path, 8)[:, 0, 0].tolist() == [100, 100, 100]


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda: Image.new("1", (2, 2), 1), (255, 255, 255)),
        (lambda: Image.new("L", (2, 2), 77), (77, 77, 77)),
        (lambda: Image.new("RGB", (2, 2), (10, 20, 30)).convert("P", palette=Image.Palette.ADAPTIVE), (10, 20, 30)),
        (lambda: Image.new("LA", (2, 2), (200, 255)), (200, 200, 200)),
        (lambda: Image.new("LA", (2, 2), (200, 0)), (0, 0, 0)),
        (lambda: Image.new("RGBA", (2, 2), (200, 100, 50, 255)), (200, 100, 50)),
        (lambda: Image.new("RGBA", (2, 2), (200, 100, 50, 0)), (0, 0, 0)),
        (lambda: Image.new("RGBA", (2, 2), (200, 100, 50, 128)), (100, 50, 25)),
        (lambda: Image.new("CMYK", (2, 2), (0, 0, 0, 0)), (255, 255, 255)),
        (lambda: Image.new("RGB", (2, 2), (10, 200, 30)).convert("YCbCr"), None),
    ],
)
def test_every_mode_decodes_to_rgb(make, expected):
    from lossbench.data.images import to_rgb

    image = make()
    rgb = to_rgb(image)
    assert rgb.mode == "RGB"
    pixel = rgb.getpixel((0, 0))
    if expected is None:  # YCbCr round trip: within rounding
        assert all(abs(a - b) <= 2 for a, b in zip(pixel, (10, 200, 30)))
    else:
        assert all(abs(a - b) <= 1 for a, b in zip(pixel, expected)), pixel


def test_palette_with_transparency_is_composited(tmp_path):
    from lossbench.data.images import _decode

    image = Image.new("P", (4, 4), 1)
    image.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    image.info["transparency"] = 1  # index 1 (green) is transparent
    path = tmp_path / "p.png"
    image.save(path, transparency=1)
    assert _decode(path, 4)[:, 0, 0].tolist() == [0, 0, 0]


def test_hidden_files_and_folders_are_ignored(tmp_path):
    root = make_folder(tmp_path / "images")
    (root / "train" / ".ipynb_checkpoints").mkdir()
    (root / "test" / ".ipynb_checkpoints").mkdir()
    (root / "train" / "cat" / "._0.png").write_bytes(b"macOS resource fork")
    (root / "train" / "cat" / ".hidden.jpg").write_bytes(b"")
    cfg = folder_cfg(root, "data.train_size=null", "data.test_size=null")
    assert dataset_classes(cfg) == ["cat", "dog"]
    assert len(load_dataset(cfg, ["cat", "dog"], torch.eye(2)).train_y) == 6


def test_damaged_cache_warns_once_and_is_rebuilt(tmp_path):
    root = make_folder(tmp_path / "images")
    cfg = folder_cfg(root, "data.train_size=null", "data.test_size=null")
    first = load_dataset(cfg, ["cat", "dog"], torch.eye(2))
    (cache,) = (root / "cache" / "lossbench").glob("*.pt")
    cache.write_bytes(cache.read_bytes()[:100])
    with pytest.warns(UserWarning, match=f"image cache {cache} is damaged .*rebuilding it") as caught:
        again = load_dataset(
            folder_cfg(root, "data.train_size=null", "data.test_size=null", "data.subset_seed=1"),
            ["cat", "dog"],
            torch.eye(2),
        )
    assert len(caught) == 1 and torch.equal(again.train_x, first.train_x)
    assert torch.load(cache, weights_only=True)[0].shape == first.train_x.shape  # rewritten whole


def test_a_cache_that_cannot_be_written_warns_and_the_data_loads(tmp_path):
    """The cache only saves time: on a full or read-only disk the run goes on, with one warning naming it."""
    root = make_folder(tmp_path / "images")
    (root / "cache").write_text("a file where the cache folder would go")
    where = root / "cache" / "lossbench"
    message = rf"image cache not written \({where}: Not a directory\); the next run decodes the images again"
    with pytest.warns(UserWarning, match=message) as caught:
        data = load_dataset(folder_cfg(root), ["cat", "dog"], torch.eye(2))
    assert len(caught) == 1 and data.train_x.shape == (6, 3, 32, 32)


def test_subset_larger_than_the_data_warns_with_the_actual_size(tmp_path):
    root = make_folder(tmp_path / "images")
    with pytest.warns(UserWarning, match="data.train_size=100 but the data has 6 examples; using all 6"):
        load_dataset(folder_cfg(root, "data.train_size=100", "data.test_size=null"), ["cat", "dog"], torch.eye(2))


def test_empty_class_list_is_an_error():
    with pytest.raises(LossbenchError, match="data.classes is empty"):
        dataset_classes(make_cfg("data.classes=[]").data)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.image_size=2.5", "data.image_size must be an integer, not 2.5"),
        ("data.image_size=abc", "data.image_size must be an integer, not 'abc'"),
        ("data.seed=0.5", "data.seed must be an integer, not 0.5"),
        ("data.noise=abc", "data.noise must be a number, not 'abc'"),
    ],
)
def test_a_sources_numbers_are_checked_not_truncated(override, message):
    """2.5 pixels used to become 2 (then a model error about 2x2 images), 'abc' an int() error naming no key."""
    with pytest.raises(LossbenchError, match=re.escape(message)):
        dataset_classes(make_cfg(override).data)


def test_an_image_folders_size_is_checked_by_the_same_rule(tmp_path):
    with pytest.raises(LossbenchError, match=re.escape("data.image_size must be an integer, not 2.5")):
        dataset_classes(folder_cfg(make_folder(tmp_path / "images"), "data.image_size=2.5"))


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"size": 2.5}, "data.size must be an integer, not 2.5"),
        ({"rate": "abc"}, "data.rate must be a number, not 'abc'"),
        ({"limit": 0.5}, "data.limit must be an integer, not 0.5"),
    ],
)
def test_a_users_own_source_has_its_numbers_checked_by_the_same_rule(value, message):
    """A user's Source subclass declares its fields with real types (its module need not postpone annotations):
    they are checked alike, where comparing annotation strings saw none of them."""
    mine = make_dataclass(
        "Mine", [("size", int, 3), ("rate", float, 0.5), ("limit", int | None, None)], bases=(Source,), kw_only=True
    )
    assert mine(name="mine", limit=None).size == 3  # None where the field allows it
    with pytest.raises(LossbenchError, match=re.escape(message)):
        mine(name="mine", **value)


def test_the_sources_that_earlier_runs_recorded_still_build():
    """Every run directory records its source as the config group named it (`lossbench.data.Synthetic`, ...) and
    resume, report and rescore build it from there again: those names stay lossbench's own and importable. (The
    oldest runs, from before sources were `_target_` nodes, record none.)"""
    configs = {path: OmegaConf.load(path) for path in sorted(ROOT.glob("results/*/*/config.yaml"))}
    recorded = {str(cfg.data._target_): path for path, cfg in configs.items() if "_target_" in cfg.data}
    assert {"lossbench.data.Synthetic", "lossbench.data.ImageFolder", "lossbench.data.Arrays"} <= set(recorded)
    for target, path in recorded.items():
        assert target in own_targets(), path
        assert issubclass(get_object(target), Source), path
    # The demo's record, and one whose names (CIFAR-100's 100) outnumber its num_classes field, built again
    quick = configs[ROOT / "results" / "quick" / "loss=ce,seed=0" / "config.yaml"]
    check_config(quick, "config.yaml", trusted=(), command="lossbench resume")
    assert dataset_classes(quick.data) == CIFAR10_CLASSES
    hundred = configs[ROOT / "results" / "synthetic100" / "loss=ce,seed=0" / "config.yaml"]
    assert dataset_classes(hundred.data) == CIFAR100_CLASSES


@pytest.mark.parametrize("target", ["lossbench.data.Synthetic", "lossbench.data.synthetic.Synthetic"])
def test_a_built_in_source_named_by_its_module_gets_its_checks(target):
    """The Synthetic range checks and the input pinning follow the class, not the string that names it."""
    from lossbench.checks import check_settings

    with pytest.raises(LossbenchError, match=r"data.similarity=2: must be a number in \[0, 1\]"):
        check_settings(make_cfg(f"data._target_={target}", "data.similarity=2"))


@pytest.mark.parametrize("target", ["lossbench.data.Arrays", "lossbench.data.arrays.Arrays"])
def test_an_arrays_file_is_pinned_whichever_name_its_source_has(target, tmp_path):
    from lossbench.inputs import data_inputs

    path = tmp_path / "x.npz"
    path.write_bytes(b"")
    cfg = make_cfg("data=arrays", f"data._target_={target}", f"data.path={path}")
    assert data_inputs(cfg) == {"data.path": path}


def test_builtin_name_imports_nothing_outside_lossbench():
    from lossbench.data.sources import builtin_name

    assert builtin_name("os.system") is None
    assert builtin_name("lossbench.data.nowhere.Synthetic") is None
    assert builtin_name("lossbench.data.synthetic.Synthetic") == "lossbench.data.Synthetic"
