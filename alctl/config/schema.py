"""The manifest schema: every section with its defaults and descriptions (the cross-field rules: `checks`; how
values are read and shown: `values`)."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, create_model, field_validator, model_validator

from alctl.errors import UserError
from alctl.safe_text import redact_url
from alctl.strategies.catalog import NAMES as STRATEGY_NAMES
from alctl.strategies.catalog import PARAMS as STRATEGY_PARAMS
from alctl.strategies.params import BaldParams, CealParams, PowerParams, ProbCoverParams

from alctl.config.checks import cross_field_problems
from alctl.config.values import memory_parts, no_control, no_nul, shown, time_seconds


class _Section(BaseModel):
    """Base for every manifest section: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", validate_assignment=False, allow_inf_nan=False)


class ImbalanceConfig(_Section):
    """A long-tailed pool for simulations: fewer images of each successive class (the test split stays whole)."""

    profile: Literal["exponential"] = Field(
        "exponential", description="exponential: class c keeps n_max x ratio^(-c / (C - 1)) images (Cao et al. 2019)")
    ratio: float = Field(50.0, ge=1, description="images of the most frequent class over the least frequent")
    seed: int = Field(0, ge=0, description="which images of a class stay (a uniform draw)")


class DatasetConfig(_Section):
    """Which images; files live under `root`."""

    name: Literal["mnist5k", "digits", "mnist", "svhn", "cifar10", "cifar100", "imagefolder"] = Field(
        "mnist5k",
        description="dataset registry name; mnist5k and digits ship with packages (offline); imagefolder = your own images",
    )
    root: str = Field("data", description="directory holding (or receiving) the dataset files")
    download: bool = Field(False, description="download missing files (needs internet)")
    image_size: int | None = Field(
        None, ge=4, le=512, description="pixels; pad (if larger) or resize images to this square size; null = native"
    )
    channels: Literal[1, 3] | None = Field(None, description="replicate grey images to 3 channels when 3; null = native")
    pool: str | None = Field(
        None, description="imagefolder: folder of unlabeled PNG/JPEG images (any nesting), relative to root"
    )
    labeled: str | None = Field(
        None, description="imagefolder: folder tree class_name/* of already labeled images (the initial set); null = none"
    )
    test: str | None = Field(
        None, description="imagefolder: folder tree class_name/* of test images; null = no test accuracy"
    )
    truth: str | None = Field(
        None, description="imagefolder: CSV (path,label) of true labels of pool images, for the simulated oracle"
    )
    imbalance: ImbalanceConfig | None = Field(
        None, description="a long-tailed pool cut from a named dataset (simulations of skewed data); null = as shipped")
    classes: list[str] | None = Field(
        None, description="imagefolder: class names in index order; null = the folder names of labeled/test, sorted"
    )

    @field_validator("root", "pool", "labeled", "test", "truth")
    @classmethod
    def _path(cls, value: str | None, info: ValidationInfo) -> str | None:
        """A path without a NUL character."""
        return no_nul(value, f"dataset.{info.field_name}")


class ModelConfig(_Section):
    """The 13-layer CNN of Laine & Aila."""

    width: float = Field(1.0, gt=0, le=4, description="channel multiplier; 1.0 = the paper (128/256/512 channels)")
    dropout: float = Field(0.5, ge=0, lt=1, description="dropout probability after each pooling block")
    l2_features: Literal["auto"] | bool = Field(
        "auto",
        description="true = L2-normalise the pooled features before the weight-normalised classifier, a cosine"
        " classifier with a learned scale (the authors' code, isL2, on by default there); false = the classifier"
        " sees the raw features, as in Laine & Aila's network and Iscen et al.'s code; auto = the cosine head when"
        " the network starts from a pre-trained encoder (+PRE: better at every budget measured), the raw head from"
        " scratch (better at 1-5 labels per class; docs/options.md). Features for kNN, CoreSet, jLP and propagation"
        " are L2-normalised either way; DeepCluster's own head follows it only with pretrain.recipe: rethinking",
    )


class TrainConfig(_Section):
    """Supervised training of one cycle (the paper's defaults: docs/protocol.md)."""

    epochs: int = Field(200, ge=1, description="epochs per cycle")
    batch_size: int = Field(32, ge=1, description="images per mini-batch when training on labels only")
    lr: float = Field(0.2, gt=0, description="initial learning rate")
    rampdown_epochs: int = Field(210, ge=1, description="epochs; cosine ramp-down reaches lr 0 here")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum (Nesterov)")
    nesterov: bool = Field(True, description="Nesterov momentum")
    weight_decay: float = Field(2e-4, ge=0, description="L2 weight decay")
    translate: Literal["auto"] | Annotated[int, Field(ge=0)] = Field(
        "auto",
        description="pixels; max random translation with reflection padding; auto = about 7% of the image side,"
        " max(1, round(side / 14)): 1 pixel of 8, 2 of 28 or 32 (the paper's code: 4 at 32)",
    )
    flip: Literal["auto"] | bool = Field(
        "auto",
        description="random horizontal flips; auto = on for colour images (photographs), off for grey ones (digits,"
        " characters, scans: a flipped digit is another digit or none)",
    )
    min_steps: int = Field(
        0, ge=0, description="optimizer steps; lower bound per epoch so tiny labeled sets still train (0 = one pass)"
    )
    eval_batch_size: int = Field(512, ge=1, description="images per batch at evaluation / feature extraction")
    device: str = Field("auto", description="auto (CUDA when present), cpu, cuda or cuda:N")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto",
        description="arithmetic of training, evaluation and feature passes: auto = bf16 autocast on a CUDA device"
        " that supports it (torch.cuda.is_bf16_supported), else fp32 (always fp32 on the CPU); bf16 / fp16 ="
        " autocast to that type (weights, probabilities and features stay float32; fp16 uses a gradient scaler"
        " and needs CUDA)",
    )
    channels_last: Literal["auto"] | bool = Field(
        "auto",
        description="channels-last (NHWC) memory format for the network and its input batches: auto = on CUDA"
        " only (measured no faster on the CPU: benchmarks/README.md), true / false = always / never",
    )
    compile: bool = Field(
        False,
        description="run the network through torch.compile (opt-in: compiling takes tens of seconds per cycle"
        " and needs a C++ compiler on the CPU)",
    )

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        """One of the devices this tool can train on."""
        if re.fullmatch(r"auto|cpu|cuda(:\d+)?", value) is None:
            raise ValueError(f"train.device: expected auto, cpu, cuda or cuda:N, got {shown(value)}")
        return value


# Each strategy's parameters (active.<strategy>) are its own, in alctl.strategies.params; the aliases keep their
# old names.
CealConfig = CealParams
BaldConfig = BaldParams
PowerConfig = PowerParams
ProbCoverConfig = ProbCoverParams


class _ActiveBase(_Section):
    """The active learning loop's own fields; `ActiveConfig` adds a section per strategy with parameters."""

    initial: int = Field(100, ge=1, description="images labeled at cycle 0, chosen by initial_strategy")
    initial_strategy: Literal["auto", "balanced", "random", "typiclust", "probcover"] = Field(
        "auto",
        description="how the cycle-0 set is chosen: balanced = initial // C images per class at random (the paper's;"
        " it reads the true labels, so a simulation's choice only); random = uniformly at random, reading no label;"
        " typiclust / probcover = the strategy on initial_features, with no labeled image (cold start); auto ="
        " balanced with a simulated oracle, random with a human one. Variants of one repetition share the set. A"
        " dataset's labeled folder tree is the initial set whatever this says",
    )
    initial_features: Literal["encoder", "deepcluster", "simclr", "pixels"] = Field(
        "encoder",
        description="the features typiclust / probcover pick the initial set on: encoder = the task's pre-trained"
        " encoder (pretrain.method's; DeepCluster's when the task has none); deepcluster / simclr = that encoder"
        " (pretrain settings), trained once and shared by every variant, plain ones included, so that they share"
        " the set; pixels = the images centred and L2-normalised (no pre-training)",
    )
    budget: int = Field(100, ge=1, description="images selected for labelling per cycle (b)")
    cycles: int = Field(5, ge=1, description="train+evaluate cycles; a selection of b follows every cycle but the last")
    strategy: Literal[STRATEGY_NAMES] = Field("random", description="acquisition function")  # type: ignore[valid-type]
    oracle: Literal["simulated", "human"] = Field(
        "simulated",
        description="who labels: simulated = ground truth answers at once; human = `alctl cycle` stops after each"
        " selection until `alctl label` imports the annotations",
    )


def _strategy_section(model: type[BaseModel]) -> Any:  # noqa: ANN401 - a pydantic field definition
    """A strategy's parameter model as the manifest section of its name, at its defaults."""
    return (model, Field(default_factory=model, description=(model.__doc__ or "").split("\n")[0]))


# active.<name>: the parameters of every strategy the catalog gives a parameter model (`strategies.catalog`)
ActiveConfig = create_model("ActiveConfig", __base__=_ActiveBase, __module__=__name__,
                            **{name: _strategy_section(model) for name, model in STRATEGY_PARAMS.items()})
ActiveConfig.__doc__ = "The active learning loop, and each strategy's parameters as the section of its name."


class FixmatchConfig(_Section):
    """FixMatch consistency training (Sohn et al. 2020), semi.method: fixmatch; the defaults are the paper's."""

    threshold: float = Field(
        0.95, gt=0, le=1,
        description="confidence (the weak view's top softmax probability) from which a prediction becomes the"
        " strong view's target (tau)",
    )
    weight: float = Field(1.0, ge=0, description="weight of the unlabeled term against the labeled one (lambda_u)")
    flexible: bool = Field(
        False,
        description="FlexMatch's class-wise thresholds (Zhang et al. 2021): threshold x beta_c / (2 - beta_c), beta_c"
        " the share of unlabeled images last predicted confidently as class c (against the most learned class, or"
        " the images not yet predicted confidently): low thresholds while a class is unlearned; false = FixMatch",
    )
    prior_epochs: int = Field(
        0, ge=0,
        description="the first this many epochs with unlabeled images train their strong views on label"
        " propagation's pseudo-labels (the graph of semi.features, k, alpha, gamma), each weighted by its certainty,"
        " instead of on the model's own confident predictions; 0 = FixMatch from the start",
    )


class SemiConfig(_Section):
    """Semi-supervised training: label propagation (Iscen et al. 2019) or FixMatch (Sohn et al. 2020)."""

    method: Literal["none", "label-propagation", "fixmatch"] = Field(
        "none",
        description="none, label-propagation (+SEMI: pseudo-labels of a kNN graph, the paper) or fixmatch (+SEMI:"
        " the model's own confident predictions on weakly augmented unlabeled images train the strongly augmented"
        " ones; the strong views are SimCLR's, `augment.view_spec`). Both use batch_size, labeled_per_batch,"
        " unlabeled_per_epoch, warmup and the two phases (phase2_epochs, phase2_lr)",
    )
    fixmatch: FixmatchConfig = Field(default_factory=FixmatchConfig, description="FixMatch parameters")
    k: int = Field(50, ge=1, description="neighbours in the kNN graph")
    alpha: float = Field(0.99, gt=0, lt=1, description="propagation parameter alpha")
    gamma: float = Field(3.0, gt=0, description="affinity exponent: similarity^gamma")
    tol: float = Field(1e-6, gt=0, description="conjugate gradient tolerance")
    max_iter: int = Field(20, ge=1, description="conjugate gradient iterations")
    every: int = Field(1, ge=1, description="epochs between recomputations of the propagation")
    batch_size: int = Field(128, ge=2, description="images per mixed mini-batch")
    labeled_per_batch: int = Field(50, ge=1, description="labeled images in each mixed mini-batch")
    knn: Literal["exact", "ivf", "hnsw"] = Field("exact", description="neighbour search; exact by default")
    warmup: int = Field(
        0, ge=0, description="epochs on labels only before the first propagation (0 = propagate from the first epoch)"
    )
    selection: Literal["all", "prob"] = Field(
        "prob",
        description="which unlabeled images get pseudo-labels at each propagation: all, or a `fraction` of them drawn"
        " with probability proportional to certainty (the authors' code, lp_mode prob)",
    )
    fraction: float = Field(0.5, gt=0, le=1, description="share of the unlabeled images drawn when selection is prob")
    unlabeled_per_epoch: int | None = Field(
        None, ge=1, description="pseudo-labeled images drawn per epoch; null = one pass over every unlabeled image"
    )
    phase2_epochs: int = Field(
        0, ge=0,
        description="0: pseudo-labels enter within train.epochs after `warmup`; > 0: Iscen et al.'s two phases,"
        " train.epochs on the labels alone (the plain model), then this many epochs with pseudo-labels",
    )
    phase2_lr: float | None = Field(
        None, gt=0, description="phase 2's initial learning rate (cosine ramp-down to 0); null = train.lr"
    )
    features: Literal["auto", "model", "encoder", "pixels", "encoder+pixels"] = Field(
        "auto",
        description="what the kNN graph of training's propagations is built on: model = the features of the network"
        " being trained, recomputed at every propagation (the paper); encoder = with +PRE, the DeepCluster encoder's"
        " features, learned from every pool image before any label (the model's without +PRE); pixels = the images"
        " themselves, centred and L2-normalised (scikit-learn LabelSpreading's space: strong on small aligned images"
        " such as digits, weak on photographs); encoder+pixels = both, each L2-normalised and joined (a pair's"
        " similarity is the mean of its two cosines), with +PRE; auto = with +PRE, encoder+pixels for grey images and"
        " encoder for colour ones; without, pixels for grey images and model for colour ones (grey images are where"
        " pixels carry the class). encoder, pixels and encoder+pixels are fixed, so a cycle propagates once."
        " `alctl propagate` always uses the task's model",
    )
    class_weights: bool = Field(
        True,
        description="weight each class's loss inversely to its frequency among labels and pseudo-labels (Iscen et"
        " al.'s paper and code); false = the authors' code (Siméoni et al. compute the weights but never apply"
        " them: loss = sum of certainty x cross-entropy / batch size)",
    )
    weight_scale: Literal["max", "none"] = Field(
        "max",
        description="certainty weights divided by their maximum over the pool (max, the authors' code) or kept"
        " as 1 - H/log C (none)",
    )


class SimclrConfig(_Section):
    """SimCLR contrastive pre-training (pretrain.method: simclr); its augmentation follows the images' size and
    channels (`augment.view_spec`)."""

    epochs: Literal["auto"] | Annotated[int, Field(ge=1)] = Field(
        "auto",
        description="passes over the pool; auto = about `steps` optimizer steps whatever the pool's size,"
        " max(1, round(steps x batch_size / pool images)): many passes over a small pool, few over a large one",
    )
    steps: int = Field(
        500, ge=1,
        description="optimizer steps that epochs: auto aims at (500 x 256 images: 10 minutes on 2 idle CPU cores at"
        " model.width 0.25 for 28-pixel images, 1 minute for 8-pixel ones)",
    )
    batch_size: int = Field(256, ge=2, description="images per step (each seen in two views)")
    lr: float = Field(0.002, gt=0, description="AdamW's initial learning rate, cosine ramp-down to 0")
    weight_decay: float = Field(1e-4, ge=0, description="AdamW's decoupled weight decay")
    temperature: float = Field(0.2, gt=0, description="NT-Xent temperature")
    projection_dim: int = Field(64, ge=1, description="output size of the projection head, dropped after training")


class PretrainConfig(_Section):
    """Pre-training of the network on the unlabeled pool (+PRE), once per dataset/model/settings/seed."""

    method: Literal["none", "deepcluster", "simclr"] = Field(
        "none",
        description="none; deepcluster (Caron et al. 2018, the paper's: k-means pseudo-classes, the fields below);"
        " simclr (Chen et al. 2020: contrastive views, the simclr section)",
    )
    recipe: Literal["deepcluster", "rethinking"] = Field(
        "deepcluster",
        description="how DeepCluster trains. deepcluster = Caron et al. 2018: a fresh head each epoch, the body's"
        " SGD at a constant lr, images drawn uniformly over the clusters, k-means on clean images' features."
        " rethinking = the code of Siméoni et al. (ICPR 2020): one Nesterov SGD over every weight with a cosine"
        " ramp-down of lr, the head kept between epochs, images drawn uniformly, k-means on augmented images'"
        " features (they train 400 epochs at lr 0.02, weight decay 2e-4, without PCA: set lr, weight_decay and"
        " pca to match)",
    )
    epochs: int = Field(400, ge=1, description="DeepCluster epochs")
    clusters_per_class: int = Field(5, ge=1, description="k-means clusters = this x number of classes")
    kmeans_iters: int = Field(10, ge=1, description="k-means iterations per epoch")
    lr: float = Field(0.02, gt=0, description="learning rate (deepcluster: constant; rethinking: cosine ramp-down to 0)")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum of the network body (rethinking: of every weight)")
    weight_decay: float = Field(1e-5, ge=0, description="L2 weight decay (DeepCluster's 1e-5)")
    batch_size: int = Field(128, ge=1, description="images per mini-batch")
    passes: int = Field(
        1, ge=1, description="passes over the pool between two clusterings (DeepCluster: 1 on ImageNet's 1.3M images;"
        " a pool of a few thousand needs several, or the fresh head learns too little each epoch to teach the body)",
    )
    pca: int | None = Field(None, ge=2, description="PCA-whiten features to this dimension before k-means; null = off")
    weights: str | None = Field(
        None, description="encoder weights written by `alctl pretrain` (a .pt file) to use instead of training them"
    )
    simclr: SimclrConfig = Field(default_factory=SimclrConfig, description="SimCLR settings")

    @field_validator("weights")
    @classmethod
    def _path(cls, value: str | None) -> str | None:
        """A path without a NUL character."""
        return no_nul(value, "pretrain.weights")


class SchedulerConfig(_Section):
    """How `alctl submit` renders cluster jobs (Slurm array / Kubernetes Indexed Job); options override these."""

    partition: str | None = Field(None, description="Slurm partition; null = the cluster's default")
    time: str = Field("24:00:00", description="wall-clock limit per task, HH:MM:SS (Slurm --time, k8s activeDeadlineSeconds)")
    gpus: int = Field(1, ge=0, description="GPUs per task")
    cpus: int = Field(4, ge=1, description="CPU cores per task")
    memory: str = Field("16G", description="memory per task, e.g. 16G (Slurm --mem; k8s 16Gi)")
    image: str | None = Field(
        None, description="container image; Slurm runs alctl in it with apptainer/singularity when set; required for k8s"
    )
    max_parallel: int | None = Field(None, ge=1, description="tasks running at once (Slurm %N, k8s parallelism); null = all")
    namespace: str = Field("default", description="Kubernetes namespace")
    runs_claim: str | None = Field(
        None, description="Kubernetes PersistentVolumeClaim holding the runs directory; null = a hostPath at output"
    )
    data_claim: str | None = Field(None, description="Kubernetes PersistentVolumeClaim holding dataset.root; null = hostPath")
    backoff_limit: int = Field(3, ge=0, description="Kubernetes retries per index (backoffLimitPerIndex)")
    signal_seconds: int = Field(120, ge=0, description="seconds of warning before a kill (Slurm --signal, k8s grace period)")
    tasks_per_gpu: int = Field(
        1, ge=1,
        description="tasks packed on one array element / pod (one GPU): each runs `alctl cycle --jobs N` over its"
        " N tasks at once, with N x cpus and N x memory; max_parallel then counts elements (max_parallel // N)",
    )
    images_per_second: float | None = Field(
        None, gt=0,
        description="measured training throughput of one task on the cluster's device (images/s: e.g. a cycle's"
        " train images in `alctl validate`'s plan over its train seconds in metrics.parquet); with it `alctl submit` warns when `time` is shorter than the longest task's"
        " estimate (`alctl validate --images-per-second` prints the plan)",
    )

    @field_validator("time", "memory")
    @classmethod
    def _slurm_value(cls, value: str, info: ValidationInfo) -> str:
        """A time limit (time) or a memory size (memory) in a form Slurm and Kubernetes accept."""
        parse = time_seconds if info.field_name == "time" else memory_parts
        try:
            parse(value)
        except UserError as exc:
            raise ValueError(exc.problems[0]) from None
        return value


class TrackingConfig(_Section):
    """Experiment tracking: where each task is also recorded. Not part of the task hash (it changes no result)."""

    mlflow: str | None = Field(
        None,
        description="MLflow tracking URI, e.g. sqlite:///mlflow.db (artifacts in mlartifacts/ beside the database)"
        " or http://host:5000; one MLflow run per task, in the experiment named after the run (`name`): the task's"
        " configuration as params, its metrics per cycle (step = cycle) and its Parquet tables as artifacts. Needs"
        " pip install 'alctl[mlflow]'; null = off. A password in the URI (http://user:secret@host) goes to the"
        " MLflow client only: alctl prints and stores it as ***, so jobs run from the stored copy need"
        " MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD, the better place for credentials",
    )

    @field_validator("mlflow")
    @classmethod
    def _uri(cls, value: str | None) -> str | None:
        """A non-empty URI, or null."""
        if value is not None and not value.strip():
            raise ValueError("tracking.mlflow: empty; give a tracking URI such as sqlite:///mlflow.db, or null for off")
        return value if value is None else value.strip()


class Manifest(_Section):
    """One experiment: everything a run needs."""

    name: str = Field("", description="run name; outputs go to <output>/<name>; empty = the manifest's file stem")
    output: str = Field("runs", description="directory holding run directories")
    seed: int = Field(0, ge=0, description="base seed; generators are seeded from (seed, repetition, cycle)")
    repetitions: int = Field(5, ge=1, description="repetitions with different initial sets and seeds")
    dataset: DatasetConfig = Field(default_factory=DatasetConfig, description="dataset")
    model: ModelConfig = Field(default_factory=ModelConfig, description="network")
    train: TrainConfig = Field(default_factory=TrainConfig, description="training per cycle")
    active: ActiveConfig = Field(default_factory=ActiveConfig, description="active learning loop")
    semi: SemiConfig = Field(default_factory=SemiConfig, description="semi-supervision")
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig, description="unsupervised pre-training")
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig, description="cluster job settings")
    tracking: TrackingConfig = Field(
        default_factory=TrackingConfig,
        description="experiment tracking (MLflow); leaves results and task hashes as they are",
    )
    sweep: dict[str, list[Any]] = Field(
        default_factory=dict,
        description="grid: dotted field path -> list of values, crossed with repetitions; the reserved key"
        " `exclude` lists partial points ({path: value, ...}) whose combinations are left out of the grid,"
        " e.g. exclude: [{active.strategy: ceal, semi.method: label-propagation}]",
    )

    @field_validator("name")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        """A run name is one directory under `output`: no path separators or control characters, not . or .."""
        no_control(value, "name", "a plain folder name")
        if "/" in value or "\\" in value or value.strip() in (".", ".."):
            raise ValueError(f"name: {shown(value)} must be a plain folder name (no / or \\, not . or ..)")
        return value

    @field_validator("output")
    @classmethod
    def _plain_output(cls, value: str) -> str:
        """The folder of run directories: a path without control characters."""
        return no_control(value, "output", "a folder path")

    @model_validator(mode="after")
    def _cross_field(self) -> "Manifest":
        """Cross-field rules of one resolved configuration (sweeps are checked per task)."""
        problems = cross_field_problems(self)
        if problems:
            raise ValueError("\n".join(problems))
        return self


def cycle_epochs(m: Manifest) -> int:
    """Training epochs of one cycle: train.epochs, plus semi.phase2_epochs with +SEMI."""
    return m.train.epochs + (m.semi.phase2_epochs if m.semi.method != "none" else 0)


def manifest_hash(m: Manifest) -> str:
    """sha256 (first 16 hex) of the whole resolved manifest's canonical JSON: which run a manifest describes (a
    task's identity is `identity.task_hash`)."""
    canonical = json.dumps(m.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def run_dir(m: Manifest) -> Path:
    """The run directory <output>/<name>."""
    return Path(m.output) / (m.name or "run")


def to_yaml(m: Manifest) -> str:
    """The resolved manifest as YAML text, as alctl stores and shows it: the password of a tracking URI replaced by
    *** (the MLflow client is given the manifest's own URI; see TrackingConfig)."""
    data = m.model_dump(mode="json")
    if data["tracking"]["mlflow"] is not None:
        data["tracking"]["mlflow"] = redact_url(data["tracking"]["mlflow"])
    return yaml.safe_dump(data, sort_keys=False)
