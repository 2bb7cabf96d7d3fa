"""Every table of the product, imported so that Alembic sees one complete metadata."""

from __future__ import annotations

from core.db import metadata
from gateway import models as gateway_models
from idp.clients import models as client_models
from idp.directory import models as directory_models
from mfa import models as mfa_models
from onegate.admin import models as admin_models
from policy import models as policy_models
from soc.alerts import models as alert_models
from soc.drills import models as drill_models
from soc.incidents import models as incident_models
from soc.response import models as response_models

__all__ = [
    "admin_models",
    "alert_models",
    "client_models",
    "directory_models",
    "drill_models",
    "gateway_models",
    "incident_models",
    "metadata",
    "mfa_models",
    "policy_models",
    "response_models",
]
