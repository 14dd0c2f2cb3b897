"""lm-eval's own command line, with the "aurora-bench" model registered first.

lm-eval finds models only in its registry, which a plain `lm_eval` process never
fills with ours, so this wrapper imports eval.adapter and hands over to lm-eval:

    python -m eval.lm_eval_cli --model aurora-bench --model_args pretrained=runs/x --batch_size auto --tasks hellaswag
    torchrun --nproc_per_node 8 -m eval.lm_eval_cli --model aurora-bench ...   (documents split over ranks)

Every lm-eval option works as documented for `lm_eval`. The checkpoint argument is `pretrained=`
(lm-eval's name, from which --output_path names its result folder); `checkpoint=` is accepted and
passed on as `pretrained=`, so results land in a folder named after the run either way. See docs/eval.md.
"""

import re
import sys

from lm_eval.__main__ import cli_evaluate

import eval.adapter  # noqa: F401  registers "aurora-bench"


def with_pretrained(argv: list[str]) -> list[str]:
    """argv with `checkpoint=` in --model_args spelt `pretrained=`."""
    out, rename = [], False
    for arg in argv:
        if rename:
            arg = re.sub(r"(^|,)checkpoint=", r"\1pretrained=", arg)
        elif arg.startswith("--model_args="):
            arg = "--model_args=" + re.sub(r"(^|,)checkpoint=", r"\1pretrained=", arg.removeprefix("--model_args="))
        rename = arg == "--model_args"
        out.append(arg)
    return out


if __name__ == "__main__":
    sys.argv = [sys.argv[0], *with_pretrained(sys.argv[1:])]
    cli_evaluate()
