"""Which task failures are worth a retry."""

from __future__ import annotations

from typing import Any

from persona_icm import backends


def not_worth_retrying() -> tuple[type[BaseException], ...]:
    """Failures that waiting cannot fix: a bad input, a missing file or package, processed
    log-probs, and every error a registered backend lists as such (persona_icm/backends.py;
    openai: no log-probs, a candidate outside the top-k, a model not served, a 4xx answer)."""
    from persona_icm.preflight import InputError
    from persona_icm.scoring.base import ProcessedLogprobs

    return (InputError, ProcessedLogprobs, FileNotFoundError, ModuleNotFoundError, *backends.non_retryable_errors())


def retry_helps(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect retry_condition_fn: retry unless the failure is one that waiting cannot fix."""
    try:
        state.result()
    except not_worth_retrying():
        return False
    except Exception:
        return True
    return True
