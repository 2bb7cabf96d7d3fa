"""Access policies: YAML rules compiled into an in-process evaluator, with Cedar as the reference.

So far: :mod:`policy.normalize`, the canonical request path every rule is matched against (and
the gateway forwards). See docs/policy.md.
"""

from policy.normalize import MAX_PATH_BYTES, CanonicalPath, PathReason, PathRejected, canonical_path

__all__ = ["MAX_PATH_BYTES", "CanonicalPath", "PathReason", "PathRejected", "canonical_path"]
