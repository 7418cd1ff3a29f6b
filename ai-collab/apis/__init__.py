"""sedna.io/v1alpha1 CRDs (Sedna's field names), shipped as package data.

``load_sedna_crds()`` gives the six CustomResourceDefinitions (``deploy/crds/sedna.yaml`` is the
same file, for real clusters); the top layer hands them to the cloud, which installs them at
start. The ``Resource`` constants address their objects through ``orbiter.orchestration.client``.
"""

from __future__ import annotations

from typing import Any

from orbiter.orchestration.apis import load_crds
from orbiter.orchestration.client import Resource

__all__ = [
    "DATASETS",
    "FEDERATED_LEARNING_JOBS",
    "GROUP",
    "INCREMENTAL_LEARNING_JOBS",
    "JOINT_INFERENCE_SERVICES",
    "LIFELONG_LEARNING_JOBS",
    "MODELS",
    "SEDNA_CRDS",
    "VERSION",
    "load_sedna_crds",
]

SEDNA_CRDS = "sedna.yaml"  # the packaged manifest, beside this module
GROUP, VERSION = "sedna.io", "v1alpha1"

DATASETS = Resource(GROUP, VERSION, "datasets", "Dataset")
MODELS = Resource(GROUP, VERSION, "models", "Model")
JOINT_INFERENCE_SERVICES = Resource(
    GROUP, VERSION, "jointinferenceservices", "JointInferenceService"
)
FEDERATED_LEARNING_JOBS = Resource(GROUP, VERSION, "federatedlearningjobs", "FederatedLearningJob")
INCREMENTAL_LEARNING_JOBS = Resource(
    GROUP, VERSION, "incrementallearningjobs", "IncrementalLearningJob"
)
LIFELONG_LEARNING_JOBS = Resource(GROUP, VERSION, "lifelonglearningjobs", "LifelongLearningJob")


def load_sedna_crds() -> list[dict[str, Any]]:
    """The sedna.io/v1alpha1 CustomResourceDefinitions: Dataset, Model, JointInferenceService,
    FederatedLearningJob, IncrementalLearningJob, LifelongLearningJob."""
    return load_crds(SEDNA_CRDS, __name__)
