"""CUDA graphs for the fast path's cross-entropy input gradients.

On a GPU a CIFAR-sized network's forward and backward pass over a batch of a few hundred images is bound by
kernel launches, not arithmetic: replaying one captured graph per (fast view, batch shape) removes them. A
graph is used only after it has given the eager pass's gradient, loss and logits on the batch it was captured
with (a model that draws random numbers in eval mode fails that check and stays eager). Only fast views are
graphed: they are frozen copies, rebuilt when the model changes, so the weights a graph reads never move.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict

import torch
from torch import nn

ENABLED = True  # bench/bench_attacks.py switches it off to time the eager fast path beside it
MAX_GRAPHS = 4  # each graph keeps its activations' memory; the least recently used one goes first

_GRAPHS: OrderedDict[tuple, _Graph | None] = OrderedDict()
_LOCK = threading.Lock()

Gradient = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def cross_entropy_gradient(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Gradient:
    """(d summed CE / dx, per-sample CE, logits) with grad enabled, as the eager fast path computes them."""
    xb = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = net(xb)
        per_sample = nn.functional.cross_entropy(logits.float(), y, reduction="none")
        (grad,) = torch.autograd.grad(per_sample.sum(), xb)
    return grad.detach(), per_sample.detach(), logits.detach()


def graphed_gradient(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Gradient | None:
    """The same triple from a replayed CUDA graph, or None where no graph applies (not CUDA, switched off,
    or a graph that failed its check): the caller then takes the eager pass."""
    if not ENABLED or not x.is_cuda or len(x) == 0:
        return None
    key = (id(net), tuple(x.shape), x.stride(), x.dtype, x.device, y.dtype)
    with _LOCK:
        graph = _GRAPHS.get(key, False)
        if graph is not False:
            _GRAPHS.move_to_end(key)
    if graph is not False and (graph is None or graph.net() is net):
        return graph(x, y) if graph is not None else None
    graph = _Graph.capture(net, x, y)
    with _LOCK:
        _GRAPHS[key] = graph
        while len(_GRAPHS) > MAX_GRAPHS:
            _GRAPHS.popitem(last=False)
    return graph(x, y) if graph is not None else None


def clear() -> None:
    """Forget every captured graph (and the GPU memory it holds)."""
    with _LOCK:
        _GRAPHS.clear()


class _Graph:
    def __init__(self, net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
        self.net = weakref.ref(net)
        self.lock = threading.Lock()  # static inputs and outputs: one replay at a time
        self.x = torch.empty_like(x).requires_grad_(True)
        self.y = y.clone()
        with torch.no_grad():
            self.x.copy_(x)
        side = torch.cuda.Stream(x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):
            for _ in range(3):  # warm-up outside the graph: cuDNN picks its kernels, autograd its buffers
                cross_entropy_gradient(net, self.x, self.y)
        torch.cuda.current_stream(x.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
            self.out = cross_entropy_gradient(net, self.x, self.y)

    @classmethod
    def capture(cls, net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> _Graph | None:
        try:
            graph = cls(net, x, y)
        except torch.cuda.OutOfMemoryError:  # the graphs held so far are the likeliest culprits: let them go
            clear()
            torch.cuda.empty_cache()
            return None
        except RuntimeError:  # an op that cannot be captured: stay eager for this net and shape
            return None
        want = cross_entropy_gradient(net, x, y)
        got = graph(x, y)
        same = all(torch.allclose(g.float(), w.float(), rtol=1e-4, atol=1e-6)
                   for g, w in zip(got, want, strict=True))
        return graph if same else None

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> Gradient:
        with self.lock, torch.no_grad():
            self.x.copy_(x)
            self.y.copy_(y)
            self.graph.replay()
            return tuple(t.clone() for t in self.out)  # type: ignore[return-value]
