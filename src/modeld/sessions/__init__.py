"""Sessions: the RPC verbs over a session table, model loading and capacity, the prefix index,
the generation loop, inputs, parking and snapshots. Engine-side state is written on the engine
thread only (see :mod:`modeld.engine`)."""
