"""Run pretrain_code.py's main with a fault injected into chosen global batches (a test driver, not a user tool):

    python tests/e2e/_inject.py MODE FIRST_SAMPLE[,FIRST_SAMPLE...] -- ARGS...

MODE "nan": the training loss of those batches becomes NaN (so do the gradients); "spike:F": it is multiplied by F
(finite, a loss spike). A batch is named by its first global sample index (the trainer's consumed samples when it
starts the step), so a batch skipped after a rollback is never injected again (it is never trained on again)."""

import sys

import torch

from megatron_code import cli_main
from megatron_code.training import trainer as T

mode, firsts = sys.argv[1], {int(x) for x in sys.argv[2].split(",")}
argv = sys.argv[sys.argv.index("--") + 1:]
factor = float("nan") if mode == "nan" else float(mode.split(":")[1])
original = T.Trainer._loss


def _loss(self, batch, train=True):
    loss, parts = original(self, batch, train)
    if train and self.consumed in firsts:
        loss = loss * torch.tensor(factor, dtype=loss.dtype)
    return loss, parts


T.Trainer._loss = _loss
sys.exit(cli_main.main(argv))
