"""The cross-field rules of one resolved configuration: problems no single field's check can see."""

from __future__ import annotations

from typing import TYPE_CHECKING

from alctl.config.facts import DATASET_FACTS
from alctl.config.values import layer_channels
from alctl.strategies.catalog import COLD_START_NAMES

if TYPE_CHECKING:  # the schema calls these rules from its validator
    from alctl.config.schema import Manifest


def cross_field_problems(m: Manifest) -> list[str]:
    """Cross-field problems of a configuration, one line each, naming the fields."""
    problems: list[str] = []
    d = m.dataset
    if d.name == "imagefolder":
        if d.pool is None:
            problems.append("dataset.pool: imagefolder needs the folder of unlabeled images (relative to dataset.root)")
        if d.image_size is None:
            problems.append("dataset.image_size: imagefolder needs a size (pixels) to resize every image to")
        if d.classes is None and d.labeled is None and d.test is None:
            problems.append("dataset.classes: imagefolder needs class names, or a labeled/test folder tree to read them from")
        if m.active.oracle == "simulated" and d.truth is None:
            problems.append(
                "active.oracle: simulated needs true labels of the pool images: set dataset.truth (CSV path,label)"
                " or use oracle: human"
            )
    else:
        for key in ("pool", "labeled", "test", "truth", "classes"):
            if getattr(d, key) is not None:
                problems.append(f"dataset.{key}: only for dataset.name: imagefolder (got {d.name})")
    if d.imbalance is not None and d.name == "imagefolder":
        problems.append("dataset.imbalance: for the named datasets only; an image folder's pool is as it is")
    facts = DATASET_FACTS.get(d.name)
    if facts is not None:
        _, pool = facts
        total = m.active.initial + m.active.budget * (m.active.cycles - 1)
        if m.active.initial > pool:
            problems.append(f"active.initial: {m.active.initial} is larger than the {d.name} pool ({pool} images)")
        elif total > pool:
            problems.append(
                f"active.budget: initial {m.active.initial} + budget {m.active.budget} x {m.active.cycles - 1} selections"
                f" = {total} exceeds the {d.name} pool ({pool} images)"
            )
        if m.semi.method == "label-propagation" and m.semi.k >= pool:
            problems.append(f"semi.k: {m.semi.k} neighbours needs a pool larger than {pool}")
    if m.active.strategy == "ceal" and m.semi.method != "none":
        problems.append(
            f"active.strategy: ceal does not combine with semi.method: {m.semi.method}"
            " (CEAL brings its own pseudo-labels); use another strategy or semi.method: none, or in a sweep leave"
            f" the pair out: exclude: [{{active.strategy: ceal, semi.method: {m.semi.method}}}]"
        )
    bald = m.active.strategy == "bald" or (m.active.strategy == "power" and m.active.power.base == "bald")
    if bald and m.model.dropout == 0:
        problems.append(
            f"active.strategy: {m.active.strategy} (BALD) compares passes with dropout on, but model.dropout is 0;"
            " set model.dropout > 0 (e.g. 0.5) or use another strategy"
        )
    feature_dim = layer_channels(128, m.model.width)
    if m.pretrain.pca is not None and m.pretrain.pca > feature_dim:
        problems.append(
            f"pretrain.pca: {m.pretrain.pca} exceeds the feature dimension {feature_dim} of model.width {m.model.width};"
            f" use at most {feature_dim} or null"
        )
    if m.semi.phase2_epochs and m.semi.warmup:
        problems.append(
            "semi.warmup: not used with semi.phase2_epochs (phase 1 is the whole of train.epochs on the labels);"
            " set it to 0"
        )
    if m.train.precision == "fp16" and m.train.device == "cpu":
        problems.append(
            "train.precision: fp16 needs a CUDA device (torch's CPU autocast is meant for bf16); use auto, fp32 or"
            " bf16 with train.device: cpu"
        )
    a = m.active
    if a.initial_strategy == "balanced" and a.oracle == "human":
        problems.append(
            "active.initial_strategy: balanced draws the same number of images per class from the true labels, which"
            " a human oracle has not given yet; use random (or typiclust / probcover, or auto)"
        )
    if (a.initial_strategy in COLD_START_NAMES and a.initial_features in ("deepcluster", "simclr")
            and m.pretrain.method not in ("none", a.initial_features)):
        problems.append(
            f"active.initial_features: {a.initial_features} with pretrain.method {m.pretrain.method}: a task has one"
            f" encoder; use initial_features: {m.pretrain.method} (or encoder), or pretrain.method: {a.initial_features}"
        )
    if m.semi.features == "encoder+pixels" and m.pretrain.method == "none":
        problems.append(
            "semi.features: encoder+pixels joins a pre-trained encoder's features to the pixels, but pretrain.method"
            " is none; set pretrain.method (simclr or deepcluster) or use semi.features: pixels"
        )
    if m.semi.labeled_per_batch >= m.semi.batch_size:
        problems.append(
            f"semi.labeled_per_batch: {m.semi.labeled_per_batch} must be smaller than semi.batch_size {m.semi.batch_size}"
        )
    return problems
