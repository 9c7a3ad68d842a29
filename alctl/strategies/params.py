"""Each acquisition function's own parameters: the manifest section `active.<strategy>` of the strategies that
have any (pydantic models, no torch); `catalog` names which model belongs to which strategy, and the manifest's
schema and the engine's `StrategyParams` derive from it."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


# The scores power sampling may raise to a power: probability-based, each >= 0 (see scores.power_select).
POWER_BASES: tuple[str, ...] = ("bald", "uncertainty", "margin", "least-confidence")


class _Params(BaseModel):
    """Base of a strategy's parameters: unknown keys are errors, as in every manifest section."""

    model_config = ConfigDict(extra="forbid", validate_assignment=False, allow_inf_nan=False)


class CealParams(_Params):
    """CEAL pseudo-labelling of confident images; by default at most as many as the labels, balanced over the
    predicted classes (measured: docs/options.md); `paper: true` is the paper's CEAL (no cap, no balance)."""

    threshold: float = Field(0.1, ge=0, le=1, description="normalised entropy below which an image is pseudo-labelled")
    decay: float = Field(0.00033, ge=0, description="threshold decrease per cycle")
    cap: float | None = Field(
        1.0, ge=0,
        description="the most pseudo-labels a selection gives the next training, as a multiple of that training's"
        " labeled set (the labeled images plus the batch just selected): at most ceil(cap x labels), the most"
        " confident (lowest normalised entropy, ties by pool position); 0 = none (Uncertainty); null = no cap."
        " The paper's CEAL: `paper: true`",
    )
    balanced: bool = Field(
        True,
        description="true = the kept pseudo-labels are balanced over their predicted classes: at most ceil(kept / C)"
        " per class, the most confident of each class first, filling up to the cap (or the confident count) without"
        " exceeding that quota; false = the most confident whatever their class (the paper)",
    )
    weight: float = Field(
        1.0, gt=0, le=1,
        description="loss weight of each CEAL pseudo-label in training, in (0, 1] (a true label weighs 1); 1 = the"
        " paper",
    )
    paper: bool = Field(
        False,
        description="true = the paper's CEAL (Wang et al. 2017 as Siméoni et al. run it): no cap, no balance, weight"
        " 1, in place of the defaults of cap, balanced and weight (other values of them alongside are an error)",
    )

    @model_validator(mode="before")
    @classmethod
    def _paper(cls, data: Any) -> Any:  # noqa: ANN401
        """paper: true resolves cap, balanced and weight to the paper's values (null, false, 1); other values of
        them alongside are refused."""
        if isinstance(data, dict) and data.get("paper") is True:
            paper = {"cap": None, "balanced": False, "weight": 1.0}
            clash = [k for k, v in paper.items() if k in data and data[k] != v]
            if clash:
                raise ValueError(f"active.ceal.paper: true is the paper's CEAL (no cap, no balance, weight 1);"
                                 f" remove active.ceal.{', active.ceal.'.join(clash)} or set paper: false")
            data = {**data, **paper}
        return data


class BaldParams(_Params):
    """BALD (Houlsby et al. 2011) with MC dropout (Gal et al. 2017)."""

    passes: int = Field(
        20, ge=2,
        description="stochastic forward passes over the unlabeled images with dropout on (batch norm in eval mode)"
        " whose predictions BALD's mutual information compares; also used by power sampling with base: bald",
    )


class PowerParams(_Params):
    """Power sampling (Kirsch et al. 2022, 'Stochastic batch acquisition'; baal's PowerBALD)."""

    base: Literal[POWER_BASES] = Field(  # type: ignore[valid-type]
        "bald",
        description="the score drawn from: bald (mutual information), uncertainty (entropy), margin (1 - (p1 - p2))"
        " or least-confidence (1 - p1); each >= 0",
    )
    exponent: float = Field(
        1.0, gt=0,
        description="images are drawn without replacement with probability proportional to score^exponent"
        " (Kirsch et al.'s beta; larger = closer to the top-b of the score)",
    )


# The scores class-balanced selection ranks by within each predicted class (probability-based; see
# scores.class_balanced_select).
CLASS_BALANCED_BASES: tuple[str, ...] = ("margin", "uncertainty", "least-confidence")


class ClassBalancedParams(_Params):
    """Class-balanced selection (after Aggarwal et al. 2020, 'Active learning for imbalanced datasets'): a base
    uncertainty score ranked within each predicted class, picked round robin over those classes."""

    base: Literal[CLASS_BALANCED_BASES] = Field(  # type: ignore[valid-type]
        "margin",
        description="the score ranked within each predicted class: margin (1 - (p1 - p2)), uncertainty (entropy) or"
        " least-confidence (1 - p1)",
    )


class ProbCoverParams(_Params):
    """ProbCover (Yehuda et al. 2022): greedy coverage by balls around the labeled and selected images."""

    delta: float | str = Field(
        0.75,
        description="ball radius: Euclidean distance between L2-normalised features (cosine similarity >= 1 -"
        " delta^2/2; 0.75 = 0.72), the unit of the paper, whose CIFAR-10 value on SimCLR features is 0.75; auto ="
        " the paper's rule at every selection: the largest delta whose balls stay 95% pure, purity measured"
        " against a k-means of the features into as many clusters as classes (the features change each cycle)",
    )

    @field_validator("delta", mode="before")
    @classmethod
    def _delta(cls, v: Any) -> float | str:
        """A number in (0, 2] or "auto" (one message for both)."""
        if v == "auto":
            return v
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 2:
            raise ValueError(f"active.probcover.delta: must be a number in (0, 2] or auto, got {ascii(v)[:80]}")
        return float(v)
