"""Fit / evaluate / extract features, pure (no file I/O): images uint8 [N, C, H, W], labels int64 [N], probs [n, C], features [n, D].

How the arithmetic runs is a `Compute` (autocast dtype, channels-last memory format, torch.compile); whatever it
says, probabilities and features come back float32 and the weights stay float32.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from alctl.augment import ViewSpec, augment, normalize, translate, views

PRECISIONS = ("fp32", "bf16", "fp16")  # resolved precisions (the manifest's auto picks one of them)
_DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
COMPILE_BACKEND = "inductor"  # torch.compile's backend (tests use a lighter one)
_COMPILED_ATTR = "_alctl_compiled"  # where Compute.forward keeps a model's compiled wrapper


@dataclass(frozen=True)
class Compute:
    """How forward passes run: the autocast precision (fp32 = no autocast), channels-last memory format of the
    network and its input batches, and torch.compile. The default is plain float32 NCHW eager PyTorch."""

    precision: str = "fp32"  # one of PRECISIONS
    channels_last: bool = False
    compile: bool = False

    def __post_init__(self) -> None:
        """Reject an unknown precision (ValueError)."""
        if self.precision not in PRECISIONS:
            raise ValueError(f"Compute: precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")

    @property
    def dtype(self) -> torch.dtype | None:
        """The autocast dtype, None for fp32 (no autocast)."""
        return _DTYPES[self.precision]

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager[object]:
        """A context running the forward pass (and loss) on `device` in this precision; a no-op for fp32."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.dtype)

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """The model in this memory format (in place; parameters keep their identity): channels-last when on."""
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        return model

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        """A float batch [n, C, H, W] in this memory format (the same tensor when channels-last is off)."""
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def forward(self, model: nn.Module) -> nn.Module:
        """What to call for a forward pass: the model, or (compile) its torch.compile'd wrapper, made once per
        model and kept in the model's own __dict__ (not a submodule: no state-dict key; freed with the model), which
        shares the model's parameters and modes."""
        if not self.compile:
            return model
        compiled = model.__dict__.get(_COMPILED_ATTR)
        if compiled is None:
            compiled = torch.compile(model, backend=COMPILE_BACKEND)
            model.__dict__[_COMPILED_ATTR] = compiled
        return compiled


FP32 = Compute()


@dataclass(frozen=True)
class TrainSpec:
    """Optimisation settings of one cycle, built from the manifest's train section (`engine.settings.train_spec`)."""

    epochs: int
    batch_size: int
    lr: float
    rampdown_epochs: int
    momentum: float
    nesterov: bool
    weight_decay: float
    translate: int  # pixels of random translation
    flip: bool
    min_steps: int
    eval_batch_size: int
    compute: Compute = FP32  # precision, memory format, compile (resolved for the device: `engine.settings.compute`)


@dataclass
class Targets:
    """Training targets: labeled positions with labels, plus optional weighted pseudo-labels on other positions."""

    labeled_pos: np.ndarray  # [n_l] int64 rows of the image tensor
    labeled_y: np.ndarray  # [n_l] int64
    pseudo_pos: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # [m] int64
    pseudo_y: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # [m] int64
    pseudo_w: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))  # [m] float32 certainty
    class_w: np.ndarray | None = None  # [C] float32 class weights in the loss, None = uniform


@dataclass
class FitState:
    """Where training stands: after an epoch (step 0), or mid-epoch when stopped early (for checkpoints/preemption)."""

    epoch: int  # epoch in progress; equals spec.epochs when training is finished
    model: nn.Module
    optimizer: torch.optim.Optimizer
    targets: Targets
    step: int = 0  # steps of `epoch` already done
    batches: list[torch.Tensor] | None = None  # the batch order of `epoch` while it is in progress (step > 0)
    stopped: bool = False  # should_stop() ended training before spec.epochs
    scaler: torch.amp.GradScaler | None = None  # fp16: the loss scaler (its state travels with checkpoints)
    learned: torch.Tensor | None = None  # FlexMatch: [m] int64 class each unlabeled target last passed tau with, or -1


@dataclass(frozen=True)
class Consistency:
    """FixMatch (Sohn et al. 2020): the prediction on a weakly augmented view of an unlabeled image (translation,
    flips) becomes the target of a strongly augmented view (`strong`, then the same translation) where its
    confidence reaches `threshold`; that term weighs `weight` (lambda_u) against the labeled cross-entropy."""

    threshold: float  # tau in (0, 1]
    weight: float  # lambda_u >= 0
    strong: ViewSpec
    flexible: bool = False  # FlexMatch's class-wise thresholds (`flexible_thresholds`), from 0 while nothing is learned


@dataclass(frozen=True)
class Semi:
    """How unlabeled images enter training: recomputed by `refresh(epoch)` and mixed into every batch, as weighted
    pseudo-labels (label propagation) or, with `consistency`, as FixMatch's unlabeled images."""

    refresh: Callable[[int], Targets]  # epoch -> targets with pseudo-labels (label propagation) or unlabeled images
    every: int  # epochs between refreshes
    warmup: int  # epochs on labels only before the first refresh
    batch_size: int  # images per mixed batch
    labeled_per_batch: int  # labeled images in each mixed batch
    unlabeled_per_epoch: int | None  # pseudo-labeled images per epoch; None = all
    phase2_epochs: int  # > 0: Iscen et al.'s two phases, these epochs with pseudo-labels after spec.epochs
    phase2_lr: float | None  # phase 2's initial learning rate (cosine ramp-down to 0); None = spec.lr
    consistency: Consistency | None = None  # FixMatch: targets.pseudo_pos are unlabeled images; pseudo_w > 0 marks
    # a prior label (pseudo_y) that replaces the weak view's prediction
    prior_epochs: int = 0  # FixMatch: the refresh at start + prior_epochs ends the prior (see `due`)

    def start(self, plain_epochs: int) -> int:
        """The first epoch with unlabeled images: `warmup`, or with phase 2 `plain_epochs` (spec.epochs)."""
        return plain_epochs if self.phase2_epochs else self.warmup

    def due(self, epoch: int, plain_epochs: int) -> bool:
        """True when pseudo-labels are recomputed at the start of `epoch`: from `start` on, every `every` epochs,
        and at start + prior_epochs (where FixMatch's prior ends)."""
        start = self.start(plain_epochs)
        return epoch >= start and ((epoch - start) % self.every == 0
                                   or (self.prior_epochs > 0 and epoch - start == self.prior_epochs))


def make_optimizer(model: nn.Module, spec: TrainSpec) -> torch.optim.SGD:
    """SGD with (Nesterov) momentum and weight decay."""
    return torch.optim.SGD(
        model.parameters(), lr=spec.lr, momentum=spec.momentum, nesterov=spec.nesterov and spec.momentum > 0,
        weight_decay=spec.weight_decay,
    )


def cosine_lr(epoch: float, spec: TrainSpec) -> float:
    """Learning rate at a fractional epoch: cosine ramp-down reaching 0 at rampdown_epochs."""
    t = min(epoch, spec.rampdown_epochs) / spec.rampdown_epochs
    return spec.lr * 0.5 * (math.cos(math.pi * t) + 1.0)


def total_epochs(spec: TrainSpec, semi: "Semi | None") -> int:
    """Epochs of one fit: spec.epochs, plus semi's phase-2 epochs when it has them."""
    return spec.epochs + (semi.phase2_epochs if semi is not None else 0)


def learning_rate(epoch: float, spec: TrainSpec, semi: "Semi | None") -> float:
    """Learning rate at a fractional epoch: `cosine_lr` up to spec.epochs; in semi's phase 2, a fresh cosine
    ramp-down from phase2_lr (or spec.lr) to 0 over its phase2_epochs."""
    if semi is None or not semi.phase2_epochs or epoch < spec.epochs:
        return cosine_lr(epoch, spec)
    lr = spec.lr if semi.phase2_lr is None else semi.phase2_lr
    return cosine_lr(epoch - spec.epochs, replace(spec, lr=lr, rampdown_epochs=semi.phase2_epochs))


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


def weighted_loss(
    logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor, class_w: torch.Tensor | None
) -> torch.Tensor:
    """Cross-entropy of logits [b, C] against targets [b], each term times its certainty weight [b] and its class
    weight; normalised by the batch's total class weight (as torch's weighted cross-entropy does), so that a rare
    class's large weight re-balances the batch without scaling the step. Uniform class weights: the plain mean of
    weight x cross-entropy (Iscen et al.)."""
    per_sample = F.cross_entropy(logits, targets, reduction="none") * weights
    if class_w is None:
        return per_sample.mean()
    cw = class_w[targets]
    return (per_sample * cw).sum() / cw.sum().clamp_min(1e-12)


def consistency_loss(logits_weak: torch.Tensor, logits_strong: torch.Tensor, threshold: float | torch.Tensor,
                     prior_y: torch.Tensor | None = None, prior_w: torch.Tensor | None = None) -> torch.Tensor:
    """FixMatch's unlabeled term: the mean over the batch [u] of cross-entropy(strong logits [u, C], argmax of the
    weak view's softmax) where that softmax's maximum is >= threshold (a number, or one per class [C] read at the
    argmax: FlexMatch), 0 elsewhere; no gradient through the weak view. Where a prior weight [u] is > 0 the
    target is the prior label [u] instead, with that weight. 0 for an empty batch."""
    if logits_weak.shape[0] == 0:
        return logits_strong.sum() * 0.0
    with torch.no_grad():
        confidence, guess = torch.softmax(logits_weak.detach().float(), dim=1).max(dim=1)
        bar = threshold[guess] if isinstance(threshold, torch.Tensor) else threshold
        mask = (confidence >= bar).float()
        if prior_y is not None and prior_w is not None:
            has = prior_w > 0
            guess = torch.where(has, prior_y, guess)
            mask = torch.where(has, prior_w.float(), mask)
    return (F.cross_entropy(logits_strong.float(), guess, reduction="none") * mask).mean()


def flexible_thresholds(learned: torch.Tensor, num_classes: int, threshold: float) -> torch.Tensor:
    """FlexMatch's class-wise thresholds [C] (Zhang et al. 2021, with its warm-up and convex mapping): with sigma_c
    the unlabeled images [m] whose last confident (>= threshold) prediction was class c (`learned`, -1 = none yet),
    beta_c = sigma_c / max(max_c sigma_c, images with none) and T_c = threshold x beta_c / (2 - beta_c): a class the
    model has not learned yet takes low-confidence targets, a learned one needs the full threshold."""
    sigma = torch.bincount(learned[learned >= 0], minlength=num_classes)[:num_classes].float()
    unused = (learned < 0).sum().float()
    beta = sigma / torch.maximum(sigma.max(), unused).clamp_min(1.0)
    return threshold * beta / (2.0 - beta)


def _step_loss(
    forward: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]], images: torch.Tensor, b: torch.Tensor,
    n_l: int, pos_t: torch.Tensor, ys_t: torch.Tensor, ws_t: torch.Tensor, class_w: torch.Tensor | None,
    spec: TrainSpec, mean: Sequence[float], std: Sequence[float], generator: torch.Generator, semi: Semi | None,
    learned: torch.Tensor | None = None,
) -> torch.Tensor:
    """The loss of one batch `b` (indices into the targets, labeled first: < n_l): weighted cross-entropy of the
    augmented images; with FixMatch, the labeled images' cross-entropy plus weight x `consistency_loss` of the
    unlabeled ones (>= n_l; their target weight > 0: a prior label), the labeled, weak and strong views in one forward pass (batch norm sees them all);
    with `learned` (FlexMatch, [unlabeled targets]) the thresholds are `flexible_thresholds`, and the images whose
    weak prediction passes the fixed threshold record their class there (in place)."""
    compute = spec.compute
    device = images.device
    if semi is None or semi.consistency is None or n_l == len(pos_t):  # no unlabeled image among the targets
        x = augment(normalize(images[pos_t[b]], mean, std), spec.translate, spec.flip, generator)
        with compute.autocast(device):
            logits, _ = forward(compute.prepare_input(x))
            return weighted_loss(logits.float(), ys_t[b], ws_t[b], class_w)
    c = semi.consistency
    lab, unl = b[b < n_l], b[b >= n_l]
    u_images = images[pos_t[unl]]
    x = torch.cat([
        augment(normalize(images[pos_t[lab]], mean, std), spec.translate, spec.flip, generator),
        augment(normalize(u_images, mean, std), spec.translate, spec.flip, generator),
        translate(views(u_images, mean, std, c.strong, generator), spec.translate, generator),
    ])
    with compute.autocast(device):
        logits, _ = forward(compute.prepare_input(x))
    logits = logits.float()
    n, u = len(lab), len(unl)
    loss = weighted_loss(logits[:n], ys_t[lab], ws_t[lab], class_w)
    weak = logits[n : n + u]
    bar: float | torch.Tensor = c.threshold
    if learned is not None:
        bar = flexible_thresholds(learned, logits.shape[1], c.threshold)
        with torch.no_grad():
            confidence, guess = torch.softmax(weak.detach(), dim=1).max(dim=1)
            sure = confidence >= c.threshold
            learned[(unl - n_l)[sure]] = guess[sure]
    return loss + c.weight * consistency_loss(weak, logits[n + u :], bar, ys_t[unl], ws_t[unl])


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


@torch.no_grad()
def predict(
    model: nn.Module, images: torch.Tensor, mean: Sequence[float], std: Sequence[float], batch_size: int = 512,
    compute: Compute = FP32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax probabilities [n, C] and L2-normalised features [n, D] of images [n, C, H, W] (float32 whatever
    compute's precision, on the images' device), eval mode."""
    model.eval()
    compute.prepare_model(model)
    forward = compute.forward(model)
    probs, feats = [], []
    for i in range(0, images.shape[0], batch_size):
        with compute.autocast(images.device):
            logits, f = forward(compute.prepare_input(normalize(images[i : i + batch_size], mean, std)))
        probs.append(torch.softmax(logits.float(), dim=1))
        feats.append(F.normalize(f.float(), dim=1))
    if not probs:
        c = getattr(model, "num_classes", 0)
        d = getattr(model, "feature_dim", 0)
        return torch.zeros(0, c, device=images.device), torch.zeros(0, d, device=images.device)
    return torch.cat(probs), torch.cat(feats)


# The modules MC dropout switches to train mode (everything else stays in eval mode).
_DROPOUT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)


@torch.no_grad()
def predict_mc(
    model: nn.Module, images: torch.Tensor, mean: Sequence[float], std: Sequence[float], passes: int,
    batch_size: int = 512, compute: Compute = FP32,
) -> torch.Tensor:
    """Softmax probabilities [passes, n, C] float32 (on the images' device) of `passes` stochastic forward passes of
    images [n, C, H, W] with dropout on and every other module in eval mode (batch norm uses its running
    statistics): MC dropout (Gal & Ghahramani 2016). Dropout draws from torch's global generator, batch by batch
    and pass by pass within a batch: the caller seeds it. Every module's train / eval mode is restored after. `compute`
    sets the precision of the passes (the probabilities are float32 whatever it says)."""
    if int(passes) < 1:
        raise ValueError(f"predict_mc: passes must be >= 1, got {passes}")
    compute.prepare_model(model)
    forward = compute.forward(model)
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        for m in model.modules():
            if isinstance(m, _DROPOUT):
                m.train()
        out: torch.Tensor | None = None
        for i in range(0, images.shape[0], batch_size):
            x = compute.prepare_input(normalize(images[i : i + batch_size], mean, std))
            for t in range(int(passes)):
                with compute.autocast(images.device):
                    logits = forward(x)[0]
                p = torch.softmax(logits.float(), dim=1)
                if out is None:
                    out = torch.empty(int(passes), images.shape[0], p.shape[1], device=images.device)
                out[t, i : i + p.shape[0]] = p
    finally:
        for m, mode in modes:
            m.training = mode
    if out is None:
        return torch.zeros(int(passes), 0, getattr(model, "num_classes", 0), device=images.device)
    return out


@torch.no_grad()
def evaluate(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int = 512,
    compute: Compute = FP32,
) -> tuple[float, float]:
    """Top-1 accuracy in [0, 1] and mean cross-entropy of the model on (images [n, C, H, W], labels [n]), its
    forward passes as `compute` says."""
    accuracy, loss, _ = evaluate_predictions(model, images, labels, mean, std, batch_size, compute)
    return accuracy, loss


def evaluate_predictions(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int = 512,
    compute: Compute = FP32,
) -> tuple[float, float, np.ndarray]:
    """`evaluate`'s accuracy and loss, and the predicted classes [n] int64 (numpy) they come from."""
    probs, _ = predict(model, images, mean, std, batch_size, compute)
    labels = labels.to(probs.device)
    predicted = probs.argmax(1)
    accuracy = float((predicted == labels).float().mean().item())
    loss = float(F.nll_loss(torch.log(probs.clamp_min(1e-12)), labels).item())
    return accuracy, loss, predicted.cpu().numpy().astype(np.int64)
