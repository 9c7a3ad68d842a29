"""The only manifest schema and everything about a manifest: `load(path) -> Manifest`, the sections and their
defaults (`schema`), the cross-field rules (`checks`), how values are read and shown (`values`), the `auto` rules (`rules`), one-line validation messages (`messages`), sweeps and task keys
(`sweeps`), reading YAML and `extends:` (`loading`). Callers use `from alctl import manifest as mf`."""

from __future__ import annotations

from alctl.manifest.facts import (  # noqa: F401
    DATASET_FACTS,
    NATIVE_CHANNELS,
)
from alctl.manifest.values import (  # noqa: F401
    SHOWN_LIMIT,
    MAX_YAML_NODES,
    MAX_TASKS,
    EXTENDS_ANYWHERE,
    shown,
    time_seconds,
    memory_parts,
    layer_channels,
)
from alctl.manifest.checks import cross_field_problems  # noqa: F401
from alctl.manifest.schema import (  # noqa: F401
    ImbalanceConfig,
    DatasetConfig,
    ModelConfig,
    TrainConfig,
    CealConfig,
    BaldConfig,
    PowerConfig,
    ProbCoverConfig,
    ActiveConfig,
    FixmatchConfig,
    SemiConfig,
    SimclrConfig,
    PretrainConfig,
    SchedulerConfig,
    TrackingConfig,
    Manifest,
    cycle_epochs,
    manifest_hash,
    run_dir,
    to_yaml,
)
from alctl.manifest.rules import (  # noqa: F401
    ImageShape,
    image_channels,
    translate,
    flip,
    l2_features,
    semi_features,
    simclr_epochs,
    initial_strategy,
    encoder_method,
    uses_encoder,
)
from alctl.manifest.messages import (  # noqa: F401
    Origins,
    hidden_note,
)
from alctl.manifest.sweeps import (  # noqa: F401
    Task,
    variant_label,
    grid_size,
    grid_problem,
    EXCLUDE,
    sweep_axes,
    excluded,
    sweep_points,
    resolve_point,
    key_component,
    task_key,
    tasks,
)
from alctl.manifest.loading import (  # noqa: F401
    parse,
    expanded_nodes,
    _UniqueKeyLoader,
    EXTENDS,
    extends_anywhere,
    load,
)
