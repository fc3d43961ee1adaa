"""lossbench.pack: M models as one network compute what the M models compute, and state moves both ways."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lossbench.errors import LossbenchError
from lossbench.models import MLP, SmallCNN, resnet18_cifar
from lossbench.pack import PackedNetwork, pack_inputs, pack_optimizer_state, unpack_optimizer_state

MODELS = {
    "small_cnn": (lambda: SmallCNN(5, widths=(4, 8)), (3, 16, 16)),
    "mlp": (lambda: MLP(5, (12,), hidden=(16, 8), dropout=0.0), (12,)),
    "resnet18": (lambda: resnet18_cifar(5), (3, 8, 8)),
}


def members(name: str, count: int = 3) -> tuple[list[nn.Module], tuple[int, ...]]:
    make, shape = MODELS[name]
    nets = []
    for seed in range(count):
        torch.manual_seed(seed)
        nets.append(make())
    for net in nets:  # running statistics that differ between members, so that eval mode tests them too
        with torch.no_grad():
            net(torch.randn(8, *shape))
    return nets, shape


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_a_packed_network_computes_each_members_logits_gradients_and_statistics(name, mode):
    nets, shape = members(name)
    packed = PackedNetwork(nets, torch.randn(4, *shape))
    batches = [(torch.randn(6, *shape), torch.randint(0, 5, (6,))) for _ in nets]
    logits = getattr(packed, mode)()(pack_inputs([x for x, _ in batches]))
    assert logits.shape == (3, 6, 5)
    own = [getattr(net, mode)()(x) for net, (x, _) in zip(nets, batches)]
    sum(F.cross_entropy(logits[m], y) for m, (_, y) in enumerate(batches)).backward()
    sum(F.cross_entropy(z, y) for z, (_, y) in zip(own, batches)).backward()
    close = dict(atol=1e-4, rtol=1e-3)
    for m in range(3):
        torch.testing.assert_close(logits[m], own[m], **close)
    copies = [members(name)[0][0] for _ in nets]  # receive the packed weights and statistics
    packed.unpack_into(copies)
    for net, copy in zip(nets, copies):
        for (key, mine), theirs in zip(net.state_dict().items(), copy.state_dict().values()):
            torch.testing.assert_close(theirs, mine, **close, msg=key)
    grads = dict(packed.net.named_parameters())
    for key, param in nets[1].named_parameters():
        packed_grad = grads[key].grad
        part = packed_grad[1] if packed_grad.ndim == param.ndim + 1 else packed_grad.narrow(0, param.shape[0], param.shape[0])
        torch.testing.assert_close(part, param.grad, **close, msg=key)


def test_packed_and_separate_sgd_steps_agree_and_the_state_travels_back():
    nets, shape = members("small_cnn", 2)
    packed = PackedNetwork(nets, torch.randn(4, *shape))
    make = lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)  # noqa: E731
    own = [make(net.parameters()) for net in nets]
    together = make(packed.parameters())
    for _ in range(2):
        batches = [(torch.randn(6, *shape), torch.randint(0, 5, (6,))) for _ in nets]
        logits = packed(pack_inputs([x for x, _ in batches]))
        together.zero_grad()
        sum(F.cross_entropy(logits[m], y) for m, (_, y) in enumerate(batches)).backward()
        together.step()
        for net, optimizer, (x, y) in zip(nets, own, batches):
            optimizer.zero_grad()
            F.cross_entropy(net(x), y).backward()
            optimizer.step()
    copies, _ = members("small_cnn", 2)
    copy_optimizers = [make(c.parameters()) for c in copies]
    packed.unpack_into(copies)
    unpack_optimizer_state(together, copy_optimizers)
    for net, copy, mine, theirs in zip(nets, copies, own, copy_optimizers):
        for a, b in zip(net.parameters(), copy.parameters()):
            torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4)
        for a, b in zip(mine.state_dict()["state"].values(), theirs.state_dict()["state"].values()):
            torch.testing.assert_close(b["momentum_buffer"], a["momentum_buffer"], atol=1e-5, rtol=1e-4)
            assert b["momentum_buffer"].untyped_storage().nbytes() == b["momentum_buffer"].nbytes  # a copy, no view
    again = make(packed.parameters())
    pack_optimizer_state(again, own)
    for a, b in zip(together.state_dict()["state"].values(), again.state_dict()["state"].values()):
        torch.testing.assert_close(b["momentum_buffer"], a["momentum_buffer"], atol=1e-5, rtol=1e-4)


class Normed(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm, self.head = nn.LayerNorm(6), nn.Linear(6, 3)

    def forward(self, x):
        return self.head(self.norm(x))


class Mixing(nn.Module):
    def __init__(self):
        super().__init__()
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        return self.head(x - x.mean(dim=1, keepdim=True))  # the mean runs over every member's features


@pytest.mark.parametrize(("model", "message"), [
    (Normed, "Normed cannot be packed: its LayerNorm (norm) has weights of a kind only Conv1d"),
    (Mixing, "Mixing cannot be packed: its forward mixes the packed models' channels"),
])  # fmt: skip
def test_a_model_that_cannot_be_packed_is_refused_by_name(model, message):
    with pytest.raises(LossbenchError, match=re.escape(message)):
        PackedNetwork([model(), model()], torch.randn(4, 6))
