"""Leadership: the lease file store, the election (standby, takeover, renewal, self-fencing) and
the serving gate every RPC passes. The record's format is shared with the client
(:mod:`modeldconn._lease`)."""
