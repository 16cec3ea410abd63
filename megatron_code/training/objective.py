"""Training objectives as seen by the trainer: each one owns how its samples are transformed and batched, which
tensors its loss reads (its labels) and the loss itself.

causal: next-token loss. fim: samples transformed by FIM (data/objectives/fim.py), next-token loss with <fim_pad>
targets masked. mim: every sample read twice in one batch (l2r and reversed r2l, data/objectives/mim.py), loss
= fwd CE + bwd CE + beta x agreement (training/losses.py). Validation is always left-to-right next-token loss
(for MIM the forward direction only, its sentinel-only first position masked), so objectives compare fairly.

How the loss is computed (fused head + loss, vocabulary-parallel or plain cross-entropy on logits) is not the
objective's business: `LossPath` decides it once per run, and the flat step and the pipeline both consult it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..config.base import ConfigError
from ..config.job import JobConfig
from ..data.batch import make_batch
from ..data.objectives.dataset import FIMDataset
from ..data.objectives.fim import FIMConfig, fim_ids
from ..data.objectives.mim import mim_batch, mim_forward_batch
from .losses import causal_lm_loss, mim_loss, split_directions, z_loss_term

NEXT_TOKEN_LABELS = ("labels", "loss_mask")


class CausalObjective:
    """Next-token prediction on packed samples (Megatron's GPT batches)."""

    kind = "causal"

    def __init__(self, job: JobConfig, tokenizer):
        self.job = job
        self.tokenizer = tokenizer
        self.eod = tokenizer.eod if tokenizer is not None else -1
        # extra loss terms logged per step (z-loss: PaLM's log(Z)^2 term, --z-loss)
        self.part_names: tuple[str, ...] = ("z_loss",) if job.training.z_loss else ()

    def wrap_train(self, dataset):
        return dataset

    def collate(self, items: list[dict], train: bool) -> dict:
        tokens, masks = _stack(items)
        d = self.job.data
        batch = make_batch(tokens, self.eod, d.eod_mask_loss, d.reset_position_ids, d.reset_attention_mask)
        if masks is not None:
            batch["loss_mask"] = batch["loss_mask"] * masks[:, 1:]  # per-token mask -> mask over targets
        return batch

    def next_token_loss(self, train: bool) -> bool:
        """True when `loss` is the masked-mean next-token cross-entropy of `labels` over `loss_mask`, so the
        trainer may compute it with the fused head + loss kernel from the final hidden states instead."""
        return True

    def label_keys(self, train: bool) -> tuple[str, ...]:
        """The batch entries the loss reads (tensors only): what the pipeline carries to its last stage."""
        return NEXT_TOKEN_LABELS

    def loss(self, logits: torch.Tensor, batch: dict, tp_group, train: bool, token_scale=None):
        """(scalar loss, {name: float} parts for logging) from logits (B, S, V), or this rank's vocabulary shard
        (B, S, V/tp) with `tp_group`. `token_scale` (training with --calculate-per-token-loss): the masked sums
        times it instead of the masked means (training/losses.per_token_scale)."""
        loss = causal_lm_loss(logits, batch["labels"], batch["loss_mask"], tp_group, token_scale)
        z = self.job.training.z_loss
        if train and z:  # training only: validation stays the plain next-token loss, comparable across runs
            term = z_loss_term(logits, batch["loss_mask"], z, tp_group, token_scale)
            return loss + term, {"z_loss": float(term)}
        return loss, {}


class FIMObjective(CausalObjective):
    """Fill-in-the-middle applied per sample at read time (Bavarian et al., 2022), then next-token loss."""

    kind = "fim"

    def __init__(self, job: JobConfig, tokenizer):
        super().__init__(job, tokenizer)
        o = job.objective
        if o.fim_mode != "sample":
            raise ConfigError("objective.fim_mode 'document' applies FIM before packing, at tokenization: run "
                              "tools/preprocess_data.py --fim-rate R [--fim-spm-rate S] and train on its output "
                              "without --fim-rate")
        self.fim_cfg = FIMConfig(rate=o.fim_rate, spm_rate=o.fim_spm_rate, fragment_rate=o.fim_fragment_rate,
                                 split_token=o.fim_split_token, mode="sample")
        self.pad = fim_ids(tokenizer, o.fim_split_token).pad

    def wrap_train(self, dataset):
        if dataset is None:
            return None
        return FIMDataset(dataset, self.fim_cfg, self.tokenizer, self.job.training.seed)


class MIMObjective(CausalObjective):
    """Meet-in-the-Middle (Nguyen et al., 2023): training batches hold both directions; validation is forward."""

    kind = "mim"
    PARTS = ("fwd_ce", "bwd_ce", "agreement")  # training/losses.py mim_loss parts
    TRAIN_LABELS = ("labels", "loss_mask", "agree_mask", "align_index")

    def __init__(self, job: JobConfig, tokenizer):
        super().__init__(job, tokenizer)
        special = tokenizer.special_tokens
        missing = [s for s in ("<l2r>", "<r2l>") if s not in special]
        if missing:
            raise ConfigError(f"MIM needs the {', '.join(missing)} sentinel(s) in the tokenizer: train it with "
                              f"tools/train_tokenizer.py (registers them) and re-tokenize the data")
        self.l2r, self.r2l = special["<l2r>"], special["<r2l>"]
        self.pad = tokenizer.pad
        self.part_names = self.PARTS + (("z_loss",) if job.training.z_loss else ())

    def collate(self, items: list[dict], train: bool) -> dict:
        tokens, masks = _stack(items)
        if train:
            return mim_batch(tokens, masks, self.l2r, self.r2l, self.pad, self.eod)
        batch = mim_forward_batch(tokens, masks, self.l2r, self.pad)
        batch["loss_mask"][:, 0] = 0.0  # t_0 from the sentinel alone has no causal counterpart
        return batch

    def next_token_loss(self, train: bool) -> bool:
        return not train

    def label_keys(self, train: bool) -> tuple[str, ...]:
        return self.TRAIN_LABELS if train else NEXT_TOKEN_LABELS

    def loss(self, logits: torch.Tensor, batch: dict, tp_group, train: bool, token_scale=None):
        # token_scale: never set for MIM training (config refuses --calculate-per-token-loss with MIM)
        if not train:
            return super().loss(logits, batch, tp_group, train)
        if "batch_size" not in batch:  # rebuilt from the pipeline's label tuple: B is the forward rows' count
            batch = {**batch, "batch_size": int(batch["agree_mask"].shape[0])}
        o = self.job.objective
        fwd, bwd = split_directions(logits, batch)
        total, parts = mim_loss(fwd, bwd, batch, o.mim_beta, o.mim_divergence, o.mim_stop_grad, tp_group)
        z = self.job.training.z_loss
        if z:  # PaLM's z-loss on each direction, averaged like that direction's cross-entropy (fwd_ce + bwd_ce)
            B, mask = batch["batch_size"], batch["loss_mask"]
            term = z_loss_term(fwd, mask[:B], z, tp_group) + z_loss_term(bwd, mask[B:], z, tp_group)
            total, parts = total + term, {**parts, "z_loss": term.detach()}
        return total, {k: float(v) for k, v in parts.items()}


OBJECTIVES = {cls.kind: cls for cls in (CausalObjective, FIMObjective, MIMObjective)}


def build_objective(job: JobConfig, tokenizer) -> CausalObjective:
    """The objective named by `job.objective.objective` (FIM and MIM need a tokenizer with their sentinels)."""
    kind = job.objective.objective
    if kind in ("fim", "mim") and tokenizer is None:
        raise ConfigError(f"the {kind} objective needs a tokenizer with its sentinels "
                          f"(--tokenizer-type/--tokenizer-model)")
    return OBJECTIVES[kind](job, tokenizer)


def _stack(items: list[dict]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Samples -> tokens (B, S+1) int64 and the per-token loss masks (B, S+1) float32 if the samples carry them."""
    tokens = torch.from_numpy(np.stack([np.asarray(it["tokens"], dtype=np.int64) for it in items]))
    masks = None
    if "loss_mask" in items[0]:
        masks = torch.from_numpy(np.stack([np.asarray(it["loss_mask"], dtype=np.float32) for it in items]))
    return tokens, masks


# ----------------------------------------------------------------------------- which loss code runs
FUSED, VOCAB_PARALLEL, UNFUSED = "fused", "vocab_parallel", "unfused"


@dataclass(frozen=True)
class LossPath:
    """How this run computes its loss, decided once (`choose_loss_path`) and consulted by the flat step and by
    the pipeline's last stage alike. `train` / `eval` are one of:

    fused           the fused LM head + cross-entropy kernel (kernels/linear_cross_entropy) on the final hidden
                    states; on a vocabulary-sharded (TP) head it reduces over the TP group itself;
    vocab_parallel  logits (B, S, V/tp) from the column-parallel head, the objective's loss reducing over TP;
    unfused         whole logits (B, S, V), the objective's loss."""

    train: str
    eval: str

    def kind(self, train: bool) -> str:
        return self.train if train else self.eval

    @property
    def fused(self) -> bool:
        """The next-token loss runs fused (what a run's log and the tests report as 'the fused loss')."""
        return FUSED in (self.train, self.eval)

    @property
    def head_in_loss(self) -> bool:
        """The head runs inside the loss (so a pipeline's head layer passes hidden states through)."""
        return self.fused


def choose_loss_path(objective: CausalObjective, tp: int, pp: int, precision: str, fused_requested: bool,
                     head_grads_survive: bool = True) -> LossPath:
    """The loss path from (objective, TP, PP, precision, optimizer).

    The fused kernel serves next-token losses only (not MIM training, which compares two directions' full
    distributions) and is used where it applies (`TrainingConfig.fused_lm_loss`). With TP and fp16 it would take
    its whole-vocabulary reference (the fused gradient formed before loss scaling underflows in fp16), so TP + fp16
    keeps the vocabulary-parallel loss on logits. With PP the head then runs inside the pipeline's loss function,
    whose parameters' gradients some DeepSpeed optimizers drop (`head_grads_survive` False: see
    parallel/pipeline.loss_may_produce_gradients); the fused kernel is off there."""
    fused_ok = fused_requested and (tp == 1 or precision != "fp16") and (pp == 1 or head_grads_survive)
    on_logits = VOCAB_PARALLEL if tp > 1 else UNFUSED

    def pick(train: bool) -> str:
        return FUSED if fused_ok and objective.next_token_loss(train) else on_logits

    return LossPath(train=pick(True), eval=pick(False))


class Collate:
    """Picklable collate function for DataLoader workers."""

    def __init__(self, objective: CausalObjective, train: bool):
        self.objective, self.train = objective, train

    def __call__(self, items: list[dict]) -> dict:
        return self.objective.collate(items, self.train)
