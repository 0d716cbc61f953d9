"""How heavy torch work runs in this process: one lock, and fp32 linear layers on oneDNN.

Generation (the engine's worker thread) and judging (a judge's worker thread) run at the same
time during `emeval run`. Two threads each running multi-threaded matrix multiplies on the
same cores oversubscribe them, and OpenMP's spinning workers then slow both down several
times over; taking turns (TORCH_LOCK) keeps every core busy with one job.

On a CPU, torch runs fp32 `nn.Linear` through MKL, which on AMD processors reaches ~70% of
the speed oneDNN gets from the same weights packed once in its own blocked layout (measured
at 64-162 rows: 1.1-1.4x; benchmarks/README.md). `pack_linear_layers` swaps a model's linear
layers for packed ones: the same fp32 arithmetic in a different summation order (relative
differences ~1e-6), and the unpacked weights are freed unless something else holds them.
"""

import threading

import torch

TORCH_LOCK = threading.RLock()


def can_pack(model: torch.nn.Module) -> bool:
    param = next(model.parameters())
    if param.device.type != "cpu" or param.dtype != torch.float32:
        return False
    ops = torch.ops.mkldnn
    has_ops = hasattr(ops, "_reorder_linear_weight") and hasattr(ops, "_linear_pointwise")
    return torch.backends.mkldnn.is_available() and has_ops


class PackedLinear(torch.nn.Module):
    """An inference-only stand-in for an fp32 nn.Linear on a CPU."""

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        # an opaque oneDNN tensor, kept out of parameters() and state_dict()
        self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach())
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, packed"


def pack_linear_layers(model: torch.nn.Module) -> int:
    """Swap every nn.Linear in `model` for a PackedLinear; returns how many were swapped.
    The model is for inference from then on (no gradients, no saving)."""
    found = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if type(child) is torch.nn.Linear
    ]
    with torch.no_grad():
        for parent, name, child in found:
            setattr(parent, name, PackedLinear(child))
        # transformers maps the checkpoint file into memory and the parameters left (e.g. the
        # embeddings) would keep the whole mapping, unpacked weights included, resident
        for param in model.parameters():
            param.data = param.data.clone()
    return len(found)
