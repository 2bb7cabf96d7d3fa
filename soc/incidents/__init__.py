"""Incidents: alerts about the same user, address or session gathered into one case to work."""
