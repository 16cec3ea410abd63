"""Megatron flags of the training recipes (LR schedule shapes, batch-size schedules) that map one to one onto a
config field; config/cli.py merges them into its flag table. Kept here so that table stays one screenful."""

from __future__ import annotations

# flag -> (arity, "section.field"); arity as in cli.MEGATRON_FLAGS.
FIELD_FLAGS = {
    "lr-warmup-init": (1, "optim.lr_warmup_init"),  # Megatron-LM: warmup starts at this LR
    "lr-wsd-decay-style": (1, "optim.lr_wsd_decay_style"),  # --lr-decay-style WSD: the annealing's shape
    "lr-wsd-decay-iters": (1, "optim.lr_wsd_decay_iters"),
    "lr-wsd-decay-samples": (1, "optim.lr_wsd_decay_samples"),
    "rampup-batch-size": ("+", "training.rampup_batch_size"),  # START INCREMENT SAMPLES
    "step-batch-size-schedule": (1, "training.step_batch_size_schedule"),  # "TOKENS:BS ..." (current Megatron)
    "batch-size-schedule": (1, "training.batch_size_schedule"),  # ours: "BS:STEP,..."
    "z-loss": (1, "training.z_loss"),  # PaLM's auxiliary loss, 1e-4
}

# Lengths given in iterations or samples (cli._UNIT_GROUPS): one unit per length on a command line.
UNIT_GROUPS = (("WSD annealing length", ("optim.lr_wsd_decay_iters",), ("optim.lr_wsd_decay_samples",)),)

# Flags that also take `auto` (the democratization study's rules, training/formulas.py): flag -> the switch field.
AUTO_FLAGS = {"lr": "optim.lr_auto", "lr-warmup-iters": "optim.lr_warmup_auto",
              "weight-decay": "optim.weight_decay_auto"}
