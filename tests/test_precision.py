"""Precision, memory format and torch.compile (issue 18): how they resolve, what they do, and that the CPU default
is today's float32 NCHW arithmetic bit for bit."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from alctl.config import identity
from alctl import config as mf
from alctl import runtime, train
from alctl.augment import augment, normalize
from alctl.cli import app
from alctl.engine import settings
from alctl.errors import ManifestError, UserError
from alctl.models import build_model

CPU, CUDA = torch.device("cpu"), torch.device("cuda")  # a CUDA device object needs no GPU until used
MEAN, STD = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]


def _spec(compute: train.Compute = train.FP32, epochs: int = 1) -> train.TrainSpec:
    return train.TrainSpec(epochs=epochs, batch_size=16, lr=0.05, rampdown_epochs=epochs + 1, momentum=0.9,
                           nesterov=True, weight_decay=2e-4, translate=1, flip=True, min_steps=0, eval_batch_size=32,
                           compute=compute)


def _data(n: int = 48) -> tuple[torch.Tensor, train.Targets]:
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (n, 3, 12, 12), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (n,), generator=g).numpy()
    return images, train.Targets(labeled_pos=np.arange(n, dtype=np.int64), labeled_y=labels)


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(3, 10, width=0.0625)


# --------------------------------------------------------------------------- resolution


def test_auto_is_fp32_on_the_cpu_and_bf16_on_a_cuda_device_that_supports_it(monkeypatch: pytest.MonkeyPatch) -> None:
    assert runtime.resolve_precision("auto", CPU) == "fp32"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert runtime.resolve_precision("auto", CUDA) == "bf16"
    assert runtime.resolve_precision("fp16", CUDA) == "fp16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert runtime.resolve_precision("auto", CUDA) == "fp32"  # an older GPU: full precision, not fp16
    with pytest.raises(UserError, match=r"^train.precision: bf16 is not supported by this GPU"):
        runtime.resolve_precision("bf16", CUDA)
    assert runtime.resolve_precision("bf16", CPU) == "bf16"  # CPU autocast runs bf16
    assert runtime.resolve_precision("fp32", CPU) == "fp32"


def test_fp16_on_the_cpu_is_a_one_line_user_error() -> None:
    with pytest.raises(UserError) as info:
        runtime.resolve_precision("fp16", CPU)
    assert len(info.value.problems) == 1 and info.value.problems[0].startswith("train.precision: fp16 needs a CUDA")
    with pytest.raises(ManifestError, match="train.precision: fp16 needs a CUDA device"):
        mf.parse({"train": {"precision": "fp16", "device": "cpu"}})


def test_fp16_resolved_on_the_cpu_fails_the_cycle_command_before_anything_is_written(write_manifest,
                                                                                    workdir: Path) -> None:
    path = write_manifest({"train": {"precision": "fp16", "device": "auto"}})
    if torch.cuda.is_available():
        pytest.skip("auto is CUDA here")
    result = CliRunner().invoke(app, ["cycle", str(path), "--quiet"])
    assert result.exit_code == 2
    assert "train.precision: fp16 needs a CUDA device" in result.output
    assert not (workdir / "runs" / "tiny").exists()


def test_channels_last_auto_is_cuda_only() -> None:
    assert runtime.resolve_channels_last("auto", CPU) is False
    assert runtime.resolve_channels_last("auto", CUDA) is True
    assert runtime.resolve_channels_last(True, CPU) is True
    assert runtime.resolve_channels_last(False, CUDA) is False


def test_default_train_section_on_the_cpu_is_plain_fp32() -> None:
    t = mf.TrainConfig()
    assert settings.compute(t, CPU) == train.FP32 == train.Compute("fp32", False, False)
    assert settings.train_spec(t, CPU).compute == train.FP32 and settings.train_spec(t).compute == train.FP32
    on = settings.compute(mf.TrainConfig(precision="bf16", channels_last=True, compile=True), CPU)
    assert on == train.Compute("bf16", True, True)


def test_precision_fields_at_their_default_are_no_part_of_a_tasks_identity() -> None:
    assert identity.task_fields(mf.Manifest()) == {}
    for train_section in ({"precision": "bf16"}, {"precision": "fp32"}, {"channels_last": False}, {"compile": True}):
        fields = identity.task_fields(mf.parse({"train": train_section}))
        assert fields == {f"train.{k}": v for k, v in train_section.items()}, train_section


# --------------------------------------------------------------------------- what they do


def test_fp32_default_is_the_plain_training_loop_bit_for_bit() -> None:
    """fit with the default compute against the loop as it was before precisions existed."""
    images, targets = _data()
    spec = _spec(epochs=2)
    ours = _model()
    train.fit(ours, images, targets, spec, MEAN, STD, torch.Generator().manual_seed(3))
    ref = _model()
    gen = torch.Generator().manual_seed(3)
    opt = train.make_optimizer(ref, spec)
    pos, ys, ws, _ = train._flat_targets(targets, CPU)
    for epoch in range(spec.epochs):
        batches = train._epoch_batches(targets, spec, None, gen)
        ref.train()
        for step, b in enumerate(batches):
            for group in opt.param_groups:
                group["lr"] = train.learning_rate(epoch + step / len(batches), spec, None)
            x = augment(normalize(images[pos[b]], MEAN, STD), spec.translate, spec.flip, gen)
            logits, _ = ref(x)
            loss = train.weighted_loss(logits, ys[b], ws[b], None)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    for (name, a), (_, b) in zip(ours.state_dict().items(), ref.state_dict().items()):
        assert torch.equal(a, b), name


def test_predict_returns_float32_under_bf16_autocast_on_the_cpu() -> None:
    images, _ = _data(40)
    model = _model()
    p32, f32 = train.predict(model, images, MEAN, STD, 16)
    bf16 = train.Compute("bf16")
    p16, f16 = train.predict(model, images, MEAN, STD, 16, bf16)
    assert p16.dtype == torch.float32 and f16.dtype == torch.float32
    assert p16.shape == p32.shape and f16.shape == f32.shape
    assert not torch.equal(f16, f32)  # the passes did run in bf16
    assert torch.allclose(p16.sum(1), torch.ones(40)) and torch.allclose(f16.norm(dim=1), torch.ones(40))
    assert (p16 - p32).abs().max() < 0.05 and (f16 - f32).abs().max() < 0.1
    mc = train.predict_mc(model, images, MEAN, STD, 2, 16, bf16)
    assert mc.dtype == torch.float32 and mc.shape == (2, 40, 10)
    acc, loss = train.evaluate(model, images, torch.zeros(40, dtype=torch.int64), MEAN, STD, 16, bf16)
    assert 0 <= acc <= 1 and np.isfinite(loss)
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_bf16_training_on_the_cpu_keeps_float32_weights_and_learns() -> None:
    images, targets = _data()
    model = _model()
    before = [p.detach().clone() for p in model.parameters()]
    state = train.fit(model, images, targets, _spec(train.Compute("bf16")), MEAN, STD, torch.Generator().manual_seed(0))
    assert state.epoch == 1 and state.scaler is None
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_fp16_trains_with_a_gradient_scaler() -> None:
    """The fp16 path (GradScaler) exercised through torch's CPU autocast; the engine allows fp16 on CUDA only."""
    images, targets = _data()
    model = _model()
    state = train.fit(model, images, targets, _spec(train.Compute("fp16")), MEAN, STD, torch.Generator().manual_seed(0))
    assert isinstance(state.scaler, torch.amp.GradScaler) and state.scaler.get_scale() > 0
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in model.parameters())


def test_channels_last_is_applied_to_the_model_and_its_input_batches() -> None:
    images, targets = _data()
    model = _model()
    seen: list[bool] = []
    model.register_forward_pre_hook(lambda m, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last)))
    compute = train.Compute(channels_last=True)
    train.fit(model, images, targets, _spec(compute), MEAN, STD, torch.Generator().manual_seed(0))
    conv = model.block1[0][0]
    weight = conv.parametrizations.weight.original1  # weight norm's direction v [out, in, 3, 3]
    assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    assert seen and all(seen)
    seen.clear()
    probs, feats = train.predict(model, images, MEAN, STD, 16, compute)
    assert seen and all(seen) and probs.dtype == feats.dtype == torch.float32
    seen.clear()
    train.predict(model, images, MEAN, STD, 16)  # the default: NCHW batches
    assert seen and not any(seen)


def test_compiled_training_matches_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.compile (opt-in) through a backend that traces and differentiates without generating C++ code
    (inductor works too but takes minutes on a small CPU): same results as eager up to rounding."""
    monkeypatch.setattr("alctl.train.compute.COMPILE_BACKEND", "aot_eager")  # read there at call time
    images, targets = _data(32)
    eager, compiled = _model(), _model()
    torch.manual_seed(5)  # dropout's draws
    train.fit(eager, images, targets, _spec(), MEAN, STD, torch.Generator().manual_seed(0))
    compute = train.Compute(compile=True)
    torch.manual_seed(5)
    train.fit(compiled, images, targets, _spec(compute), MEAN, STD, torch.Generator().manual_seed(0))
    assert compute.forward(compiled) is compute.forward(compiled)  # compiled once per model
    for a, b in zip(eager.parameters(), compiled.parameters()):
        assert torch.allclose(a, b, atol=1e-4)
    assert set(compiled.state_dict()) == set(eager.state_dict())  # the wrapper adds no keys to checkpoints
    p_e, _ = train.predict(eager, images, MEAN, STD, 16)
    p_c, _ = train.predict(compiled, images, MEAN, STD, 16, compute)
    assert torch.allclose(p_e, p_c, atol=1e-4)
    alive = weakref.ref(compiled)
    del compiled
    gc.collect()
    assert alive() is None  # the compiled wrapper does not keep a cycle's model (and its GPU memory) alive
