"""SplitOptimizer: several optimizers over disjoint parameters, stepped and saved as one.

For an optimizer brought from outside that takes the hidden matrices only (optim/build.py,
`takes: matrix`), with AdamW on the rest. The harness then still sees one optimizer object: the
lr schedule scales every group (param_groups are the parts' own group dicts), and the state
dict is torch's usual format over the parts' groups in order, so distributed checkpointing
(keyed by parameter name) and resharding work as for any optimizer.
"""

from collections import ChainMap

import torch
from torch.optim import Optimizer

from .matrix import closure_loss


class SplitOptimizer(Optimizer):
    def __init__(self, parts: list[Optimizer]):
        self.parts = list(parts)
        super().__init__([group for part in self.parts for group in part.param_groups], {})
        self.state = ChainMap(*(part.state for part in self.parts))  # one view of the parts' own state

    def add_param_group(self, param_group: dict) -> None:
        if any(param_group is group for part in self.parts for group in part.param_groups):
            super().add_param_group(param_group)  # one of the parts' groups: shared, not copied
            return
        raise TypeError("SplitOptimizer takes its groups from its parts; add a group to one of them")

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure_loss(closure)
        for part in self.parts:
            part.step()
        return loss

    def state_dict(self) -> dict:
        """The parts' state dicts as one: parameters numbered through all the groups in order."""
        state, groups, offset = {}, [], 0
        for part in self.parts:
            own = part.state_dict()
            state.update({index + offset: value for index, value in own["state"].items()})
            groups += [
                {**group, "params": [index + offset for index in group["params"]]} for group in own["param_groups"]
            ]
            offset += sum(len(group["params"]) for group in part.param_groups)
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        """Each part gets its own groups, in order, and the state of their parameters (keyed by
        number, or by name as distributed checkpointing hands them over: torch matches by position)."""
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups):
            raise ValueError(f"the state dict has {len(groups)} param groups, this optimizer {len(self.param_groups)}")
        first = 0
        for part in self.parts:
            own_groups = groups[first : first + len(part.param_groups)]
            keys = {key for group in own_groups for key in group["params"]}
            part.load_state_dict(
                {
                    "state": {key: value for key, value in state_dict["state"].items() if key in keys},
                    "param_groups": own_groups,
                }
            )
            first += len(part.param_groups)
        self.state = ChainMap(*(part.state for part in self.parts))  # load_state_dict gave the parts new dicts
