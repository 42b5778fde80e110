"""Task catalogs, cohort catalogs and the synthetic cohort generator."""

from orthodiff.catalogs.tasks import PLANES, ehr_schema, get_task, joints, structures, tasks

__all__ = ["PLANES", "ehr_schema", "get_task", "joints", "structures", "tasks"]
