"""The configuration layer, at the bottom of the package: the only manifest schema and everything about a manifest.
`load(path) -> Manifest`; the sections and their defaults (`schema`), the cross-field rules (`checks`), how values
are read and shown (`values`), the `auto` rules (`rules`), one-line validation messages (`messages`), sweeps and
task keys (`sweeps`), reading YAML and `extends:` (`loading`), the dataset facts (`facts`) and a task's identity
(`identity`). Callers use `from alctl import config as mf`."""

from __future__ import annotations

from alctl.config.facts import (  # noqa: F401
    DATASET_FACTS,
    NATIVE_CHANNELS,
)
from alctl.config.values import (  # noqa: F401
    SHOWN_LIMIT,
    MAX_YAML_NODES,
    MAX_TASKS,
    EXTENDS_ANYWHERE,
    shown,
    time_seconds,
    memory_parts,
    layer_channels,
)
from alctl.config.checks import cross_field_problems  # noqa: F401
from alctl.config.schema import (  # noqa: F401
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
from alctl.config.rules import (  # noqa: F401
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
from alctl.config.messages import (  # noqa: F401
    Origins,
    hidden_note,
)
from alctl.config.sweeps import (  # noqa: F401
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
from alctl.config.loading import (  # noqa: F401
    parse,
    expanded_nodes,
    _UniqueKeyLoader,
    EXTENDS,
    extends_anywhere,
    load,
)
