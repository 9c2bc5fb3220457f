"""Whole studies (MISSION.md): the registry and protocol live in ``studies.base``; each study is one module."""

from ticketlab.studies.base import STUDIES, Study, load_study, run_study, study_config

__all__ = ["STUDIES", "Study", "load_study", "run_study", "study_config"]
