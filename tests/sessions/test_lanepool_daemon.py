"""The lane pool on a real daemon (llama, the tiny model) under a memory limit with room for
2,048 tokens of KV: a closed session's pooled context counts as free (Describe's fit does not
shrink), a session of another size that fits only once it is freed opens, and every reused or
fresh context continues a prompt with the same greedy tokens."""

from __future__ import annotations

import hashlib

from daemons import stop_served
from served_models import TINY, TINY_FILE, serve_tiny

import modeldconn
from modeld.models._facts import facts_from_gguf

ROOM = 2048  #: tokens of KV the limit leaves beside the weights
PROMPT = "User: tell me about the harbour town.\nAssistant:"


def _greedy(client: modeldconn.Client, n_ctx: int) -> tuple[int, ...]:
    with client.open_session(TINY, n_ctx=n_ctx) as session:
        session.ensure_prefix(PROMPT)
        return session.generate(max_tokens=12, ignore_eos=True).token_ids


def test_a_pooled_context_is_free_for_admission_and_reused_unchanged() -> None:
    digest = hashlib.sha256(TINY_FILE.read_bytes()).hexdigest()
    facts = facts_from_gguf(TINY_FILE, name=TINY, digest=digest)
    limit = facts.file_bytes + ROOM * facts.kv_bytes_per_token
    served = serve_tiny("llama", "--memory-limit", str(limit))
    try:
        client = served.client
        assert client.describe(TINY).capacity.memory_fit_context == ROOM
        first = _greedy(client, 512)  # its context is pooled when it closes
        assert client.describe(TINY).capacity.memory_fit_context == ROOM
        assert _greedy(client, 512) == first  # the pooled context, reused
        # all of the room: fits only once the pooled 512-token context is freed
        assert _greedy(client, ROOM) == first
        assert _greedy(client, ROOM) == first  # and this one's context, reused in turn
        assert _greedy(client, 512) == first  # a new context again
        assert client.describe(TINY).capacity.memory_fit_context == ROOM
    finally:
        stop_served(served)
