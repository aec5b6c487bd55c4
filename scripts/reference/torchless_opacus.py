"""Loads the parts of Opacus that fedsyn is compared against, without importing torch.

Opacus imports torch at package level (``opacus/__init__.py`` pulls in the optimizers and the
grad-sample machinery), so ``import opacus`` needs a torch install of several GB. Its RDP
analysis module, ``opacus/accountants/analysis/rdp.py``, needs only numpy and scipy, so we load
that one file by path with importlib. The package is located with ``importlib.util.find_spec``,
which finds a top-level package without executing its ``__init__``.

``get_noise_multiplier`` (``opacus/accountants/utils.py``) imports ``create_accountant`` from
``opacus.accountants``, whose ``accountant.py`` imports ``opacus.optimizers`` and so torch.
``load_get_noise_multiplier`` runs Opacus's own ``utils.py`` source, with a stand-in
``opacus.accountants`` module whose only accountant keeps Opacus's history format and computes
ε with Opacus's own ``compute_rdp`` and ``get_privacy_spent`` on Opacus's default orders. The
bisection loop that is timed is therefore Opacus's; only the accountant object around the RDP
functions is a torch-free stand-in (Opacus's ``RDPAccountant.get_epsilon`` does the same sum
over its history and the same conversion).
"""

import importlib.util
import sys
import types
from pathlib import Path

# Opacus's RDPAccountant.DEFAULT_ALPHAS, rebuilt from the same expression (the class lives in a
# module that imports torch).
OPACUS_DEFAULT_ALPHAS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))


def opacus_dir() -> Path:
    """The installed opacus package directory, found without importing it."""
    spec = importlib.util.find_spec("opacus")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("opacus is not installed: run scripts/bench-venv.sh")
    return Path(list(spec.submodule_search_locations)[0])


def opacus_version() -> str:
    """The installed opacus version, read from its package metadata."""
    from importlib.metadata import version

    return version("opacus")


def _load_file(module_name: str, path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_rdp_analysis() -> types.ModuleType:
    """``opacus/accountants/analysis/rdp.py``: ``compute_rdp`` and ``get_privacy_spent``."""
    return _load_file(
        "opacus_rdp_analysis", opacus_dir() / "accountants" / "analysis" / "rdp.py"
    )


class _TorchlessRdpAccountant:
    """Stand-in for Opacus's RDPAccountant as ``get_noise_multiplier`` uses it: a ``history`` of
    (noise_multiplier, sample_rate, steps) and ``get_epsilon(delta)``."""

    def __init__(self, analysis: types.ModuleType):
        self.history = []
        self._analysis = analysis

    def get_epsilon(self, delta, alphas=None, **_kwargs):
        alphas = OPACUS_DEFAULT_ALPHAS if alphas is None else alphas
        rdp = sum(
            self._analysis.compute_rdp(
                q=rate, noise_multiplier=sigma, steps=steps, orders=alphas
            )
            for (sigma, rate, steps) in self.history
        )
        eps, _order = self._analysis.get_privacy_spent(
            orders=alphas, rdp=rdp, delta=delta
        )
        return float(eps)


def load_get_noise_multiplier():
    """Opacus's ``get_noise_multiplier`` from its own ``utils.py``, bound to the torch-free
    stand-in accountant described in the module docstring. Only ``accountant="rdp"`` works."""
    analysis = load_rdp_analysis()
    utils_path = opacus_dir() / "accountants" / "utils.py"

    def create_accountant(mechanism: str):
        if mechanism != "rdp":
            raise ValueError(f"only the rdp accountant is available without torch, not {mechanism}")
        return _TorchlessRdpAccountant(analysis)

    stand_in = types.ModuleType("opacus.accountants")
    stand_in.create_accountant = create_accountant
    saved = {name: sys.modules.get(name) for name in ("opacus", "opacus.accountants")}
    sys.modules["opacus"] = types.ModuleType("opacus")
    sys.modules["opacus.accountants"] = stand_in
    try:
        utils = _load_file("opacus_accountants_utils", utils_path)
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
    return utils.get_noise_multiplier
