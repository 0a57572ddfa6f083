"""The session: what a connection does with what it receives, minus the socket (sans-I/O).

`book` validates one incremental book against the venue's sequence policy, `stream` holds one
symbol's state and row buffers, `dispatcher` routes a connection's records to its streams and turns
book outcomes into intents, `deadlines` says when an unanswered subscription or resync is due again.
Live connections and `recorder replay` drive the same objects.
"""
