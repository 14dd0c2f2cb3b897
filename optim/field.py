"""The field's optimizers from pytorch-optimizer (the `optimizers` extra), as plug-ins that keep the
conformance promises (python -m optim.check).

pytorch-optimizer's constructors end in **kwargs and keep any keyword they do not know as a group
option, so a misspelt option would train silently with its default. Each class here is the
library's, with a constructor that names the library's keywords and no others: optim/build.py then
refuses a foreign option in one line. conf/optim/<name>.yaml names them by `_target_`;
docs/optimizers.md "The field's optimizers" says why this library and how each is configured.
"""

import inspect

import pytorch_optimizer


def strict(library_class: type) -> type:
    """A subclass of `library_class` whose constructor signature is the library's without **kwargs."""
    signature = inspect.signature(library_class.__init__)
    named = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]

    def __init__(self, *args, **options):
        library_class.__init__(self, *args, **options)

    __init__.__signature__ = signature.replace(parameters=named)
    return type(library_class.__name__, (library_class,), {"__init__": __init__, "__module__": __name__})


SOAP = strict(pytorch_optimizer.SOAP)
Kron = strict(pytorch_optimizer.Kron)
Lion = strict(pytorch_optimizer.Lion)
ScheduleFreeAdamW = strict(pytorch_optimizer.ScheduleFreeAdamW)
AdEMAMix = strict(pytorch_optimizer.AdEMAMix)
MARS = strict(pytorch_optimizer.MARS)
