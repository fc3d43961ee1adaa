"""Several runs trained as one network, side by side, so that every kernel works on all of them at once
(hydra/launcher=packed).

One run of a small model cannot keep a GPU busy: it is bound by launching kernels, not by arithmetic. Packed,
M models of one architecture launch the kernels of one: each convolution becomes a grouped convolution over the
members' stacked channels, each batch norm one over all members' channels (its statistics are per channel, so
per member), each linear layer one batched matmul; layers without parameters (ReLU, pooling, dropout, flatten)
already work per channel. Member m's input occupies channels m*C..(m+1)*C-1 (features m*F.. for vectors), and so
do its activations in every layer, so the model's own forward runs unchanged on the packed tensors.

A forward that mixes channels between members (a layer norm over features, a reshape across channels) would
compute something else: `PackedNetwork` compares its output with each member's on a probe batch and refuses such
a model. Tensors move between the members and the packed network by one rule (`pack_tensor`, `member_part`), so
weights, batch-norm statistics and optimiser state all travel the same way, and a member's checkpoint is an
ordinary run's. `train_packed` trains the jobs of a sweep this way: each run keeps its own data order, loss,
metrics, checkpoint and status, and its life (start, epochs, end) is lossbench.run's, as a lone run's is.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from lossbench.data.batching import Batches, normalise, packed_batches
from lossbench.errors import LossbenchError, require
from lossbench.losses import ScoreLoss
from lossbench.optim import build_optimizer, build_scheduler
from lossbench.progress import Progress
from lossbench.provenance import write_provenance
from lossbench.run import Run, end_epoch, finish_run, open_run, record_end, recorded_failures, what_failed
from lossbench.step import compiled, evaluate_models, train_step

log = logging.getLogger("lossbench")

PACKABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.Linear)


class PackedLinear(nn.Module):
    """M linear layers as one batched matmul over the last dimension, which holds M blocks of in_features. The
    bias is kept flat (M*out), one dimension like a member's, so that weight decay groups it as a bias."""

    def __init__(self, linears: Sequence[nn.Linear]):
        super().__init__()
        first = linears[0]
        self.members, self.in_features, self.out_features = len(linears), first.in_features, first.out_features
        self.weight = nn.Parameter(torch.empty(self.members, self.out_features, self.in_features))
        self.bias = nn.Parameter(torch.empty(self.members * self.out_features)) if first.bias is not None else None

    def forward(self, x: Tensor) -> Tensor:
        blocks = x.reshape(-1, self.members, self.in_features)
        out = torch.einsum("bmi,moi->bmo", blocks, self.weight).reshape(*x.shape[:-1], -1)
        return out if self.bias is None else out + self.bias


def packed_layer(layers: Sequence[nn.Module]) -> nn.Module:
    """The members' layers at one place in the network as one layer (weights set later, by load_members)."""
    first, m = layers[0], len(layers)
    if isinstance(first, nn.Linear):
        return PackedLinear(layers)
    if isinstance(first, nn.modules.conv._ConvNd):
        return type(first)(
            first.in_channels * m,
            first.out_channels * m,
            first.kernel_size,
            first.stride,
            first.padding,
            first.dilation,
            first.groups * m,
            first.bias is not None,
            first.padding_mode,
        )
    return type(first)(first.num_features * m, first.eps, first.momentum, first.affine, first.track_running_stats)


def has_own_tensors(module: nn.Module) -> bool:
    """Whether the module holds parameters or buffers itself (not only through its children)."""
    return any(True for _ in module.parameters(recurse=False)) or any(True for _ in module.buffers(recurse=False))


def pack_tensor(shape: torch.Size, parts: Sequence[Tensor]) -> Tensor:
    """The members' tensors as the packed network's tensor of `shape`: stacked (a PackedLinear weight),
    concatenated along the first dimension (channels, features), or, for a scalar (a batch norm's count of
    batches, an optimiser's step), the members' common value."""
    if shape == (len(parts), *parts[0].shape):
        return torch.stack(list(parts))
    if parts[0].ndim == 0:
        return parts[0].clone()
    return torch.cat(list(parts))


def member_part(packed: Tensor, shape: torch.Size, m: int) -> Tensor:
    """Member m's share of a packed tensor, for a member tensor of `shape` (the inverse of pack_tensor)."""
    if packed.ndim == 0:
        return packed
    if packed.ndim == len(shape) + 1:
        return packed[m]
    return packed.narrow(0, m * shape[0], shape[0])


class PackedNetwork(nn.Module):
    """M models of one architecture as one network. Input: the members' inputs concatenated along dimension 1
    (`pack_inputs`); output: [M, batch, classes]."""

    def __init__(self, members: Sequence[nn.Module], probe: Tensor):
        super().__init__()
        require(len(members) >= 1, "a pack needs at least one model")
        self.size = len(members)
        self.net = copy.deepcopy(members[0])
        for name, module in members[0].named_modules():
            if isinstance(module, PACKABLE):
                layer = packed_layer([m.get_submodule(name) for m in members])
                parent, _, child = name.rpartition(".")
                if name:
                    setattr(self.net.get_submodule(parent), child, layer)
                else:  # the model is one such layer
                    self.net = layer
            elif has_own_tensors(module):
                kinds = ", ".join(t.__name__ for t in PACKABLE)
                where = f"{type(module).__name__} ({name or 'the model itself'})"
                raise LossbenchError(
                    f"{type(members[0]).__name__} cannot be packed: its {where} has weights of "
                    f"a kind only {kinds} can be packed; train these runs with another "
                    "launcher"
                )
        self.to(next(members[0].parameters()).device)
        self.load_members(members)
        self.check(members, probe)

    def forward(self, x: Tensor) -> Tensor:
        out = self.net(x)
        return out.view(len(out), self.size, -1).transpose(0, 1)

    def load_members(self, members: Sequence[nn.Module]) -> None:
        """Set the packed weights and statistics from the members'."""
        states = [m.state_dict() for m in members]
        self.net.load_state_dict(
            {key: pack_tensor(value.shape, [s[key] for s in states]) for key, value in self.net.state_dict().items()}
        )

    def unpack_into(self, members: Sequence[nn.Module]) -> None:
        """Copy the packed weights and statistics back into the members (for evaluation and checkpoints)."""
        packed = self.net.state_dict()
        for m, member in enumerate(members):
            own = member.state_dict()
            member.load_state_dict({key: member_part(packed[key], value.shape, m) for key, value in own.items()})

    @torch.no_grad()
    def check(self, members: Sequence[nn.Module], probe: Tensor) -> None:
        """Refuse a model whose forward mixes the members: on the probe (member m sees it rolled by m), in eval
        mode (no statistics updated), the packed output must be each member's own."""
        modes = [m.training for m in members]
        inputs = [probe.roll(m, dims=0) for m in range(self.size)]
        try:
            with exact_float32():
                packed = self.eval()(pack_inputs(inputs))
                own = torch.stack([member.eval()(x) for member, x in zip(members, inputs)])
        finally:
            self.train()
            for member, mode in zip(members, modes):
                member.train(mode)
        scale = own.abs().max().clamp(min=1.0)
        if packed.shape != own.shape or not torch.allclose(packed, own, rtol=1e-3, atol=1e-4 * float(scale)):
            raise LossbenchError(
                f"{type(members[0]).__name__} cannot be packed: its forward mixes the packed models' "
                "channels (the packed output differs from each model's own); train these runs with "
                "another launcher"
            )


@contextmanager
def exact_float32() -> Iterator[None]:
    """float32 computed as float32. On a GPU, convolutions and matmuls may round their inputs to TF32 and autotune
    different algorithms for a grouped and a plain convolution: rounding the probe check must not mistake for a
    forward that mixes channels."""
    matmul = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        with torch.backends.cudnn.flags(
            enabled=torch.backends.cudnn.enabled, benchmark=False, deterministic=True, allow_tf32=False
        ):
            yield
    finally:
        torch.set_float32_matmul_precision(matmul)


class SharedBatch(nn.Module):
    """A packed network that feeds one batch to every member (evaluation: all members score the same examples);
    output [M, batch, classes]."""

    def __init__(self, network: PackedNetwork):
        super().__init__()
        self.network = network

    def forward(self, x: Tensor) -> Tensor:
        return self.network(pack_inputs([x] * self.network.size))


def pack_inputs(inputs: Sequence[Tensor]) -> Tensor:
    """The members' batches ([B, C, ...] each) as the packed network's input [B, M*C, ...]. Concatenating
    channels_last images keeps them channels_last."""
    return torch.cat(list(inputs), dim=1)


def pack_optimizer_state(packed: torch.optim.Optimizer, members: Sequence[torch.optim.Optimizer]) -> None:
    """Load the members' optimiser states (momentum, Adam's moments and step) into the packed optimiser. The
    members' parameters and the packed ones correspond one to one, in order."""
    states = [o.state_dict() for o in members]
    shapes = {i: p.shape for i, p in enumerate(p for g in packed.param_groups for p in g["params"])}
    state = {}
    for index in states[0]["state"]:
        entries = [s["state"][index] for s in states]
        state[index] = {
            key: pack_tensor(
                shapes[index] if torch.is_tensor(value) and value.ndim else torch.Size(), [e[key] for e in entries]
            )
            if torch.is_tensor(value)
            else value
            for key, value in entries[0].items()
        }
    packed.load_state_dict({"state": state, "param_groups": states[0]["param_groups"]})


def unpack_optimizer_state(packed: torch.optim.Optimizer, members: Sequence[torch.optim.Optimizer]) -> None:
    """Give each member optimiser its share of the packed state (copied: a view would drag the whole packed
    tensor into the member's checkpoint), and the packed learning rates."""
    state = packed.state_dict()
    for m, member in enumerate(members):
        own = member.state_dict()
        shapes = {i: p.shape for i, p in enumerate(p for g in member.param_groups for p in g["params"])}
        member_state = {
            index: {
                key: member_part(value, shapes[index], m).clone() if torch.is_tensor(value) else value
                for key, value in entry.items()
            }
            for index, entry in state["state"].items()
        }
        groups = [
            {**own_group, **{k: v for k, v in group.items() if k != "params"}}
            for own_group, group in zip(own["param_groups"], state["param_groups"])
        ]
        member.load_state_dict({"state": member_state, "param_groups": groups})


# ---------------------------------------------------------------- runs trained as one pack


def pack_key(cfg: DictConfig) -> str:
    """Runs pack together when everything but their loss and seed is the same: one network architecture, data,
    batch size, epochs, optimiser and schedule (one optimiser serves the pack)."""
    rest = {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k not in ("loss", "seed", "resume")}
    return OmegaConf.to_yaml(OmegaConf.create(rest))


class MemberFailure(Exception):
    """A member's loss raised while the pack trained: `members` (indices in the pack) are those that loss call
    scored. They fail, as each would alone; the others go on without them."""

    def __init__(self, members: list[int], error: Exception):
        super().__init__(what_failed(error))
        self.members = members


def train_packed_epoch(
    packed: torch.nn.Module, batches: Sequence[Batches], losses_of, optimizer, scheduler, dtype
) -> torch.Tensor:
    """One pass over the members' training batches: each member draws its own (its own order and augmentation)
    and scores its own loss (`losses_of`, from member_losses); one backward pass and one optimiser step serve all.
    Returns train_one_epoch's device-side sums per member, [M, 3]."""
    packed.train()
    sums = torch.zeros(len(batches), 3, device=batches[0].labels.device)
    for x, y in packed_batches(batches):
        z, losses = train_step(packed, x, lambda z: losses_of(z, y), optimizer, scheduler, dtype)  # noqa: B023 (called in this iteration)
        n = y.shape[1]
        correct = (z.detach().argmax(2) == y).sum(1).float()
        sums += torch.stack([losses * n, correct, z.grad.norm(dim=2).sum(1) * n], dim=1)
    return sums


def member_losses(
    loss_fns: Sequence[nn.Module], keys: Sequence[str], device: torch.device
) -> Callable[[Tensor, Tensor], Tensor]:
    """The function from the pack's logits [M, B, C] and labels [M, B] to each member's loss [M]. Members whose
    losses are one and the same (equal `keys`: the same loss, parameters and score table, seeds apart) are scored
    by one call over all their examples, one batch mean per member: the same values, in fewer kernels."""
    groups: dict[str, list[int]] = {}
    for m, (fn, key) in enumerate(zip(loss_fns, keys)):
        # a loss that is the batch mean of its per_example values, as ScoreLoss's forward makes it
        same = isinstance(fn, ScoreLoss) and type(fn).forward is ScoreLoss.forward and fn.reduction == "mean"
        groups.setdefault(key if same else f"own {m}", []).append(m)
    members = list(groups.values())
    at = {tuple(group): torch.tensor(group, device=device) for group in members}  # index tensors made once
    order = torch.argsort(torch.tensor([m for group in members for m in group], device=device))

    def group_losses(group: list[int], z: Tensor, y: Tensor) -> Tensor:
        fn = loss_fns[group[0]]
        if len(group) == 1:
            return fn(z[group[0]], y[group[0]]).reshape(1)
        index = at[tuple(group)]
        values = fn.per_example(z[index].flatten(0, 1), y[index].flatten())
        return values.view(len(group), -1).mean(1)

    def losses_of(z: Tensor, y: Tensor) -> Tensor:
        parts = []
        for group in members:
            try:
                parts.append(group_losses(group, z, y))
            except (OSError, MemoryError, torch.OutOfMemoryError):
                raise  # the machine's failure, not the loss's: every member would meet it
            except Exception as err:
                raise MemberFailure(group, err) from err
        return torch.cat(parts)[order]

    return losses_of


class Pack:
    """Runs at the same epoch trained as one PackedNetwork, with one optimiser and schedule over its weights.
    The members' own models, optimisers and schedules receive the packed state after every epoch, so each
    member evaluates and checkpoints exactly as a run trained alone does."""

    def __init__(self, runs: list[Run]):
        self.runs = runs
        cfg, first = runs[0].cfg, runs[0]
        probe = normalise(first.data.train_x[:4], first.mean, first.std)  # not from the batches: their order stays
        self.network = PackedNetwork([run.model for run in runs], probe).to(memory_format=torch.channels_last)
        self.step_network = compiled(self.network, cfg)
        self.optimizer = build_optimizer(cfg.optim, self.network)
        self.scheduler = build_scheduler(cfg.schedule, self.optimizer, len(first.batches), first.epochs)
        # After the schedule is built (which sets the learning rate of its first step), as a checkpoint loads.
        pack_optimizer_state(self.optimizer, [run.optimizer for run in runs])
        self.scheduler.load_state_dict(first.scheduler.state_dict())
        self.losses_of = member_losses(
            [run.loss_fn for run in runs], [OmegaConf.to_yaml(run.cfg.loss) for run in runs], first.scores.device
        )

    def train_epoch(self) -> list[list[float]]:
        sums = train_packed_epoch(
            self.step_network,
            [run.batches for run in self.runs],
            self.losses_of,
            self.optimizer,
            self.scheduler,
            self.runs[0].precision.dtype,
        )
        return sums.tolist()  # the epoch's one sync

    def evaluate(self) -> list[tuple[dict[str, float], Tensor] | None]:
        """On a GPU, each member's metrics and test confusion from the packed network fed the same batches: one
        set of kernels for all members, as in training (each member's own model costs M times the launches). On a
        CPU, None for each: the members then evaluate their own models (end_epoch), since oneDNN's grouped
        convolutions are slower than its plain ones (measured: docs/performance.md)."""
        first = self.runs[0]
        if first.scores.device.type != "cuda":
            return [None] * len(self.runs)
        shared = SharedBatch(self.network)
        try:
            return evaluate_models(
                shared,
                first.data,
                first.scores,
                int(first.cfg.train.eval_batch_size),
                first.mean,
                first.std,
                first.precision.dtype,
            )
        finally:
            self.network.train()

    def unpack(self) -> None:
        self.network.unpack_into([run.model for run in self.runs])
        unpack_optimizer_state(self.optimizer, [run.optimizer for run in self.runs])
        for run in self.runs:
            run.scheduler.load_state_dict(self.scheduler.state_dict())


def train_pack(runs: list[Run]) -> dict[Path, str]:
    """Train runs that share everything but loss and seed, and start at the same epoch, as one PackedNetwork;
    returns each run directory's final status. A member that diverges leaves the pack, which goes on with the
    others. So does a member whose loss raises: it fails with its error, as it would alone, and the others repeat
    that epoch from its start (their models, optimisers, schedules and data order stand there until the epoch
    ends), so each goes on as it would have alone."""
    statuses: dict[Path, str] = {}
    epochs, steps = runs[0].epochs, len(runs[0].batches)
    progress = Progress(
        f"pack of {len(runs)} runs", epochs * steps, runs[0].epoch * steps, bool(runs[0].cfg.train.progress)
    )
    try:
        pack = repack(runs, progress)
        # The report says which runs shared their training time: the pack they started in, which a member that
        # fails or diverges leaves without changing what the others' earlier epochs were.
        for run in runs:
            write_provenance(run.run_dir, run.scores.device, run.precision, str(run.cfg.precision), pack=len(runs))
        while runs and runs[0].epoch < epochs:
            began = time.perf_counter()
            data_order = [run.generator.get_state() for run in runs]
            try:
                sums = pack.train_epoch()
            except MemberFailure as failure:
                gone = [runs[m] for m in failure.members]
                for run in gone:
                    message = f"run {run.run_dir}: {failure}"
                    log.error(message)
                    record_end(run.run_dir, "failed", message)
                    statuses[run.run_dir] = "failed"
                for run, state in zip(runs, data_order):  # the others train this epoch again, from its start
                    run.generator.set_state(state)
                progress.at(runs[0].epoch * steps)
            else:
                pack.unpack()
                evaluated = pack.evaluate()
                spent = time.perf_counter() - began  # each member's epoch: the pack's training and evaluation
                gone = [
                    run
                    for run, own, result in zip(runs, sums, evaluated)
                    if end_epoch(run, own, spent, progress, result)
                ]
                statuses.update({run.run_dir: "diverged" for run in gone})
            if gone:
                runs = [run for run in runs if run not in gone]
                pack = repack(runs, progress)
    finally:
        progress.close()
    statuses.update({run.run_dir: finish_run(run) for run in runs})
    return statuses


def repack(runs: list[Run], progress: Progress) -> Pack | None:
    """The Pack of `runs` (None when none is left), the progress bar counting its steps."""
    if not runs:
        return None
    runs[0].batches.on_step = progress.step
    return Pack(runs)


def train_packed(jobs: list[tuple[DictConfig, Path]], size: int) -> list[str]:
    """Train the jobs (config, run directory) in this process, those that share everything but loss and seed (and
    stand at the same epoch) packed `size` at a time (0: all together); returns each job's final status. Each job
    resumes when its config says `resume` (as train_run's resume). Like a sweep of train_run calls, a job that
    fails is logged and the others go on; Ctrl-C stops them all, each recorded as interrupted."""
    statuses: dict[Path, str] = {}
    opened: list[Run] = []
    with ExitStack() as locks:
        try:
            for cfg, run_dir in jobs:
                run = open_job(cfg, run_dir, locks, statuses)
                if run is not None:
                    opened.append(run)
            for group in pack_groups(opened, size):
                dirs = [run.run_dir for run in group]
                try:
                    with recorded_failures(dirs):
                        statuses.update(train_pack(group))
                except LossbenchError as err:
                    log.error("%s: %s", ", ".join(map(str, dirs)), err)
                    statuses.update({run_dir: "failed" for run_dir in dirs})
        except KeyboardInterrupt:  # the runs opened but not yet trained stop too
            for run in opened:
                if run.run_dir not in statuses:
                    record_end(run.run_dir, "interrupted", "interrupted by the user")
            raise
    return [statuses[run_dir] for _, run_dir in jobs]


def open_job(cfg: DictConfig, run_dir: Path, locks: ExitStack, statuses: dict[Path, str]) -> Run | None:
    """A job's run, locked and started (from its checkpoint when resuming) by open_run, as train_run's; None when
    it must not train (finished or diverged already: its status goes into `statuses`) or cannot (failed, logged)."""
    try:
        run = open_run(cfg, run_dir, bool(cfg.get("resume", False)), locks)
    except LossbenchError as err:
        log.error("%s: %s", run_dir, err)
        statuses[run_dir] = "failed"
        return None
    if isinstance(run, str):
        statuses[run_dir] = run
        return None
    return run


def pack_groups(runs: list[Run], size: int) -> list[list[Run]]:
    """The runs in packs: by pack_key, epoch and precision (a resumed comparison's runs may stand at different
    epochs, and go on in the precision and layout each recorded), at most `size` runs each (0: no limit), in the
    jobs' order."""
    groups: dict[tuple[str, int, str, str | None], list[Run]] = {}
    for run in runs:
        key = (pack_key(run.cfg), run.epoch, run.precision.name, run.precision.layout)
        groups.setdefault(key, []).append(run)
    limit = size or len(runs) or 1
    return [group[i : i + limit] for group in groups.values() for i in range(0, len(group), limit)]
