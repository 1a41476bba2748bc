"""How much a model's latency varies between repeats at one operating point, from its profile.

Why: the governor's noise margin is fitted on the frames it measures, and until it has enough of
them (``min_samples``) it needs a prior. A fixed 10% cost the SD888's language model 1.14x the
target oracle's energy in those first frames at a tight deadline, where its measured 99% noise
quantile is 2%. The profile already repeated every point: the spread of those repeats around their
point's mean (in log, pooled over points, one degree of freedom lost per point) is that prior.
"""

from __future__ import annotations

import math
from collections import defaultdict

from pydantic import BaseModel, Field

from estimator.profile import Profile


class RepeatNoise(BaseModel):
    """Pooled log-latency standard deviation of repeats at one point, and its degrees of freedom."""

    log_sd: float = Field(ge=0.0, allow_inf_nan=False)
    dof: int = Field(ge=1)


def repeat_noise(profile: Profile) -> RepeatNoise | None:
    """None when no point was measured twice (nothing to pool)."""
    groups: dict[tuple, list[float]] = defaultdict(list)
    for run in profile.runs:
        groups[(run.cpu_khz, run.gpu_hz, run.mem_hz, run.context_len)].append(math.log(run.latency_ns))
    squares, dof = 0.0, 0
    for logs in groups.values():
        if len(logs) > 1:
            mean = sum(logs) / len(logs)
            squares += sum((v - mean) ** 2 for v in logs)
            dof += len(logs) - 1
    if dof == 0:
        return None
    return RepeatNoise(log_sd=math.sqrt(squares / dof), dof=dof)
