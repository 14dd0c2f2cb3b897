"""import_object: the object a config names by import path, or one error naming what to fix.

Both kinds of plug-in resolve their paths here: an optimizer class (optim._target_, optim/build.py)
and an observer class (observers.NAME, train/observers.py); each checks the class it gets. It lives
in optim/ because optim imports nothing of train/ and train may import optim.
"""

import importlib
from typing import Any

# A package that an optional extra of pyproject.toml installs -> that extra: the advice when it is missing.
EXTRA_OF_PACKAGE = {"pytorch_optimizer": "optimizers"}


def import_object(path: Any, setting: str, example: str) -> Any:
    """The attribute that import path `path` ("package.module.Name") names, or ValueError in one line.

    setting: the config key that holds `path`, as the error names it (optim._target_, observers.NAME).
    example: an import path of the right kind, quoted when `path` is not a dotted path of identifiers.
    Every error starts with `setting`; one that cannot import the module gives the import's own
    reason (the module missing) and the fix: the optional extra that provides that module
    (EXTRA_OF_PACKAGE), else its folder on PYTHONPATH.
    """
    parts = path.split(".") if isinstance(path, str) else []
    if len(parts) < 2 or not all(part.isidentifier() for part in parts):
        raise ValueError(f"{setting} must be an import path such as {example}, got {path!r}")
    module_name, attribute = ".".join(parts[:-1]), parts[-1]
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        extra = EXTRA_OF_PACKAGE.get(err.name)
        advice = f"pip install -e '.[{extra}]'" if extra else "put its folder on PYTHONPATH or pip install it"
        raise ValueError(f"{setting}: cannot import {path!r} ({type(err).__name__}: {err}); {advice}") from None
    if not hasattr(module, attribute):
        reason = f"AttributeError: module {module_name} has no {attribute!r}"
        raise ValueError(f"{setting}: cannot import {path!r} ({reason})")
    return getattr(module, attribute)
