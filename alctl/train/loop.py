"""The training loop (`fit`) and its epoch batches: images uint8 `[N, C, H, W]`, index batches `[b]` int64."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from alctl.train.losses import _step_loss
from alctl.train.spec import FitState, Semi, Targets, TrainSpec, learning_rate, make_optimizer, total_epochs


def _plain_batches(n: int, spec: TrainSpec, generator: torch.Generator) -> list[torch.Tensor]:
    """Index batches over n labeled items for one epoch of max(ceil(n / batch), min_steps) shuffled batches."""
    bs = min(spec.batch_size, n)
    steps = max(math.ceil(max(n, 1) / bs), spec.min_steps, 1)
    order = torch.cat([torch.randperm(n, generator=generator) for _ in range(math.ceil(steps * bs / n))])
    return [order[i * bs : (i + 1) * bs] for i in range(steps)]


def _mixed_batches(
    n_l: int, n_p: int, batch_size: int, labeled_per_batch: int, unlabeled_per_epoch: int | None,
    generator: torch.Generator,
) -> list[torch.Tensor]:
    """One pass over (up to unlabeled_per_epoch of) the n_p pseudo-labeled items, each batch completed with
    labeled_per_batch labeled items cycled in shuffled order; indices >= n_l address the pseudo-labeled items."""
    per_pseudo = batch_size - labeled_per_batch
    p_order = torch.randperm(n_p, generator=generator)
    if unlabeled_per_epoch is not None:
        p_order = p_order[:unlabeled_per_epoch]
    steps = max(1, math.ceil(len(p_order) / per_pseudo))
    lb = labeled_per_batch
    l_order = torch.cat([torch.randperm(n_l, generator=generator) for _ in range(math.ceil(steps * lb / n_l))])
    return [
        torch.cat([l_order[i * lb : (i + 1) * lb], p_order[i * per_pseudo : (i + 1) * per_pseudo] + n_l])
        for i in range(steps)
    ]


def _epoch_batches(t: Targets, spec: TrainSpec, semi: Semi | None, generator: torch.Generator) -> list[torch.Tensor]:
    """The batches of one epoch over labeled items then pseudo-labeled ones (indices into their concatenation).

    Labels only: max(ceil(n_l / batch), min_steps) shuffled batches. Label propagation: semi's mixed batches, one
    pass over the pseudo-labeled items. Other pseudo-labels (CEAL): as many steps as with labels only, each batch
    of spec.batch_size labeled items plus as many pseudo-labeled ones, so that thousands of confident
    pseudo-labels complement the few true labels instead of drowning them.
    """
    n_l, n_p = len(t.labeled_pos), len(t.pseudo_pos)
    if n_p and semi is not None:
        return _mixed_batches(n_l, n_p, semi.batch_size, semi.labeled_per_batch, semi.unlabeled_per_epoch, generator)
    batches = _plain_batches(n_l, spec, generator)
    if not n_p:
        return batches
    bs = spec.batch_size
    need = len(batches) * bs
    p_order = torch.cat([torch.randperm(n_p, generator=generator) for _ in range(math.ceil(need / n_p))])
    return [torch.cat([b, p_order[i * bs : (i + 1) * bs] + n_l]) for i, b in enumerate(batches)]


def _flat_targets(t: Targets, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Positions [m], labels [m], sample weights [m] (labeled first, then pseudo) and class weights [C] on device."""
    pos = np.concatenate([t.labeled_pos, t.pseudo_pos]).astype(np.int64)
    ys = np.concatenate([t.labeled_y, t.pseudo_y]).astype(np.int64)
    ws = np.concatenate([np.ones(len(t.labeled_pos), np.float32), t.pseudo_w.astype(np.float32)])
    class_w = None if t.class_w is None else torch.as_tensor(t.class_w, dtype=torch.float32, device=device)
    pos_t, ys_t, ws_t = (torch.from_numpy(a).to(device) for a in (pos, ys, ws))
    return pos_t, ys_t, ws_t, class_w


def check_finite(model: nn.Module, nonfinite_loss: torch.Tensor | bool, epoch: int, epochs: int) -> None:
    """Raise FloatingPointError naming `epoch` (0-based, shown 1-based of `epochs`) when `nonfinite_loss` is set or
    a parameter or floating-point buffer of `model` (batch-norm statistics) holds NaN or an infinity (the training
    diverged: a learning rate far too high, say). One device synchronisation."""
    tensors = [*model.parameters(), *(b for b in model.buffers() if b.is_floating_point())]
    if not tensors:
        bad = bool(nonfinite_loss)
    else:
        device = tensors[0].device
        flags = [torch.as_tensor(nonfinite_loss, device=device).reshape(())]
        flags += [~torch.isfinite(t.detach()).all() for t in tensors]
        bad = bool(torch.stack(flags).any())
    if bad:
        what = "loss" if bool(nonfinite_loss) else "weights"
        raise FloatingPointError(f"training diverged at epoch {epoch + 1}/{epochs}: the {what} became NaN or infinite")


def fit(
    model: nn.Module,
    images: torch.Tensor,
    targets: Targets,
    spec: TrainSpec,
    mean: Sequence[float],
    std: Sequence[float],
    generator: torch.Generator,
    *,
    semi: Semi | None = None,
    resume: FitState | None = None,
    on_epoch: Callable[[FitState], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> FitState:
    """Train `model` on images[targets] (uint8 [N, C, H, W] on the training device) for `total_epochs`; return the state.

    Without `semi`, labeled and (CEAL) pseudo-labeled images are shuffled together in batches of spec.batch_size.
    With `semi`, pseudo-targets come from semi.refresh(epoch) when due and every batch mixes labeled and
    pseudo-labeled images; with semi.phase2_epochs, the first spec.epochs are exactly the training on labels
    alone, then phase 2 trains on labels and pseudo-labels with its own schedule. With semi.consistency (FixMatch)
    the refreshed targets' pseudo_pos are unlabeled images, trained on by `consistency_loss`. `resume` continues a state
    returned earlier (the caller restores the model, optimizer, generator and global RNG states that went with
    it); `should_stop()` is checked after every step and ends training early with state.stopped set, mid-epoch
    if need be, so that resuming replays the rest exactly. spec.compute sets the arithmetic (autocast, fp16's
    gradient scaler in state.scaler, channels-last model and batches, torch.compile); its default is plain fp32.
    A loss (fp32, bf16: fp16's scaler skips those steps itself) or weights that are NaN or infinite at the end of an
    epoch, or when stopping, raise FloatingPointError naming the epoch, before on_epoch sees the state.
    """
    device = images.device
    compute = spec.compute
    compute.prepare_model(model)
    if resume is not None:
        state = resume
        state.model, state.stopped = model, False
    else:
        state = FitState(epoch=0, model=model, optimizer=make_optimizer(model, spec), targets=targets)
    if compute.precision == "fp16" and state.scaler is None:
        state.scaler = torch.amp.GradScaler(device.type)
    optimizer, scaler, forward = state.optimizer, state.scaler, compute.forward(model)
    epochs = total_epochs(spec, semi)
    while state.epoch < epochs:
        epoch = state.epoch
        nonfinite = torch.zeros((), dtype=torch.bool, device=device)  # a step's loss was NaN / inf (no sync)
        if state.batches is None:  # a new epoch
            if semi is not None and semi.due(epoch, spec.epochs):
                state.targets = semi.refresh(epoch)
            state.batches = _epoch_batches(state.targets, spec, semi, generator)
            state.step = 0
        pos_t, ys_t, ws_t, class_w = _flat_targets(state.targets, device)
        n_u = len(state.targets.pseudo_pos)
        flexible = semi is not None and semi.consistency is not None and semi.consistency.flexible and n_u > 0
        if flexible and (state.learned is None or len(state.learned) != n_u):
            state.learned = torch.full((n_u,), -1, dtype=torch.int64, device=device)  # nothing learned yet
        elif flexible and state.learned is not None:
            state.learned = state.learned.to(device)
        batches = state.batches
        # the epoch's batch indices reach the device in one copy, not one per step
        ends = np.cumsum([0] + [len(b) for b in batches])
        flat = torch.cat(batches).to(device) if batches else torch.zeros(0, dtype=torch.int64, device=device)
        model.train()
        for step in range(state.step, len(batches)):
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(epoch + step / len(batches), spec, semi)
            b = flat[int(ends[step]) : int(ends[step + 1])]
            loss = _step_loss(forward, images, b, len(state.targets.labeled_pos), pos_t, ys_t, ws_t, class_w, spec,
                              mean, std, generator, semi, state.learned)
            optimizer.zero_grad(set_to_none=True)
            if scaler is None:
                nonfinite |= ~torch.isfinite(loss.detach())
                loss.backward()
                optimizer.step()
            else:  # fp16: scaled loss, steps with inf/NaN gradients skipped
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            state.step = step + 1
            if should_stop is not None and state.step < len(batches) and should_stop():
                check_finite(model, nonfinite, epoch, epochs)
                state.stopped = True
                return state
        check_finite(model, nonfinite, epoch, epochs)
        state.epoch, state.step, state.batches = epoch + 1, 0, None
        if on_epoch is not None:
            on_epoch(state)
        if should_stop is not None and state.epoch < epochs and should_stop():
            state.stopped = True
            return state
    return state
