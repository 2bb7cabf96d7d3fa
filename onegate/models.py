"""Every table of the product, imported so that Alembic sees one complete metadata."""

from __future__ import annotations

from core.db import metadata
from idp.clients import models as client_models
from idp.directory import models as directory_models
from mfa import models as mfa_models
from policy import models as policy_models

__all__ = ["client_models", "directory_models", "metadata", "mfa_models", "policy_models"]
