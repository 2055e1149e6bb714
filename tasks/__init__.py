"""Thin Prefect tasks over persona_icm: caching, retries, tags, logging, artifacts."""
