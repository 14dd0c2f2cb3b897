"""The field's optimizers from pytorch-optimizer (the `optimizers` extra), as plug-ins that keep the
conformance promises (python -m optim.check).

pytorch-optimizer's constructors end in **kwargs and keep any keyword they do not know as a group
option, so a misspelt option would train silently with its default. Each class here is the
library's, with a constructor that names the library's keywords and no others: optim/build.py then
refuses a foreign option in one line. conf/optim/<name>.yaml names them by `_target_`;
docs/optimizers.md "The field's optimizers" says why this library and how each is configured.
"""

import inspect

import numpy as np
import pytorch_optimizer
import torch


def strict(library_class: type, supports_fsdp2: bool = True) -> type:
    """A subclass of `library_class` whose constructor signature is the library's without **kwargs;
    supports_fsdp2=False makes optim/build.py refuse sharded parameters (optim.check's FSDP2 row)."""
    signature = inspect.signature(library_class.__init__)
    named = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]

    def __init__(self, *args, **options):
        library_class.__init__(self, *args, **options)

    __init__.__signature__ = signature.replace(parameters=named)
    namespace = {"__init__": __init__, "__module__": __name__, "supports_fsdp2": supports_fsdp2}
    return type(library_class.__name__, (library_class,), namespace)


class Kron(strict(pytorch_optimizer.Kron, supports_fsdp2=False)):
    """PSGD-Kron whose random draws are a function of its state. The library's draws the probe vector
    of each preconditioner update from torch's global RNG and the balancing coin from numpy's, so a
    reloaded state_dict would not continue the same steps; here both come from RNGs seeded with the
    step count inside a fork, which leaves the run's own RNG streams as they were."""

    def step(self, closure=None):
        step = self.param_groups[0].get("step", 0)
        cuda = sorted({p.device.index or 0 for group in self.param_groups for p in group["params"] if p.is_cuda})
        numpy_state = np.random.get_state()
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(step)
            np.random.seed(step)
            try:
                return super().step(closure)
            finally:
                np.random.set_state(numpy_state)


# SOAP and MARS keep per-matrix state that FSDP2's shards cannot hold (an eigenbasis of the whole
# matrix; foreach ops without a DTensor rule): optim.check's FSDP2 row, so they refuse it.
SOAP = strict(pytorch_optimizer.SOAP, supports_fsdp2=False)
Lion = strict(pytorch_optimizer.Lion)
ScheduleFreeAdamW = strict(pytorch_optimizer.ScheduleFreeAdamW)
AdEMAMix = strict(pytorch_optimizer.AdEMAMix)
MARS = strict(pytorch_optimizer.MARS, supports_fsdp2=False)
