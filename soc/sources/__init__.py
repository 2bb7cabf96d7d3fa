"""Where ingested events come from besides the in-process bus: a Redis stream (the gateway's and
the IdP's events when they run apart from the SOC), an authenticated HTTP bulk endpoint (NDJSON)
and syslog (RFC 5424 over TCP). Each hands documents to :meth:`soc.ingest.Ingest.accept` and
acknowledges only after it returned, that is once they are on disk."""

from __future__ import annotations

from soc.sources.common import Acceptor
from soc.sources.http_bulk import BulkIngest, SourceKeys
from soc.sources.streams import StreamSource, default_consumer_name
from soc.sources.syslog import SyslogServer

__all__ = ["Acceptor", "BulkIngest", "SourceKeys", "StreamSource", "SyslogServer", "default_consumer_name"]
