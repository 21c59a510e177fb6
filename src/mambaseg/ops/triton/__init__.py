"""The Triton backend of the selective scan (imports triton; `mambaseg.ops.selective_scan`
loads it only when asked for, and treats a failed import as "unavailable").

- `scan_fwd`, `scan_bwd`: the forward and backward kernels; `_helpers`: their shared
  @triton.jit functions.
- `config`: the launch configuration (`make_config`).
- `launch`: per-problem plans, the launches and the autograd Function
  (`selective_scan_triton`); `fast_launch`: direct calls of compiled kernels.
"""
