import pytest
import torch
import torch.nn.functional as F

from reparam import kernel_math as km


def _bn_params(n, gen):
    return (
        torch.randn(n, generator=gen, dtype=torch.float64),
        torch.rand(n, generator=gen, dtype=torch.float64) + 0.5,
        torch.rand(n, generator=gen, dtype=torch.float64) + 0.5,
        torch.randn(n, generator=gen, dtype=torch.float64),
    )


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("has_bias", [True, False])
def test_fold_bn_matches_conv_then_bn(affine, has_bias):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 7, 7, generator=gen, dtype=torch.float64)
    w = torch.randn(6, 4, 3, 3, generator=gen, dtype=torch.float64)
    b = torch.randn(6, generator=gen, dtype=torch.float64) if has_bias else None
    mean, var, gamma, beta = _bn_params(6, gen)
    if not affine:
        gamma = beta = None
    ref = F.batch_norm(F.conv2d(x, w, b, padding=1), mean, var, gamma, beta, False, 0.0, 1e-3)
    wf, bf = km.fold_bn(w, b, mean, var, gamma, beta, 1e-3)
    out = F.conv2d(x, wf, bf, padding=1)
    assert torch.allclose(out, ref, atol=1e-12)


@pytest.mark.parametrize("groups", [1, 2])
def test_fold_bn_transposed(groups):
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2, 4, 5, 5, generator=gen, dtype=torch.float64)
    w = torch.randn(4, 6 // groups, 3, 3, generator=gen, dtype=torch.float64)
    mean, var, gamma, beta = _bn_params(6, gen)
    ref = F.batch_norm(
        F.conv_transpose2d(x, w, None, stride=2, groups=groups), mean, var, gamma, beta, False, 0.0, 1e-5
    )
    wf, bf = km.fold_bn_transposed(w, None, mean, var, gamma, beta, 1e-5, groups=groups)
    out = F.conv_transpose2d(x, wf, bf, stride=2, groups=groups)
    assert torch.allclose(out, ref, atol=1e-12)


def test_pad_kernel_asymmetric_branches_add_into_square():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(1, 3, 9, 8, generator=gen, dtype=torch.float64)
    sq = torch.randn(5, 3, 3, 3, generator=gen, dtype=torch.float64)
    hor = torch.randn(5, 3, 1, 3, generator=gen, dtype=torch.float64)
    ver = torch.randn(5, 3, 3, 1, generator=gen, dtype=torch.float64)
    ref = F.conv2d(x, sq, padding=1) + F.conv2d(x, hor, padding=(0, 1)) + F.conv2d(x, ver, padding=(1, 0))
    merged = sq + km.pad_kernel(hor, (3, 3)) + km.pad_kernel(ver, (3, 3))
    assert torch.allclose(F.conv2d(x, merged, padding=1), ref, atol=1e-12)
    with pytest.raises(ValueError):
        km.pad_kernel(hor, (3, 3), offset=(0, 1))


@pytest.mark.parametrize("groups", [1, 3])
def test_identity_and_avgpool_kernels(groups):
    x = torch.randn(2, 6, 5, 5, dtype=torch.float64)
    ident = km.identity_kernel(6, groups, (3, 3), dtype=torch.float64)
    assert torch.equal(F.conv2d(x, ident, padding=1, groups=groups), x)
    pool = km.avgpool_kernel(6, groups, (3, 3), dtype=torch.float64)
    ref = F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=True)
    assert torch.allclose(F.conv2d(x, pool, padding=1, groups=groups), ref, atol=1e-12)


def test_expand_groups_is_dense_equivalent():
    x = torch.randn(1, 4, 6, 6, dtype=torch.float64)
    w = torch.randn(6, 2, 3, 3, dtype=torch.float64)
    dense = km.expand_groups(w, 2)
    assert torch.allclose(F.conv2d(x, w, groups=2), F.conv2d(x, dense), atol=1e-12)


@pytest.mark.parametrize("groups", [1, 2])
def test_merge_sequential_1x1_kxk(groups):
    x = torch.randn(2, 4, 7, 7, dtype=torch.float64)
    k1 = torch.randn(6, 4 // groups, 1, 1, dtype=torch.float64)
    b1 = torch.randn(6, dtype=torch.float64)
    k2 = torch.randn(8, 6 // groups, 3, 3, dtype=torch.float64)
    b2 = torch.randn(8, dtype=torch.float64)
    ref = F.conv2d(F.conv2d(x, k1, b1, groups=groups), k2, b2, groups=groups)  # padding 0: exact
    k, b = km.merge_sequential_1x1_kxk(k1, b1, k2, b2, groups=groups)
    assert torch.allclose(F.conv2d(x, k, b, groups=groups), ref, atol=1e-10)


@pytest.mark.parametrize("factor", [(1, 1), (2, 1), (2, 3)])
def test_dilate_kernel_matches_dilated_conv(factor):
    x = torch.randn(1, 3, 13, 13, dtype=torch.float64)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    ref = F.conv2d(x, w, padding=(factor[0], factor[1]), dilation=factor)
    wide = km.dilate_kernel(w, factor)
    assert wide.shape[2:] == (2 * factor[0] + 1, 2 * factor[1] + 1)
    assert torch.allclose(F.conv2d(x, wide, padding=(factor[0], factor[1])), ref, atol=1e-12)


@pytest.mark.parametrize(("groups", "target"), [(4, 2), (4, 1), (6, 3), (2, 2)])
def test_regroup_kernel_is_equivalent(groups, target):
    x = torch.randn(2, 12, 5, 5, dtype=torch.float64)
    w = torch.randn(12, 12 // groups, 3, 3, dtype=torch.float64)
    regrouped = km.regroup_kernel(w, groups, target)
    assert regrouped.shape == (12, 12 // target, 3, 3)
    ref = F.conv2d(x, w, padding=1, groups=groups)
    assert torch.allclose(F.conv2d(x, regrouped, padding=1, groups=target), ref, atol=1e-12)
    with pytest.raises(ValueError):
        km.regroup_kernel(w, groups, 5)


@pytest.mark.parametrize(("groups", "size", "stride"), [(1, (3, 3), 1), (2, (3, 3), 2), (4, (5, 3), 1)])
def test_spread_pointwise_is_the_1x1_conv_then_average_pool(groups, size, stride):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 9, 8, generator=gen, dtype=torch.float64)
    w = torch.randn(8, 4 // groups, 1, 1, generator=gen, dtype=torch.float64)
    b = torch.randn(8, generator=gen, dtype=torch.float64)
    ref = F.avg_pool2d(F.conv2d(F.pad(x, [1, 1, 1, 1]), w, b, groups=groups), size, stride)
    k = km.spread_pointwise(w, size)
    assert k.shape == (8, 4 // groups, *size)
    assert torch.allclose(F.conv2d(x, k, b, stride=stride, padding=1, groups=groups), ref, atol=1e-12)
    with pytest.raises(ValueError):
        km.spread_pointwise(torch.randn(8, 4, 3, 3), size)
