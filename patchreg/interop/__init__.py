"""Bridges to other imaging libraries; each submodule imports its library only when imported itself.

- `patchreg.interop.deepinv`: patchreg's priors as DeepInverse `deepinv.optim.Prior` objects
  (needs `pip install deepinv`; deepinv is not a patchreg dependency).
"""
