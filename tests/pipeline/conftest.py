"""Fixtures of the whole-pipeline tests."""

from pipeline_fixture import default_pipeline

__all__ = ["default_pipeline"]
