"""Every error serving/ raises on purpose.

    ServingError              base
    ├── BundleRejectedError   a bundle fails verification or cannot be loaded for serving
    ├── ModelCallError        a model deployment failed to answer (error, timeout, injected fault)
    ├── AdminAuthError        an admin call has no, or the wrong, bearer token, or none is configured
    └── PairUnknownError      the rollout controller has not yet heard which bundles the models serve

Messages carry the numbers and names: "bundle 4eda7f96f69e: model.onnx does not match its
manifest hash". They never carry a token or a user's input.
"""

from __future__ import annotations


class ServingError(Exception):
    """Base of every deliberate error in serving/."""


class BundleRejectedError(ServingError):
    """The bundle cannot be served: files differ from the manifest, or the model does not load."""


class ModelCallError(ServingError):
    """A model deployment did not answer: it raised, timed out, or a fault was injected."""


class AdminAuthError(ServingError):
    """An admin call is refused: no token configured, header missing, or token wrong."""


class PairUnknownError(ServingError):
    """No rollout yet: the controller has not heard which bundles teacher and student serve."""
