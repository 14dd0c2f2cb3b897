"""How units die: per-unit traces (diagnostics.trace_every) aligned on the step each unit died.

    python scripts/death_mechanism.py runs/long_bytes/aurora-x16-seed0 runs/long_bytes/muon-x16-seed0 \\
        --out docs/neuron_death/mechanism

A unit of an MLP layer is exactly dead at a traced step when its largest pre-activation on the
probe is ≤ 0 (ReLU²: zero output on every probe token). It *died* at trace s when it was alive
at the first trace and dead at s and at every trace after. For the units that died, this aligns
their traces on s and reports, per run:
- how often the unit still got any gradient, and its momentum and update row norms over its
  layer's median (update: the matrix's mean) at that trace, before and after death: does the
  optimizer keep moving a unit its gradient has left (stale momentum)?
- the push: how far each step moved the unit's mean pre-activation (ΔWᵢ·x̄) and its largest
  one (ΔWᵢ·x*, what decides exact death), each split into the update's part and weight decay's
  part, before and after death: which way does it point?
- what moved the unit's largest pre-activation below zero in the traces before it died, and in
  the interval in which it crossed zero: its own weights, or the drift of its input (everything
  before it in the network changing)?
- how many units died, when, how many dead units came back, how often units crossed from alive
  to dead at all (a unit can die, revive on its input's drift and die again), and, at mid-run,
  how close the live units' largest pre-activations sit to zero and how fast they move (the
  median change over 100 steps, over the median): a boundary is crossed by units near it that
  move fast.
It writes mechanism.md (the numbers behind each candidate explanation; docs/neuron_death.md draws
the verdicts from them across runs) and mechanism.png (the aligned medians, a line per run).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from eval.death_mechanism import mechanism_report
from train.cli import exit_code


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run directories with unit_trace.pt")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    text, figure = mechanism_report(args.runs, args.out)
    print(text)
    print(f"outputs:\n  {args.out / 'mechanism.md'}\n  {figure or '(no figure: no unit died)'}")
    return 0


if __name__ == "__main__":
    sys.exit(exit_code(lambda: main(sys.argv[1:])))
