"""Small test modules for the engine. Attribute names are deliberately unrelated to the blocks'."""

from __future__ import annotations

import torch
from torch import nn

from reparam.numerics import randomize_batchnorm, scale_relative_error


def _attribute(value: object) -> object:
    """Plain values by value (torch.export re-creates equal tuples), anything else by identity."""
    return value if isinstance(value, (int, float, str, bool, tuple, type(None))) else id(value)


def fingerprint(model: nn.Module) -> dict:
    """Everything a conversion must leave as it was: the module tree, each module's own tables and
    flags, and every parameter and buffer (object, value, requires_grad)."""
    modules = {
        name: (id(m), type(m), m.training, {k: _attribute(v) for k, v in vars(m).items()})
        for name, m in model.named_modules(remove_duplicate=False)
    }
    tensors = {
        name: (id(t), t.requires_grad, t.detach().clone())
        for name, t in [
            *model.named_parameters(remove_duplicate=False),
            *model.named_buffers(remove_duplicate=False),
        ]
    }
    return {"modules": modules, "tensors": tensors}


def assert_untouched(model: nn.Module, before: dict) -> None:
    """Fail if ``model`` differs from its ``fingerprint`` taken earlier."""
    after = fingerprint(model)
    assert after["modules"] == before["modules"], "the conversion changed the input model's modules"
    assert after["tensors"].keys() == before["tensors"].keys()
    for name, (ident, grad, value) in before["tensors"].items():
        ident2, grad2, value2 = after["tensors"][name]
        assert (ident2, grad2) == (ident, grad), f"{name} was replaced"
        same = torch.equal(value.isnan(), value2.isnan()) and torch.equal(
            value.nan_to_num(), value2.nan_to_num()
        )
        assert same, f"the conversion changed {name}"


def crop(x: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    if rows:
        x = x[:, :, rows:-rows, :]
    if cols:
        x = x[:, :, :, cols:-cols]
    return x


class Asym(nn.Module):
    """ACB-like: d×d, 1×d and d×1 conv-BN branches summed; crops when padding < dilation·(d//2)."""

    def __init__(self, cin, cout, d=3, stride=1, pad=1, dil=1, groups=1, bias=False, affine=True, eps=1e-5):
        super().__init__()
        half = dil * (d // 2)
        self.big = nn.Conv2d(cin, cout, d, stride, pad, dil, groups, bias)
        self.nbig = nn.BatchNorm2d(cout, eps=eps, affine=affine)
        # the 1×d branch collapses rows: its row window must sit on the centre row of the d×d window
        self.row_crop = max(half - pad, 0)
        self.wide = nn.Conv2d(cin, cout, (1, d), stride, (max(pad - half, 0), pad), dil, groups, bias)
        self.nwide = nn.BatchNorm2d(cout, eps=eps, affine=affine)
        self.col_crop = max(half - pad, 0)
        self.tall = nn.Conv2d(cin, cout, (d, 1), stride, (pad, max(pad - half, 0)), dil, groups, bias)
        self.ntall = nn.BatchNorm2d(cout, eps=eps, affine=affine)

    def forward(self, x):
        a = self.nbig(self.big(x))
        b = self.nwide(self.wide(crop(x, self.row_crop, 0)))
        c = self.ntall(self.tall(crop(x, 0, self.col_crop)))
        return a + b + c


class Rep(nn.Module):
    """RepVGG-like: d×d conv-BN + 1×1 conv-BN (+ BN identity, + avg-pool), summed, then ReLU."""

    def __init__(
        self,
        cin,
        cout,
        d=3,
        stride=1,
        dil=1,
        groups=1,
        identity=True,
        pool=False,
        bias=False,
        affine=True,
        eps=1e-5,
    ):
        super().__init__()
        pad = dil * (d // 2)
        self.main = nn.Sequential(
            nn.Conv2d(cin, cout, d, stride, pad, dil, groups, bias),
            nn.BatchNorm2d(cout, eps=eps, affine=affine),
        )
        self.point = nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, 0, 1, groups, bias), nn.BatchNorm2d(cout, eps=eps, affine=affine)
        )
        self.skip_norm = nn.BatchNorm2d(cout, eps=eps, affine=affine) if identity and cin == cout else None
        self.smooth = nn.AvgPool2d(d, stride, d // 2) if pool else None
        self.act = nn.ReLU()

    def forward(self, x):
        terms = [self.main(x), self.point(x)]
        if self.skip_norm is not None:
            terms.append(self.skip_norm(x))
        if self.smooth is not None:
            terms.append(self.smooth(x))
        return self.act(sum(terms))


class Chain(nn.Module):
    """A few blocks in a row, the way a network stacks them."""

    def __init__(self, *blocks: nn.Module):
        super().__init__()
        self.body = nn.Sequential(*blocks)

    def forward(self, x):
        return self.body(x)


def prepared(model: nn.Module, seed: int = 0, dtype: torch.dtype = torch.float32) -> nn.Module:
    """Randomized BN statistics/affine, eval mode, given dtype."""
    torch.manual_seed(seed)
    return randomize_batchnorm(model, seed=seed).to(dtype).eval()


def error(original: nn.Module, deploy: nn.Module, *inputs: torch.Tensor) -> float:
    with torch.no_grad():
        ref = original(*inputs)
        got = deploy(*inputs)
    assert torch.isfinite(ref).all() and float(ref.abs().max()) > 1e-3, "reference output is degenerate"
    return scale_relative_error(ref.double().numpy(), got.double().numpy())


def count(model: nn.Module, kind: type | tuple) -> int:
    return sum(isinstance(m, kind) for m in model.modules())
