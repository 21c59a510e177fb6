"""The Mamba block, with the parameter names, shapes and initialisation of mamba_ssm 1.x.

A state_dict saved from ``mamba_ssm.modules.mamba_simple.Mamba`` loads into this class unchanged:
in_proj (no bias), conv1d (depthwise, causal, with bias), x_proj, dt_proj, A_log, D, out_proj.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from mambaseg.ops import selective_scan


class Mamba(nn.Module):
    """Selective state-space block: (batch, length, d_model) -> (batch, length, d_model)."""

    def __init__(self, d_model, d_state=16, d_conv=4, expand=2, dt_rank="auto", dt_min=0.001,
                 dt_max=0.1, dt_init="random", dt_scale=1.0, dt_init_floor=1e-4, conv_bias=True,
                 bias=False, scan_backend=None, device=None, dtype=None):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.scan_backend = scan_backend

        self.in_proj = nn.Linear(d_model, self.d_inner * 2, bias=bias, **factory)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, kernel_size=d_conv, groups=self.d_inner,
                                padding=d_conv - 1, bias=conv_bias, **factory)
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False, **factory)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True, **factory)

        # dt_proj: weight uniform (or constant) with std dt_rank^-0.5, bias = softplus^-1(dt),
        # dt log-uniform in [dt_min, dt_max]
        dt_init_std = self.dt_rank ** -0.5 * dt_scale
        if dt_init == "constant":
            nn.init.constant_(self.dt_proj.weight, dt_init_std)
        elif dt_init == "random":
            nn.init.uniform_(self.dt_proj.weight, -dt_init_std, dt_init_std)
        else:
            raise ValueError(f"dt_init must be 'random' or 'constant', not {dt_init!r}")
        dt = torch.exp(torch.rand(self.d_inner, **factory) * (math.log(dt_max) - math.log(dt_min))
                       + math.log(dt_min)).clamp(min=dt_init_floor)
        inv_dt = dt + torch.log(-torch.expm1(-dt))
        with torch.no_grad():
            self.dt_proj.bias.copy_(inv_dt)
        self.dt_proj.bias._no_reinit = True

        A = torch.arange(1, d_state + 1, dtype=torch.float32, device=device).repeat(self.d_inner, 1)
        self.A_log = nn.Parameter(torch.log(A))
        self.A_log._no_weight_decay = True
        self.D = nn.Parameter(torch.ones(self.d_inner, device=device))
        self.D._no_weight_decay = True
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **factory)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """(batch, length, d_model) -> (batch, length, d_model).

        The projections are written so that every (batch, channels, length) tensor handed to the
        scan has stride 1 along length (what the kernels load in tiles) without extra copies:
        x, z and dt come from ``W @ input`` products, B and C are slices of ``x_proj.weight @ x``.
        """
        batch, length, _ = hidden_states.shape
        e, r, n = self.d_inner, self.dt_rank, self.d_state
        # in_proj as (2E, B*L) -> (B, 2E, L) view, stride 1 along L (one GEMM, as mamba_ssm)
        xz = self.in_proj.weight @ hidden_states.reshape(batch * length, -1).t()
        xz = xz.view(2 * e, batch, length).permute(1, 0, 2)
        if self.in_proj.bias is not None:
            xz = xz + self.in_proj.bias.to(xz.dtype)[None, :, None]
        x, z = xz[:, :e], xz[:, e:]
        x = F.silu(self.conv1d(x)[..., :length])  # depthwise causal conv: (B, E, L) contiguous
        x_dbl = torch.matmul(self.x_proj.weight, x)  # (B, R + 2N, L)
        dt = torch.matmul(self.dt_proj.weight, x_dbl[:, :r])  # (B, E, L); bias added in the scan
        B, C = x_dbl[:, r:r + n], x_dbl[:, r + n:]  # (B, N, L) views, stride 1 along L
        A = -torch.exp(self.A_log.float())
        y = selective_scan(
            x, dt, A, B, C, self.D.float(), z=z, delta_bias=self.dt_proj.bias.float(),
            delta_softplus=True, backend=self.scan_backend,
        )
        return self.out_proj(y.transpose(1, 2))
