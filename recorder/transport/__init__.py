"""Network plumbing shared by every venue: REST (`http`), pacing (`limits`), the websocket
connection that carries a session's intents out (`connection`)."""

from __future__ import annotations

from recorder.transport.http import USER_AGENT, get_json, new_session, retry_after_seconds
from recorder.transport.limits import SendLimiter, backoff_delay

__all__ = ["USER_AGENT", "SendLimiter", "backoff_delay", "get_json", "new_session", "retry_after_seconds"]
