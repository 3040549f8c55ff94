"""Comparing floats computed through BLAS with values stored earlier, perhaps on another machine.

torch promises the same result for the same program on the same machine, not across CPUs: another
BLAS kernel or summation order changes float32 sums by a few units in the last place (ulp) of the
operands. A stored value is therefore compared within a tolerance tied to float32 rounding, never
bit for bit.
"""

from __future__ import annotations

import torch

EPS32 = torch.finfo(torch.float32).eps  # 2**-23: one ulp of 1.0
ULPS = 64  # rounding in sums over a few layers and a few dozen tokens, with ample room


def assert_float32_close(actual: torch.Tensor, expected: torch.Tensor, ulps: int = ULPS, msg: str = "") -> None:
    """``|actual - expected| <= ulps * eps32 * max|expected|`` elementwise, same shape and dtype.

    The scale is the tensor's largest magnitude: its entries are sums and differences of values of
    that size, so their rounding error is relative to it, not to each (possibly cancelled) entry.
    """
    assert actual.shape == expected.shape and actual.dtype == expected.dtype, (msg, actual.shape, expected.shape)
    atol = ulps * EPS32 * float(expected.abs().max())
    worst = float((actual.double() - expected.double()).abs().max()) if actual.numel() else 0.0
    assert worst <= atol, f"{msg}: max |diff| {worst:.3g} > {atol:.3g} ({ulps} float32 ulps of max |expected|)"
