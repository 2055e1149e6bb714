from persona_icm.scoring.base import CallRecord, ClaimScorer, PromptKind, ScoreRequest

__all__ = ["CallRecord", "ClaimScorer", "PromptKind", "ScoreRequest"]
