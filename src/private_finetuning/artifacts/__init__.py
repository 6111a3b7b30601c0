"""The artifact contract: versioned, checksummed folders on named volumes, and which one is promoted.

- ``store``: publishing (:class:`~.store.ArtifactWriter`), verifying and waiting for artifacts, the
  names of every stage's outputs, retention;
- ``promotion``: the pointer to the adapter the server may serve, with its history and rollback.
"""
