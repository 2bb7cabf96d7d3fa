"""Detections: rules that watch ingested events and raise alerts (streaming and scheduled)."""
