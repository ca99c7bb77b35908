"""The caps a submitted spec must respect (GROKLAB_MAX_*), and how a validator finds them.

Passed to validation as its context: `ExperimentSpec.model_validate(data,
context=Limits.from_settings(settings))`. The caps on single fields are checked by the spec's
validators, the budgets on products of fields by service/contract/budgets.py.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import ValidationInfo

from service.contract.notify import parse_allowed_hosts

if TYPE_CHECKING:
    from service.access.auth import Principal
    from service.contract.settings import Settings


@dataclass(frozen=True)
class Limits:
    """The caps a submitted spec must respect (GROKLAB_MAX_*), passed to validation as its
    context: `ExperimentSpec.model_validate(data, context=Limits.from_settings(settings))`.

    Validating without a context applies no caps: a spec stored at submission was capped then,
    so the worker validates it again without reading the environment."""

    max_p: int | None = None
    max_steps: int | None = None
    max_params: int | None = None
    max_ensemble: int | None = None
    max_data_schedule_stages: int | None = None
    max_spec_bytes: int | None = None  # the spec as stored: JSON, presets resolved
    notify_allowed_hosts: tuple[str, ...] | None = None  # GROKLAB_NOTIFY_ALLOWED_HOSTS
    # Budgets on products of fields (service/contract/budgets.py); None: not checked, 0: none
    # allowed (a token's --max-compute 0). A setting of 0 means no limit: it becomes None here.
    max_compute: float | None = None
    max_checkpoints: int | None = None
    max_evals: int | None = None
    max_analyses: int | None = None
    max_checkpoint_bytes: int | None = None
    max_grad_filter_bytes: int | None = None
    max_analysis_bytes: int | None = None

    @classmethod
    def from_settings(cls, settings: Settings, principal: Principal | None = None) -> Limits:
        """The settings' caps; a token's override (principal.max_compute) replaces its setting."""
        def unless_zero(setting: float) -> float | None:
            return setting or None  # a setting of 0: no limit

        max_compute = unless_zero(settings.max_compute_per_job)
        if principal is not None and principal.max_compute is not None:
            max_compute = principal.max_compute  # 0: no compute at all
        return cls(
            max_p=settings.max_p,
            max_steps=settings.max_steps,
            max_params=settings.max_params,
            max_ensemble=settings.max_ensemble,
            max_data_schedule_stages=settings.max_data_schedule_stages,
            max_spec_bytes=settings.max_spec_bytes,
            notify_allowed_hosts=parse_allowed_hosts(settings.notify_allowed_hosts),
            max_compute=max_compute,
            max_checkpoints=unless_zero(settings.max_checkpoints_per_job),
            max_evals=unless_zero(settings.max_evals_per_job),
            max_analyses=unless_zero(settings.max_analyses_per_job),
            max_checkpoint_bytes=unless_zero(settings.max_checkpoint_bytes),
            max_grad_filter_bytes=unless_zero(settings.max_grad_filter_bytes),
            max_analysis_bytes=unless_zero(settings.max_analysis_bytes),
        )


NO_LIMITS = Limits()


def limits_in(info: ValidationInfo) -> Limits:
    """The caps a validator applies: the validation's context, or none without one."""
    return info.context if isinstance(info.context, Limits) else NO_LIMITS
