"""The ICM search, one module per part:

- search.py: Algorithms 1-2 (seeding, the annealed Metropolis loop, ConsistencyFix), run_icm, schemas
- state.py: the labelling and the pool of labelled claims
- energy.py: U = alpha * P - I
- engine.py: how leave-one-out scores are computed (fast memoised engine, reference engine)
- checkpoint.py: atomic, checksummed JSON checkpoints
"""

from persona_icm.icm.search import (
    ALGORITHM_VERSION,
    LABELS_SCHEMA,
    TRACE_SCHEMA,
    TRAJECTORY_COLUMNS,
    IcmCounters,
    IcmProgress,
    IcmResult,
    IcmSearch,
    acceptance_probability,
    default_run_key,
    label_of,
    metropolis_accept,
    run_icm,
    temperature,
)

__all__ = [
    "ALGORITHM_VERSION", "LABELS_SCHEMA", "TRACE_SCHEMA", "TRAJECTORY_COLUMNS", "IcmCounters", "IcmProgress",
    "IcmResult", "IcmSearch", "acceptance_probability", "default_run_key", "label_of", "metropolis_accept", "run_icm", "temperature",
]
