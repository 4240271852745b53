"""The FineTuneJob API: schema (v1alpha1), CRD generation and file validation."""

from kubetune.api.v1alpha1 import API_VERSION, GROUP, KIND, PLURAL, VERSION, FineTuneJob, FineTuneJobSpec

__all__ = ["API_VERSION", "GROUP", "KIND", "PLURAL", "VERSION", "FineTuneJob", "FineTuneJobSpec"]
