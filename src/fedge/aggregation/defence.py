"""``[defence]``: server-pipeline stages that guard an aggregating node against poisoned updates.

- **Norm bounding** (Sun et al. 2019, "Can you really backdoor federated learning?"): every
  received update's delta (state − reference) is clipped to L2 norm ≤ ``norm_bound`` before
  aggregation, whatever the aggregator.
- **Validation-based detection** (the "overall failure" check of Lyu et al., as surveyed in
  seed 000 §security): each round the aggregator scores every participant's update on its
  validation split by leave-one-out — the validation loss of the sample-weighted mean of all
  kept updates against the mean without that participant. An update whose inclusion raises
  the loss by more than ``detection_tolerance`` *and* stands out from the round's cohort
  (its influence above the median by more than ``detection_z`` robust standard deviations,
  1.4826 · MAD: on non-IID data an honest device's update may also raise the loss a little)
  is a strike; a participant with
  ``detection_patience`` strikes among its last ``detection_window`` scored updates is
  flagged and its updates are excluded from then on. The score history lives on the stage
  (a plain attribute of the pipeline of the coordinator or edge server), so checkpoints
  carry it.

The robust aggregators themselves (median, trimmed mean, Krum, Multi-Krum, clipped mean) are
``federation.aggregator``; these stages run before them, at every tier in ``tiers``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import numpy as np
from pydantic import Field, model_validator

from fedge.aggregation.mean import weighted_mean
from fedge.aggregation.robust import clip_by_norm
from fedge.core.errors import ConfigError
from fedge.core.settings import Section
from fedge.core.update import ModelState, Update, apply_delta

MAD_TO_STD = 1.4826
"""The median absolute deviation times this estimates a normal distribution's std."""
DefenceTier = Literal["cloud", "edge"]
DEFENCE_TIERS: tuple[DefenceTier, ...] = ("cloud", "edge")


class DefenceSettings(Section):
    """Defences run by every aggregating node of the chosen tiers (before the aggregator)."""

    section: ClassVar[str] = "defence"

    norm_bound: float | None = Field(
        None, gt=0, description="clip every update's delta to this L2 norm; None: off"
    )
    detection: Literal["none", "validation"] = "none"
    detection_window: int = Field(3, ge=1, description="scored updates a decision looks back on")
    detection_patience: int = Field(2, ge=1, description="strikes in the window that flag")
    detection_tolerance: float = Field(
        0.0, ge=0, description="validation-loss increase an update may cause without a strike"
    )
    detection_z: float = Field(
        3.0, ge=0, description="robust z-score above the cohort's median influence for a strike"
    )
    tiers: list[DefenceTier] = Field(
        default_factory=lambda: list(DEFENCE_TIERS),
        description="aggregating tiers that run the defences: cloud, edge",
    )

    @model_validator(mode="after")
    def _patience_fits(self) -> DefenceSettings:
        if self.detection_patience > self.detection_window:
            allowed = f"<= defence.detection_window ({self.detection_window})"
            raise ConfigError("defence.detection_patience", self.detection_patience, allowed)
        return self

    @property
    def active(self) -> bool:
        return self.norm_bound is not None or self.detection != "none"


@dataclass
class NormBound:
    """Prepare stage: each update's delta clipped to L2 norm ≤ ``bound``."""

    bound: float

    def prepare(
        self, updates: list[Update], reference: ModelState, rng: np.random.Generator
    ) -> list[Update]:
        return clip_by_norm(updates, self.bound, reference)


def _mean_model(updates: Sequence[Update], reference: ModelState) -> ModelState:
    mean = weighted_mean([u.state for u in updates], [u.weight for u in updates])
    return mean if updates[0].kind == "state" else apply_delta(reference, mean)


@dataclass
class ValidationDetection:
    """Prepare stage: leave-one-out validation scoring that flags and excludes participants
    whose updates keep degrading the model (see the module docstring)."""

    loss: Callable[[ModelState], float]
    """Validation loss of a model on this aggregator's split."""
    window: int = 3
    patience: int = 2
    tolerance: float = 0.0
    z: float = 3.0
    strikes: dict[str, list[bool]] = field(default_factory=dict)
    """Per participant, whether each of its scored updates was a strike (oldest first)."""
    flagged: list[str] = field(default_factory=list)
    """Excluded participants, in the order they were flagged."""

    def prepare(
        self, updates: list[Update], reference: ModelState, rng: np.random.Generator
    ) -> list[Update]:
        kept = [u for u in updates if u.origin not in self.flagged]
        if len(kept) >= 2:
            self._score(kept, reference)
        return [u for u in kept if u.origin not in self.flagged]

    def _score(self, updates: list[Update], reference: ModelState) -> None:
        full = self.loss(_mean_model(updates, reference))
        influence = np.array(
            [
                full - self.loss(_mean_model(updates[:i] + updates[i + 1 :], reference))
                for i in range(len(updates))
            ]
        )
        middle = float(np.median(influence))
        spread = MAD_TO_STD * float(np.median(np.abs(influence - middle)))
        for update, value in zip(updates, influence, strict=True):
            strike = value > self.tolerance and value > middle + self.z * spread
            history = self.strikes.setdefault(update.origin, [])
            history.append(bool(strike))
            recent = history[-self.window :]
            if sum(recent) >= self.patience and update.origin not in self.flagged:
                self.flagged.append(update.origin)


def defence_stages(
    settings: DefenceSettings, tier: str, loss: Callable[[ModelState], float] | None
) -> list[NormBound | ValidationDetection]:
    """The prepare stages of an aggregator at ``tier`` (none when the tier is not defended);
    detection needs ``loss`` (a validation split at this aggregator)."""
    if tier not in settings.tiers:
        return []
    stages: list[NormBound | ValidationDetection] = []
    if settings.norm_bound is not None:
        stages.append(NormBound(settings.norm_bound))
    if settings.detection == "validation":
        if loss is None:
            allowed = "a validation split at every defended aggregator: data.validation_size > 0"
            raise ConfigError("defence.detection", settings.detection, allowed)
        stages.append(
            ValidationDetection(
                loss,
                settings.detection_window,
                settings.detection_patience,
                settings.detection_tolerance,
                settings.detection_z,
            )
        )
    return stages


def detection_scores(flagged: Sequence[str], attackers: Sequence[str]) -> dict[str, float]:
    """``detection_precision`` (flagged ids that are attackers; 1 when nothing is flagged:
    no false alarm) and ``detection_recall`` (attackers flagged; 1 without attackers)."""
    caught = len(set(flagged) & set(attackers))
    return {
        "flagged": float(len(set(flagged))),
        "detection_precision": caught / len(set(flagged)) if flagged else 1.0,
        "detection_recall": caught / len(set(attackers)) if attackers else 1.0,
    }


__all__ = [
    "DefenceSettings", "NormBound", "ValidationDetection", "defence_stages", "detection_scores",
]  # fmt: skip
