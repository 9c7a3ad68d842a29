"""The 13-layer CNN, batched augmentation and training primitives."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from alctl.augment import flip, normalize, translate
from alctl.models import build_model
from alctl import config as mf
from alctl.engine import settings
from alctl.train import Semi, Targets, TrainSpec, cosine_lr, evaluate, fit, learning_rate, predict, total_epochs


def _spec(**kw: object) -> TrainSpec:
    """The manifest's train defaults with `kw` changed."""
    return settings.train_spec(mf.TrainConfig(**kw))


def _semi(refresh: object, **kw: object) -> Semi:
    """The manifest's semi defaults with `kw` changed."""
    return dataclasses.replace(settings.semi_spec(mf.parse({}), refresh), **kw)


def test_paper_width_has_13_layers_and_128_features() -> None:
    m = build_model(3, 10, width=1.0)
    convs = [mod for mod in m.modules() if isinstance(mod, torch.nn.Conv2d)]
    assert len(convs) == 9 and [c.out_channels for c in convs] == [128] * 3 + [256] * 3 + [512, 256, 128]
    assert convs[6].padding == (0, 0) and convs[6].kernel_size == (3, 3)
    assert any(isinstance(mod, torch.nn.BatchNorm2d) for mod in m.modules())
    logits, feats = m.eval()(torch.zeros(2, 3, 32, 32))
    assert logits.shape == (2, 10) and feats.shape == (2, 128)
    assert hasattr(m.classifier, "parametrizations")  # weight normalisation


def test_any_input_size_and_channels() -> None:
    for c, s in ((1, 8), (1, 28), (3, 32), (3, 17)):
        logits, feats = build_model(c, 4, width=0.125).eval()(torch.zeros(3, c, s, s))
        assert logits.shape == (3, 4) and feats.shape == (3, 16)


def test_translate_is_a_shift_with_reflection() -> None:
    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).view(2, 1, 6, 6)
    out = translate(x, 2, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    for i in range(2):  # each output is a 6x6 window of the reflect-padded image
        padded = torch.nn.functional.pad(x[i : i + 1], (2, 2, 2, 2), mode="reflect")[0, 0]
        windows = [padded[r : r + 6, c : c + 6] for r in range(5) for c in range(5)]
        assert any(torch.equal(out[i, 0], w) for w in windows)
    assert torch.equal(translate(x, 0, torch.Generator()), x)


def test_flip_and_normalize() -> None:
    x = torch.rand(64, 1, 4, 4)
    out = flip(x, torch.Generator().manual_seed(1))
    flipped = (out == x.flip(-1)).flatten(1).all(1)
    same = (out == x).flatten(1).all(1)
    assert bool((flipped | same).all()) and 10 < int(flipped.sum()) < 54
    imgs = torch.full((1, 2, 2, 2), 255, dtype=torch.uint8)
    assert torch.allclose(normalize(imgs, (0.5, 0.0), (0.5, 1.0))[0, :, 0, 0], torch.tensor([1.0, 1.0]))


def test_cosine_rampdown() -> None:
    spec = _spec(lr=0.2, rampdown_epochs=210)
    assert cosine_lr(0, spec) == 0.2 and abs(cosine_lr(105, spec) - 0.1) < 1e-12 and cosine_lr(210, spec) == 0.0


def test_fit_learns_a_separable_task() -> None:
    torch.manual_seed(0)
    n = 200
    labels = torch.arange(n) % 2
    images = torch.zeros(n, 1, 8, 8, dtype=torch.uint8)
    images[labels == 1, :, :, :4] = 255  # left half bright = class 1
    images[labels == 0, :, :, 4:] = 255
    model = build_model(1, 2, width=0.125, dropout=0.0)
    targets = Targets(labeled_pos=np.arange(0, n, 5), labeled_y=labels.numpy()[::5])
    spec = _spec(epochs=4, batch_size=20, lr=0.05, rampdown_epochs=5, translate=0, min_steps=10)
    fit(model, images, targets, spec, (0.5,), (0.5,), torch.Generator().manual_seed(0))
    acc, loss = evaluate(model, images, labels, (0.5,), (0.5,))
    assert acc > 0.95 and loss < 0.5
    probs, feats = predict(model, images, (0.5,), (0.5,), batch_size=64)
    assert probs.shape == (n, 2) and torch.allclose(feats.norm(dim=1), torch.ones(n), atol=1e-5)


def _two_blocks(n: int = 120) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images [n, 1, 8, 8] whose class (0/1) is the bright half, and the labels [n]."""
    labels = torch.arange(n) % 2
    images = torch.zeros(n, 1, 8, 8, dtype=torch.uint8)
    images[labels == 1, :, :, :4] = 200
    images[labels == 0, :, :, 4:] = 200
    return images, labels


def test_phase2_learning_rate_restarts_after_the_plain_schedule() -> None:
    spec = _spec(epochs=10, lr=0.1, rampdown_epochs=12)
    semi = _semi(refresh=lambda e: Targets(np.zeros(0, np.int64), np.zeros(0, np.int64)), phase2_epochs=4, phase2_lr=0.04)
    assert total_epochs(spec, semi) == 14 and total_epochs(spec, None) == 10
    assert learning_rate(9.5, spec, semi) == cosine_lr(9.5, spec)
    assert learning_rate(10, spec, semi) == 0.04 and abs(learning_rate(12, spec, semi) - 0.02) < 1e-12
    assert abs(learning_rate(14, spec, semi)) < 1e-12


def test_phase1_of_two_phase_training_is_the_plain_model() -> None:
    """With phase2_epochs, the first spec.epochs train exactly the plain model (same batches, same steps); the
    pseudo-labels enter after it (the refresh is first called at epoch spec.epochs)."""
    images, labels = _two_blocks()
    labeled = np.arange(0, 120, 12)
    spec = _spec(epochs=3, batch_size=10, lr=0.05, rampdown_epochs=4, translate=1, min_steps=4)

    def run(semi: Semi | None, epochs_seen: list[int]) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        model = build_model(1, 2, width=0.125)
        snap: dict[str, torch.Tensor] = {}

        def on_epoch(state) -> None:  # the weights right after epoch spec.epochs - 1
            epochs_seen.append(state.epoch)
            if state.epoch == spec.epochs:
                snap.update({k: v.clone() for k, v in model.state_dict().items()})

        torch.manual_seed(1)
        fit(model, images, Targets(labeled, labels.numpy()[labeled]), spec, (0.5,), (0.5,),
            torch.Generator().manual_seed(0), semi=semi, on_epoch=on_epoch)
        return snap

    refreshed: list[int] = []
    unl = np.setdiff1d(np.arange(120), labeled)

    def refresh(epoch: int) -> Targets:
        refreshed.append(epoch)
        return Targets(labeled, labels.numpy()[labeled], pseudo_pos=unl, pseudo_y=labels.numpy()[unl],
                       pseudo_w=np.full(len(unl), 0.5, np.float32))

    plain_epochs: list[int] = []
    two_epochs: list[int] = []
    plain = run(None, plain_epochs)
    two = run(_semi(refresh=refresh, every=1, warmup=spec.epochs, batch_size=20, labeled_per_batch=5,
                   phase2_epochs=2), two_epochs)
    assert plain_epochs == [1, 2, 3] and two_epochs == [1, 2, 3, 4, 5]
    assert refreshed == [3, 4]
    assert all(torch.equal(plain[k], two[k]) for k in plain)


def test_l2_features_make_a_cosine_classifier() -> None:
    torch.manual_seed(0)
    plain = build_model(1, 3, width=0.125).eval()
    cosine = build_model(1, 3, width=0.125, l2_features=True).eval()
    cosine.load_state_dict(plain.state_dict())
    x = torch.randn(5, 1, 16, 16)
    with torch.no_grad():
        logits, f = cosine(x)
        plain_logits, plain_f = plain(x)
        torch.testing.assert_close(f, plain_f)  # the returned features are the raw pooled ones either way
        torch.testing.assert_close(plain_logits, plain.classifier(plain_f))
        torch.testing.assert_close(logits, cosine.classifier(torch.nn.functional.normalize(f, dim=1)))
        scaled, _ = cosine(x)  # logits do not depend on the features' norm: scaling the last block's output
        cosine.block3[-1][1].weight.mul_(7.0)  # (batch-norm scale, LeakyReLU is positively homogeneous)
        cosine.block3[-1][1].bias.mul_(7.0)
        again, f7 = cosine(x)
    torch.testing.assert_close(f7, 7.0 * f, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(again, scaled, rtol=1e-4, atol=1e-5)
