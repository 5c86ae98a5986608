"""The engine thread: the scheduler that runs every engine call in FIFO turns, and the batching
of several sessions' decode steps into one engine call."""
