"""Several runs' models as one network, side by side, so that every kernel works on all of them at once.

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
ordinary run's.
"""

from __future__ import annotations

import copy
from typing import Sequence

import torch
from torch import Tensor, nn

from lossbench.errors import LossbenchError, require

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
        return type(first)(first.in_channels * m, first.out_channels * m, first.kernel_size, first.stride,
                           first.padding, first.dilation, first.groups * m, first.bias is not None,
                           first.padding_mode)  # fmt: skip
    return type(first)(first.num_features * m, first.eps, first.momentum, first.affine, first.track_running_stats)


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
                self.net.set_submodule(name, packed_layer([m.get_submodule(name) for m in members]))
            elif any(True for _ in module.parameters(recurse=False)) or any(True for _ in module.buffers(recurse=False)):
                raise LossbenchError(f"{type(members[0]).__name__} cannot be packed: its {type(module).__name__} "
                                     f"({name or 'the model itself'}) has weights of a kind only {', '.join(t.__name__ for t in PACKABLE)} "
                                     "can be packed; train these runs with another launcher")  # fmt: skip
        self.to(next(members[0].parameters()).device)
        self.load_members(members)
        self.check(members, probe)

    def forward(self, x: Tensor) -> Tensor:
        out = self.net(x)
        return out.view(len(out), self.size, -1).transpose(0, 1)

    def load_members(self, members: Sequence[nn.Module]) -> None:
        """Set the packed weights and statistics from the members'."""
        states = [m.state_dict() for m in members]
        packed = {key: pack_tensor(value.shape, [s[key] for s in states]) for key, value in self.net.state_dict().items()}
        self.net.load_state_dict(packed)

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
            packed = self.eval()(pack_inputs(inputs))
            own = torch.stack([member.eval()(x) for member, x in zip(members, inputs)])
        finally:
            self.train()
            for member, mode in zip(members, modes):
                member.train(mode)
        scale = own.abs().max().clamp(min=1.0)
        if packed.shape != own.shape or not torch.allclose(packed, own, rtol=1e-3, atol=1e-4 * float(scale)):
            raise LossbenchError(f"{type(members[0]).__name__} cannot be packed: its forward mixes the packed models' "
                                 "channels (the packed output differs from each model's own); train these runs with "
                                 "another launcher")  # fmt: skip


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
        state[index] = {key: pack_tensor(shapes[index] if torch.is_tensor(value) and value.ndim else torch.Size(),
                                         [e[key] for e in entries]) if torch.is_tensor(value) else value
                        for key, value in entries[0].items()}  # fmt: skip
    packed.load_state_dict({"state": state, "param_groups": states[0]["param_groups"]})


def unpack_optimizer_state(packed: torch.optim.Optimizer, members: Sequence[torch.optim.Optimizer]) -> None:
    """Give each member optimiser its share of the packed state (copied: a view would drag the whole packed
    tensor into the member's checkpoint), and the packed learning rates."""
    state = packed.state_dict()
    for m, member in enumerate(members):
        own = member.state_dict()
        shapes = {i: p.shape for i, p in enumerate(p for g in member.param_groups for p in g["params"])}
        member_state = {index: {key: member_part(value, shapes[index], m).clone() if torch.is_tensor(value) else value
                                for key, value in entry.items()}
                        for index, entry in state["state"].items()}  # fmt: skip
        groups = [{**own_group, **{k: v for k, v in group.items() if k != "params"}}
                  for own_group, group in zip(own["param_groups"], state["param_groups"])]  # fmt: skip
        member.load_state_dict({"state": member_state, "param_groups": groups})
