"""SimCLR pre-training (alctl.simclr) and its views (alctl.augment.views): the rule that sets the views from the
image, the views themselves, the loop's determinism, resume and divergence."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from alctl.augment import ViewSpec, _hue_rotation, normalize, view_spec, views
from alctl.data import load_dataset
from alctl.models import build_model
from alctl.pretrain import Probe, encoder_state
from alctl.simclr import SimclrSpec, SimclrState, simclr

MEAN, STD = [0.5], [0.25]
STILL = ViewSpec(min_area=1.0, max_aspect=1.0, max_rotation=0.0, brightness=0.0, contrast=0.0, saturation=0.0,
                 hue=0.0, jitter_p=0.0, grayscale_p=0.0, flip=False)


# ------------------------------------------------------------------ the rule and the views


@pytest.mark.parametrize(("size", "area"), [(8, 0.85), (28, 0.5), (32, 1 - 32 / 56), (64, 0.2), (224, 0.2)])
def test_the_smallest_crop_follows_the_image_size(size: int, area: float) -> None:
    assert view_spec(size, 1, False).min_area == pytest.approx(area)


def test_colour_jitter_and_grey_views_only_for_colour_images() -> None:
    grey, colour = view_spec(32, 1, False), view_spec(32, 3, True)
    assert (grey.saturation, grey.hue, grey.grayscale_p) == (0.0, 0.0, 0.0)
    assert (colour.saturation, colour.hue, colour.grayscale_p) == (0.4, 0.1, 0.2)
    assert grey.brightness == colour.brightness == 0.4 and colour.flip and not grey.flip


def test_a_view_without_randomness_is_the_normalised_image() -> None:
    images = torch.randint(0, 256, (5, 1, 12, 12), dtype=torch.uint8)
    out = views(images, MEAN, STD, STILL, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, normalize(images, MEAN, STD), atol=1e-5, rtol=0)


def test_views_are_seeded_and_differ_between_the_two_draws() -> None:
    images = torch.randint(0, 256, (6, 3, 16, 16), dtype=torch.uint8)
    spec = view_spec(16, 3, True)
    gen = torch.Generator().manual_seed(3)
    a, b = views(images, [0.5] * 3, [0.25] * 3, spec, gen), views(images, [0.5] * 3, [0.25] * 3, spec, gen)
    gen = torch.Generator().manual_seed(3)
    again = views(images, [0.5] * 3, [0.25] * 3, spec, gen)
    assert a.shape == images.shape and a.dtype == torch.float32
    torch.testing.assert_close(a, again)
    assert not torch.allclose(a, b)
    lo, hi = (0 - 0.5) / 0.25, (1 - 0.5) / 0.25
    assert float(a.min()) >= lo - 1e-6 and float(a.max()) <= hi + 1e-6  # clamped to the image range


def test_a_rotated_crop_moves_content_the_way_its_angle_says() -> None:
    """A bright column left of centre ends above or below the centre after a 90-degree rotation."""
    img = torch.zeros(1, 1, 9, 9, dtype=torch.uint8)
    img[0, 0, :, 2] = 255
    spec = dataclasses.replace(STILL, max_rotation=90.0)
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        out = views(img, [0.0], [1.0], spec, gen)[0, 0]
        if float(out[2, 4]) > 0.9 or float(out[6, 4]) > 0.9:
            return
    pytest.fail("no draw rotated the column near 90 degrees")


def test_hue_rotation_keeps_grey_and_is_the_identity_at_zero() -> None:
    m = _hue_rotation(torch.tensor([0.0, 1.0, -2.5]))
    torch.testing.assert_close(m[0], torch.eye(3), atol=1e-5, rtol=0)
    grey = torch.full((3,), 0.4)
    torch.testing.assert_close(m @ grey, grey.expand(3, 3), atol=1e-5, rtol=0)


# ------------------------------------------------------------------ the loop


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, np.ndarray, list[float], list[float]]:
    """300 digits images (uint8) and labels."""
    ds = load_dataset("digits")
    return ds.train_images[:300], ds.train_labels.numpy()[:300], ds.mean, ds.std


def _spec(epochs: int, lr: float = 2e-3, objective: str = "simclr") -> SimclrSpec:
    return SimclrSpec(epochs=epochs, batch_size=64, lr=lr, weight_decay=1e-4, temperature=0.2, projection_dim=16,
                      views=view_spec(8, 1, False), clusters=10, eval_batch_size=128, objective=objective)


OBJECTIVES = pytest.mark.parametrize("objective", ["simclr", "byol"])


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(1, 10, width=0.125, dropout=0.5)


@OBJECTIVES
def test_simclr_lowers_its_loss_and_reports_nmi_and_the_probe(digits, objective: str) -> None:  # type: ignore[no-untyped-def]
    images, labels, mean, std = digits
    model = _model()
    probe = Probe(images[:100], labels[:100], labels, 10)
    seen: list[int] = []
    state = simclr(model, images, mean, std, _spec(4, objective=objective), 0, labels=labels, probe=probe,
                   on_epoch=lambda st, m: seen.append(st.epoch))
    losses = [e.train_loss for e in state.history]
    assert seen == [1, 2, 3, 4] and state.epoch == 4
    assert losses[-1] < losses[0]
    assert all(0 <= e.nmi_labels <= 1 and 0 <= e.knn_accuracy <= 1 for e in state.history)
    assert all(m.p == 0.5 for m in model.modules() if isinstance(m, torch.nn.Dropout))  # dropout restored


@OBJECTIVES
def test_a_resumed_run_ends_where_an_uninterrupted_one_does(digits, objective: str) -> None:  # type: ignore[no-untyped-def]
    images, _, mean, std = digits
    spec = _spec(3, objective=objective)
    whole = _model()
    simclr(whole, images, mean, std, spec, 5)
    part = _model()
    saved: list[tuple[SimclrState, dict]] = []
    simclr(part, images, mean, std, spec, 5, on_epoch=lambda st, m: saved.append((st, encoder_state(m))),
           should_stop=lambda: len(saved) >= 2)
    state, weights = saved[1]
    resumed = _model()
    resumed.load_state_dict({**resumed.state_dict(), **weights})
    simclr(resumed, images, mean, std, spec, 5, state=state)
    for key, value in whole.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value, msg=key)


@OBJECTIVES
def test_a_diverging_simclr_raises_naming_the_epoch(digits, objective: str) -> None:  # type: ignore[no-untyped-def]
    images, _, mean, std = digits
    with pytest.raises(FloatingPointError, match=r"epoch 1/2"):
        simclr(_model(), images, mean, std, _spec(2, lr=1e30, objective=objective), 0)


@pytest.mark.parametrize(("change", "message"), [
    ({"batch_size": 1}, "batch_size"), ({"temperature": 0.0}, "temperature"), ({"clusters": 1000}, "clusters"),
    ({"objective": "dino"}, "objective"), ({"objective": "byol", "momentum": 1.0}, "momentum")])
def test_bad_settings_are_value_errors(digits, change: dict, message: str) -> None:  # type: ignore[no-untyped-def]
    images, _, mean, std = digits
    with pytest.raises(ValueError, match=message):
        simclr(_model(), images, mean, std, dataclasses.replace(_spec(1), **change), 0)


@OBJECTIVES
def test_the_probe_beats_random_weights_after_a_short_run(digits, objective: str) -> None:  # type: ignore[no-untyped-def]
    """A known ranking: 10-NN on the features of a few SimCLR (or BYOL) epochs beats the same network's random
    features."""
    images, labels, mean, std = digits
    probe = Probe(images[200:], labels[200:], labels[:200], 10)
    from alctl.pretrain import probe_accuracy

    model = _model()
    before = probe_accuracy(model, images[:200], mean, std, probe, 128)
    simclr(model, images[:200], mean, std, _spec(12, objective=objective), 1)
    after = probe_accuracy(model, images[:200], mean, std, probe, 128)
    assert after > before + 0.05, (before, after)
    assert math.isfinite(after)


def test_byol_s_teacher_follows_the_online_network_by_its_momentum() -> None:
    """teacher <- m x teacher + (1 - m) x online with m = 0.9 at t = 0, and 1 (teacher frozen) at t = 1."""
    from alctl.simclr import _Byol

    model = _model()
    byol = _Byol(model, dataclasses.replace(_spec(1, objective="byol"), momentum=0.9))
    before = {k: v.clone() for k, v in byol.teacher_body.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    byol.after_step(model, 1.0)
    for k, v in byol.teacher_body.state_dict().items():
        torch.testing.assert_close(v, before[k], msg=k)
    byol.after_step(model, 0.0)
    online = dict(model.named_parameters())
    for k, v in byol.teacher_body.named_parameters():
        torch.testing.assert_close(v, 0.9 * before[k] + 0.1 * online[k], msg=k)
    assert not any(p.requires_grad for p in byol.teacher_body.parameters())
    assert {id(p) for p in byol.trained()}.isdisjoint(id(p) for p in byol.teacher_body.parameters())
