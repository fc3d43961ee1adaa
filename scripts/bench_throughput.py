"""Training throughput: lossbench's loop against the loop most people write, in one process.

Both loops train the same network (SmallCNN, widths 32/64/128, 10 classes) on the same uint8 images with the same
augmentation (random crop with 4 pixels of zero padding, horizontal flip, per-channel normalisation), batch 256
(--batch-size):

  lossbench  the real code: the dataset as one uint8 tensor on the device, `Batches` (crop/flip as one batched
             gather), channels_last, autocast as `precision=auto` picks it, `train_one_epoch` with SGD + schedule.
  naive      a Dataset of PIL images, torchvision transforms (RandomCrop, RandomHorizontalFlip, ToTensor,
             Normalize), a DataLoader with num_workers = os.cpu_count() and shuffle, fp32, F.cross_entropy, SGD.
             Its PIL images are held decoded in memory (no JPEG decoding per step), in its favour.

After --warmup untimed steps of each loop, the loops alternate for --rounds rounds; in each round a loop runs one
untimed step and then times --steps steps. The DataLoader is created once with persistent workers, so worker
start-up is paid once, in the warmup, outside the timings.

Each round line also gives the CPU seconds used (the workers' included): a round with far less CPU time than
2 x wall time on 2 cores was slowed by other work on the machine.

--pack M adds a third loop, `packed`: M SmallCNNs trained side by side as one network (`lossbench.pack`: each
convolution a grouped convolution, each batch norm over all members' channels, the heads one batched matmul), each
member with its own data order, augmentation and loss, the way hydra/launcher=packed trains a comparison's runs.
Its rate counts every member's images. On a GPU, where one run is bound by kernel launches, this measures whether
packing the runs (M times the work per kernel) pays; the last line, `pack: X.XX`, is its rate over lossbench's.

--contiguous runs lossbench's and the packed model in contiguous NCHW instead of channels_last (their batches are
made contiguous first), to see which layout the convolution library serves best on this device. --cpu-layout is
model.cpu_layout of a CPU's SmallCNNs: auto (as in a run: the faster on this machine, measured once and cached),
onednn (oneDNN's blocked layout) or dense (the batches' layout); the naive loop's model is always dense.
--vs-dense adds a loop `dense`: lossbench's loop with the dense layout, alternated with lossbench's in oneDNN's
layout and the others in the same process (on a machine shared with other work, separate processes minutes apart
measure the neighbours as much as the layouts); the last line, `onednn: X.XX`, is the rate of oneDNN's layout
over the dense one's. --profile N
profiles N steps of the packed loop (of lossbench's without --pack) after the rounds, with torch.profiler, and
prints the ops that took the most time on the device (on a CPU, on the CPU): where a step's time goes.

Efficiency, in the same run: the model's FLOPs per training image (forward + backward, counted once by
torch.utils.flop_counter), and in every round, right after lossbench's timed steps, this machine's dense peak at
the precision lossbench trains in (the best of 3 large square products, each as a matmul and as a 1x1
convolution). A round's efficiency is lossbench's FLOP/s over that round's peak, so that other work on the
machine lowers both alike. The last lines are `efficiency: X.XX` (the median over rounds) and `ratio: X.XX`
(lossbench median images/s over naive median images/s).

    python scripts/bench_throughput.py                      # synthetic data, CUDA when present
    python scripts/bench_throughput.py --device cpu --rounds 7 --steps 10
    python scripts/bench_throughput.py --device cpu --vs-dense      # is oneDNN's blocked layout faster here?
    python scripts/bench_throughput.py --device cuda --compile reduce-overhead --batch-size 512
    python scripts/bench_throughput.py --device cuda --pack 7 --cudnn-benchmark
    python scripts/bench_throughput.py --device cuda --pack 21 --contiguous --profile 10
    python scripts/bench_throughput.py --data-root data/cifar10   # an image folder: train/<class>/*.jpg
"""

from __future__ import annotations

import argparse
import copy
import gc
import multiprocessing
import os
import resource
import statistics
import sys
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_module
from PIL import Image
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode
from torchvision import transforms

from lossbench.config import COMPILE_MODES, prepare
from lossbench.cpus import fit_torch_threads
from lossbench.data.batching import Batches, feature_stats, normalise
from lossbench.data.loading import load_dataset
from lossbench.device import configure_cudnn, resolve_device
from lossbench.layout import CPU_LAYOUTS
from lossbench.losses import build_loss
from lossbench.models import SmallCNN
from lossbench.optim import build_optimizer, build_scheduler
from lossbench.pack import PackedNetwork, member_losses, train_packed_epoch
from lossbench.precision import resolve_precision
from lossbench.step import train_one_epoch


class ContiguousInput(torch.nn.Module):
    """A model fed contiguous NCHW batches (lossbench's Batches make them channels_last)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.contiguous())


def in_layout(model: torch.nn.Module, contiguous: bool) -> torch.nn.Module:
    """The model in the layout it is timed in: channels_last (as lossbench trains), or contiguous NCHW."""
    if not contiguous:
        return model.to(memory_format=torch.channels_last)
    return ContiguousInput(model.to(memory_format=torch.contiguous_format))


class PILImages(torch.utils.data.Dataset):
    """What a torchvision dataset hands its transforms: one PIL image and an int label per index."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform):
        self.images = [Image.fromarray(x.permute(1, 2, 0).numpy()) for x in images]
        self.labels = labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.transform(self.images[i]), self.labels[i]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_seconds() -> float:
    """CPU time used so far by this process (all threads) and its live children (the DataLoader workers)."""
    total = time.process_time()
    for child in multiprocessing.active_children():
        try:
            fields = open(f"/proc/{child.pid}/stat").read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
        except (OSError, IndexError, ValueError):
            pass
    return total


def max_rss_mb(who: int = resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # kilobytes on Linux


def matmul_peak(device: torch.device, dtype: torch.dtype, repeats: int = 3) -> float:
    """FLOP/s of the fastest of `repeats` n x n x n products at `dtype`: what this machine can do at that precision.
    Each is timed both as a matmul and as the same product written as a 1x1 convolution (oneDNN / cuDNN, the
    library the model's convolutions use): on the AMD EPYC here torch's fp32 matmul reached about half the rate of
    the 1x1 convolution, which would make any fp32 efficiency look better than it is. n is large enough to reach
    the peak (2048 on a CPU, 8192 on a GPU) and small enough to take well under a second."""
    n = 8192 if device.type == "cuda" else 2048
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    pixels = torch.randn(1, n, 32, n // 32, device=device).to(dtype).contiguous(memory_format=torch.channels_last)
    weight = b.view(n, n, 1, 1)
    best = float("inf")
    for product in (lambda: a @ b, lambda: F.conv2d(pixels, weight)):
        product()  # the first call picks and loads its kernel
        for _ in range(repeats):
            sync(device)
            began = time.perf_counter()
            product()
            sync(device)
            best = min(best, time.perf_counter() - began)
    return 2 * n**3 / best


def training_flops_per_image(model: torch.nn.Module, loss_fn, x: torch.Tensor, y: torch.Tensor) -> float:
    """Forward + backward FLOPs per image, counted (not timed) on a copy of the model."""
    probe = copy.deepcopy(model)
    with FlopCounterMode(display=False) as counter:
        loss_fn(probe(x).float(), y).backward()
    return counter.get_total_flops() / len(y)


def load_images(args, n_train: int):
    """uint8 training images and labels from lossbench's own loader: synthetic (offline) or an image folder."""
    overrides = [f"data.train_size={n_train}", "data.val_size=null", "data.test_size=10", "data.subset_seed=0"]
    if args.data_root:
        overrides += ["data=imagefolder", f"data.root={os.path.abspath(args.data_root)}", "scores=identity"]
    with initialize_config_module("lossbench.configs", version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    scores = prepare(cfg, warn=False)
    data = load_dataset(cfg.data, scores.classes, scores.matrix)
    return data.train_x[:n_train], data.train_y[:n_train], scores, cfg


class EpochLoop:
    """A loop timed as `epoch` calls on its `warm` batches (one untimed step) and its `timed` batches (the timed
    steps, `images` images in all)."""

    device: torch.device
    warm: object
    timed: object
    images: int

    def epoch(self, batches) -> None:
        raise NotImplementedError

    def warmup(self, steps: int) -> None:
        for _ in range(steps):
            self.epoch(self.warm)

    def round(self) -> tuple[int, float, float]:
        """Images, wall seconds and CPU seconds of the timed steps."""
        self.warmup(1)
        sync(self.device)
        began, cpu = time.perf_counter(), cpu_seconds()
        self.epoch(self.timed)
        sync(self.device)
        return self.images, time.perf_counter() - began, cpu_seconds() - cpu


def step_batches(
    images, labels, cfg, batch: int, generators: list[torch.Generator]
) -> tuple[list[Batches], list[Batches]]:
    """Per generator, Batches whose "epoch" is exactly the wanted number of steps (len = images // batch size), so
    that the training loops run unchanged: `warm` is one step, `timed` the rest. The data's statistics are computed
    once; Batches over the same tensors share them (packed_batches gathers from them once for all members)."""
    mean, std = feature_stats(images)
    augment = int(cfg.data.augment.crop_padding), bool(cfg.data.augment.flip)
    warm = [Batches(images[:batch], labels[:batch], batch, mean, std, g, *augment) for g in generators]
    timed = [Batches(images[batch:], labels[batch:], batch, mean, std, g, *augment) for g in generators]
    return warm, timed


@dataclass(frozen=True)
class Setup:
    """What every timed loop of one benchmark shares: the data, the config, where and in what precision it runs,
    and the step budget."""

    images: torch.Tensor
    labels: torch.Tensor
    scores: object
    cfg: object
    device: torch.device
    dtype: torch.dtype | None
    num_classes: int
    steps: int
    batch: int
    contiguous: bool


class LossbenchLoop(EpochLoop):
    """lossbench's hot loop, built from the same functions as `lossbench.train._train` (lossbench.step's)."""

    def __init__(self, setup: Setup, compile_model: str | None, cpu_layout: str):
        self.device, self.dtype = setup.device, setup.dtype
        device, batch = setup.device, setup.batch
        generator = torch.Generator(device=device).manual_seed(0)
        (self.warm,), (self.timed,) = step_batches(
            setup.images.to(device), setup.labels.to(device), setup.cfg, batch, [generator]
        )
        assert len(self.timed) == setup.steps
        self.images = setup.steps * batch
        torch.manual_seed(0)
        self.model = SmallCNN(setup.num_classes, cpu_layout=cpu_layout).to(device)
        laid_out = in_layout(self.model, setup.contiguous)
        self.step_model = torch.compile(laid_out, mode=compile_model) if compile_model else laid_out
        self.loss_fn = build_loss("ce", setup.scores.matrix).to(device)
        x, y = next(iter(self.warm))
        self.flops_per_image = training_flops_per_image(self.model, self.loss_fn, x, y)
        self.optimizer = build_optimizer(setup.cfg.optim, self.model)
        self.scheduler = build_scheduler(setup.cfg.schedule, self.optimizer, len(self.timed), 1_000)

    def epoch(self, batches: Batches) -> None:
        train_one_epoch(self.step_model, self.loss_fn, batches, self.optimizer, self.scheduler, self.dtype).tolist()


class PackedLoop(EpochLoop):
    """M runs trained as one packed network, by the code hydra/launcher=packed runs (`lossbench.pack`): each member
    draws its own batch (its own generator, so its own order and augmentation) and has its own loss; one backward
    and one optimiser step serve all (SGD is elementwise, so one optimiser over the packed weights is M)."""

    def __init__(self, setup: Setup, members: int, cpu_layout: str):
        self.device, self.dtype = setup.device, setup.dtype
        device, batch = setup.device, setup.batch
        generators = [torch.Generator(device=device).manual_seed(m) for m in range(members)]
        self.warm, self.timed = step_batches(
            setup.images.to(device), setup.labels.to(device), setup.cfg, batch, generators
        )
        self.images = setup.steps * batch * members  # every member's
        singles = []
        for m in range(members):
            torch.manual_seed(m)
            singles.append(SmallCNN(setup.num_classes, cpu_layout=cpu_layout).to(device))
        first = self.warm[0]
        probe = normalise(first.inputs[:4], first.mean, first.std)
        self.network = PackedNetwork(singles, probe)
        self.model = in_layout(self.network, setup.contiguous)
        loss_fn = build_loss("ce", setup.scores.matrix).to(device)
        self.losses_of = member_losses([loss_fn] * members, ["ce"] * members, device)
        self.optimizer = build_optimizer(setup.cfg.optim, self.network)
        self.scheduler = build_scheduler(setup.cfg.schedule, self.optimizer, setup.steps, 1_000)

    def epoch(self, batches: list[Batches]) -> None:
        train_packed_epoch(self.model, batches, self.losses_of, self.optimizer, self.scheduler, self.dtype).tolist()


class NaiveLoop:
    """The usual PyTorch tutorial loop: PIL images, torchvision transforms, a multi-worker DataLoader, fp32."""

    def __init__(self, images, labels, device, num_classes, steps, batch):
        self.device, self.steps, self.batch = device, steps, batch
        mean, std = feature_stats(images)
        transform = transforms.Compose(
            [
                transforms.RandomCrop(32, padding=4),
                transforms.RandomHorizontalFlip(),
                transforms.ToTensor(),
                transforms.Normalize((mean / 255).flatten().tolist(), (std / 255).flatten().tolist()),
            ]
        )
        dataset = PILImages(images, labels, transform)
        workers = os.cpu_count() or 1
        self.workers = workers
        self.loader = DataLoader(
            dataset,
            batch_size=batch,
            shuffle=True,
            num_workers=workers,
            drop_last=True,
            persistent_workers=True,
            pin_memory=device.type == "cuda",
        )
        torch.manual_seed(0)
        self.model = SmallCNN(num_classes, cpu_layout="dense").to(device)  # as most people's loop has it
        self.optimizer = torch.optim.SGD(
            self.model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4
        )

    def step(self, x, y) -> float:
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        loss = F.cross_entropy(self.model(x), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.item()  # what a typical loop logs every step

    def warmup(self, steps: int) -> None:
        for _, (x, y) in zip(range(steps), iter(self.loader)):  # a new iterator resets the unfinished one
            self.step(x, y)

    def round(self) -> tuple[int, float, float]:
        """Images, wall seconds and CPU seconds of `steps` timed steps."""
        # One epoch of the loader is 1 + steps batches: the first is untimed (the workers' prefetch queue fills
        # meanwhile, as it would in the middle of an epoch). A new epoch iterator reuses the persistent workers.
        self.model.train()
        batches = iter(self.loader)
        self.step(*next(batches))
        sync(self.device)
        began, cpu = time.perf_counter(), cpu_seconds()
        for _ in range(self.steps):
            self.step(*next(batches))
        sync(self.device)
        return self.steps * self.batch, time.perf_counter() - began, cpu_seconds() - cpu


def profile_steps(loop: EpochLoop, steps: int) -> None:
    """Profile `steps` steps of the loop (torch.profiler) and print the ops that took the most time on the device
    (on a CPU, the CPU): the kernels a step's time goes to."""
    from torch.profiler import ProfilerActivity, profile

    cuda = loop.device.type == "cuda"
    loop.warmup(1)
    sync(loop.device)
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]
    with profile(activities=activities, record_shapes=True) as prof:
        for _ in range(steps):
            loop.epoch(loop.warm)
        sync(loop.device)
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    print(f"profile: {steps} steps of the {type(loop).__name__}, the ops by their own {'CUDA' if cuda else 'CPU'} time")
    print(prof.key_averages().table(sort_by=key, row_limit=20, max_name_column_width=60))
    print("the same ops by input shape (which layer's convolution, batch norm ... costs what):")
    print(
        prof.key_averages(group_by_input_shape=True).table(
            sort_by=key, row_limit=25, max_name_column_width=40, max_shapes_column_width=90
        )
    )


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: CUDA when present")
    parser.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16"],
        default="auto",
        help="lossbench's precision setting (default auto, as in a run); the naive loop is always fp32",
    )
    parser.add_argument("--batch-size", type=int, default=256, help="training batch size of both loops (default 256)")
    parser.add_argument(
        "--compile",
        nargs="?",
        const="default",
        choices=COMPILE_MODES,
        default=None,
        help="torch.compile lossbench's model in this mode (default: default), as train.compile does",
    )
    parser.add_argument(
        "--cudnn-benchmark",
        action="store_true",
        help="CUDA: cuDNN autotuning (train.cudnn_benchmark=true; off by default, as in a run)",
    )
    parser.add_argument(
        "--pack",
        type=int,
        default=0,
        metavar="M",
        help="also time M SmallCNNs trained as one packed network (default 0: not timed)",
    )
    parser.add_argument(
        "--contiguous",
        action="store_true",
        help="lossbench's and the packed model in contiguous NCHW instead of channels_last",
    )
    parser.add_argument(
        "--cpu-layout",
        choices=CPU_LAYOUTS,
        default="auto",
        help="model.cpu_layout of lossbench's and the packed SmallCNNs on a CPU (default auto, as in a run)",
    )
    parser.add_argument(
        "--vs-dense",
        action="store_true",
        help="also time lossbench's loop with model.cpu_layout=dense, alternated with the others (CPU)",
    )
    parser.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="N",
        help="after the rounds, profile N steps of the packed loop (else lossbench's) and print the "
        "ops that took the most device time (default 0: no profile)",
    )
    parser.add_argument("--rounds", type=int, default=5, help="alternations of the two loops (default 5)")
    parser.add_argument("--steps", type=int, default=6, help="timed steps per loop and round (default 6)")
    parser.add_argument(
        "--warmup",
        type=int,
        default=3,
        help="untimed steps of each loop before the first round "
        "(default 3; oneDNN builds its kernels in the first steps, the DataLoader starts its "
        "workers)",
    )
    parser.add_argument(
        "--data-root",
        default=None,
        help="an image folder root/{train,test}/<class>/* instead of "
        "synthetic data (decoded once by lossbench's loader and cached)",
    )
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.steps < 1 or args.warmup < 0 or args.batch_size < 1 or min(args.pack, args.profile) < 0:
        parser.error("--rounds, --steps and --batch-size must be >= 1, --warmup, --pack and --profile >= 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but no CUDA GPU is available")
    if args.vs_dense and args.cpu_layout == "dense":
        parser.error("--vs-dense compares the oneDNN layout with the dense one: leave --cpu-layout at auto or onednn")
    return args


def main(args) -> None:
    device, batch = resolve_device(args.device), args.batch_size
    configure_cudnn(device, args.cudnn_benchmark)
    fit_torch_threads()  # as a run does: no more threads than a cgroup's CPU quota pays for
    n_train = (1 + args.steps) * batch  # one epoch = 1 untimed + `steps` timed steps
    images, labels, scores, cfg = load_images(args, n_train)
    if len(labels) < n_train:
        sys.exit(f"error: need {n_train} training images, the data has {len(labels)}")
    num_classes = len(scores.classes)
    # As a run resolves it: precision=auto may time this very model shape in fp32 and bf16 (once per machine).
    model = SmallCNN(num_classes, cpu_layout=args.cpu_layout).to(device, memory_format=torch.channels_last)
    precision = resolve_precision(args.precision, device, model, (batch, *images.shape[1:]))
    cpu_layout = "onednn" if args.vs_dense else precision.layout or args.cpu_layout
    dtype = precision.dtype
    source = args.data_root or "synthetic"
    print(
        f"device: {device} "
        f"({torch.cuda.get_device_name(device) if device.type == 'cuda' else f'{os.cpu_count()} CPUs'}), "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    amp = f"{dtype} autocast" if dtype else "fp32"
    layout = "contiguous NCHW" if args.contiguous else "channels_last"
    if device.type == "cpu" and cpu_layout != "dense":
        layout += " batches, oneDNN's blocked layout inside"
    print(
        f"precision: lossbench {amp} (precision={args.precision}: {precision.reason}), {layout}"
        f"{f', torch.compile mode {args.compile}' if args.compile else ''}"
        f"{', cuDNN autotuning' if device.type == 'cuda' and args.cudnn_benchmark else ''}; "
        "naive fp32, contiguous"
    )
    print(
        f"data: {source}, {num_classes} classes, batch {batch}; {args.warmup} warmup steps per loop, then "
        f"{args.rounds} rounds of (1 untimed + {args.steps} timed steps) per loop"
    )

    setup = Setup(images, labels, scores, cfg, device, dtype, num_classes, args.steps, batch, args.contiguous)
    lossbench = LossbenchLoop(setup, args.compile, cpu_layout)
    naive = NaiveLoop(images, labels, device, num_classes, args.steps, batch)
    loops = {"lossbench": lossbench, "naive": naive}
    if args.pack:
        loops["packed"] = PackedLoop(setup, args.pack, cpu_layout)
        print(f"packed: {args.pack} SmallCNNs as one network, {args.pack} x {batch} images per step")
    if args.vs_dense:
        loops["dense"] = LossbenchLoop(setup, args.compile, "dense")
    flops = lossbench.flops_per_image
    print(f"model: {flops / 1e6:.1f} MFLOP per training image (forward + backward, torch.utils.flop_counter)")
    print(f"naive DataLoader: {naive.workers} workers, persistent, shuffle", flush=True)
    for name, loop in loops.items():  # the naive loop's includes starting its workers
        began = time.perf_counter()
        loop.warmup(args.warmup)
        print(f"warmup {name:<9} {time.perf_counter() - began:.1f} s", flush=True)
        if name == "lossbench":
            rss_lossbench = max_rss_mb()  # the process peak before the naive loop has run a step

    memory = {}
    resident = torch.cuda.memory_allocated(device) / 2**20 if device.type == "cuda" else 0.0
    results = {name: [] for name in loops}
    peaks, efficiencies = [], []
    peak_dtype = dtype or torch.float32
    for r in range(args.rounds):
        for name, loop in loops.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            count, wall, cpu = loop.round()
            rate = count / wall
            results[name].append(rate)
            if device.type == "cuda":
                memory[name] = max(memory.get(name, 0), torch.cuda.max_memory_allocated(device) / 2**20)
            # CPU time (with the workers') tells how much of a slow round other work on the machine took away.
            print(f"round {r + 1} {name:<9} {rate:8.1f} images/s  ({wall:.2f} s wall, {cpu:.2f} s CPU)", flush=True)
            if name == "lossbench":
                peaks.append(matmul_peak(device, peak_dtype))
                efficiencies.append(rate * flops / peaks[-1])
                print(
                    f"round {r + 1} peak      {peaks[-1] / 1e9:8.1f} GFLOP/s "
                    f"{str(peak_dtype).removeprefix('torch.')} dense product; lossbench {rate * flops / 1e9:.1f} "
                    f"GFLOP/s = efficiency {efficiencies[-1]:.2f}",
                    flush=True,
                )

    medians = {name: statistics.median(rates) for name, rates in results.items()}
    for name, rates in results.items():
        print(f"median {name:<9} {medians[name]:8.1f} images/s  (rounds: {', '.join(f'{x:.1f}' for x in rates)})")
    if device.type == "cuda":
        print(
            "peak CUDA memory allocated during the rounds: "
            f"{', '.join(f'{n} {m:.0f} MiB' for n, m in memory.items())} "
            f"(each includes {resident:.0f} MiB held throughout: lossbench's dataset on the device, the models and "
            "optimiser states built before the rounds)"
        )
    else:
        del naive.loader  # shut the workers down so that RUSAGE_CHILDREN counts them
        gc.collect()
        print(
            f"peak RSS: main process {rss_lossbench:.0f} MiB after lossbench's warmup, "
            f"{max_rss_mb():.0f} MiB after both; largest DataLoader worker "
            f"{max_rss_mb(resource.RUSAGE_CHILDREN):.0f} MiB"
        )
    print(
        f"dense peak {statistics.median(peaks) / 1e9:.1f} GFLOP/s {str(peak_dtype).removeprefix('torch.')} "
        f"(median of the rounds' best; rounds: {', '.join(f'{p / 1e9:.0f}' for p in peaks)}); lossbench "
        f"{medians['lossbench'] * flops / 1e9:.1f} GFLOP/s at its median"
    )
    print(f"efficiency: {statistics.median(efficiencies):.2f}")
    print(f"ratio: {medians['lossbench'] / medians['naive']:.2f}")
    if args.profile:
        profile_steps(loops.get("packed", lossbench), args.profile)
    if args.pack:  # above 1: packing M runs into one process trains them faster than one run at a time
        print(
            f"pack: {medians['packed'] / medians['lossbench']:.2f} (packed images/s over lossbench's, "
            f"{args.pack} members)"
        )
    if args.vs_dense:  # above 1: oneDNN's blocked layout trains faster than the dense one on this machine
        print(f"onednn: {medians['lossbench'] / medians['dense']:.2f} (lossbench's images/s over the dense layout's)")


if __name__ == "__main__":
    args = parse_args()
    main(args)
