"""priorkit: faithful, tested, composable PyTorch parts for one literature cluster.

Prototype learning, training regularizers, sparsity and pruning, low-rank adapters and generative priors,
each method a module named by its card id, each proven by a small experiment (``priorkit bench``).
"""

import importlib.abc
import importlib.util
import sys
import warnings

__version__ = "0.1.0"


def _register_adapters_with_peft() -> None:
    """Register priorkit's PEFT tuner types (SoRA, SORSA) so ``PeftModel.from_pretrained`` loads them."""
    try:
        import priorkit.adapters  # noqa: F401  (its import registers the tuners)
    except Exception as e:  # never break the user's `import peft`
        warnings.warn(f"priorkit could not register its PEFT tuners: {e}", stacklevel=2)


class _AfterPeftImport(importlib.abc.MetaPathFinder):
    """Runs :func:`_register_adapters_with_peft` right after ``peft`` is imported, so ``import priorkit`` stays
    light (PEFT pulls in transformers) and a process that imported priorkit still loads priorkit adapters."""

    def find_spec(self, name, path, target=None):  # noqa: ANN001, ANN201 (importlib protocol)
        if name != "peft":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
            run = spec.loader.exec_module

            def exec_module(module):  # noqa: ANN001, ANN202
                run(module)
                _register_adapters_with_peft()

            spec.loader.exec_module = exec_module
        return spec


if "peft" in sys.modules:
    _register_adapters_with_peft()
elif not any(isinstance(f, _AfterPeftImport) for f in sys.meta_path):
    sys.meta_path.insert(0, _AfterPeftImport())
