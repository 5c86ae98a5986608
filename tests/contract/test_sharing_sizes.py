"""Moving KV between sessions of different context sizes never costs a session (issue 22).

Sharing a prefix copies only what the receiver needs and can hold (``adopt_prefix``); parking
and restoring, and snapshots restored with another n_ctx, either continue exactly or fail with
a typed error. In every case the receiver's greedy tokens are a cold session's.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from daemons import Served, stop_served
from served_models import TINY as MODEL
from served_models import serve_tiny

import modeldconn

#: the reproduction's donor tape: 890 tokens
LONG = list(range(10, 500)) + [450] * 400
QUESTION = [7, 8, 9, 11, 12]


def _cold(client: modeldconn.Client, n_ctx: int, prompt: Sequence[int], n: int) -> list[int]:
    with client.open_session(MODEL, n_ctx=n_ctx) as cold:
        result = cold.ensure_prefix(list(prompt))
        assert result.shared == 0
        return list(cold.generate(max_tokens=n).token_ids)


@pytest.mark.parametrize(
    ("donor_ctx", "donor_tape", "receiver_ctx", "keep"),
    [
        (2048, LONG, 256, 20),  # the reproduction, exactly
        (2048, LONG, 256, 200),
        (256, LONG[:200], 2048, 150),  # a receiver larger than the donor
    ],
)
def test_shared_prefix_from_another_size(
    served: Served, donor_ctx: int, donor_tape: list[int], receiver_ctx: int, keep: int
) -> None:
    client = served.client
    before = client.status()
    with client.open_session(MODEL, n_ctx=donor_ctx) as donor:
        donor.ensure_prefix(donor_tape)
        with client.open_session(MODEL, n_ctx=receiver_ctx) as receiver:
            prefix = receiver.ensure_prefix(donor_tape[:keep])
            assert prefix.shared == prefix.reused == keep and prefix.prefilled == 0
            receiver.prefill_suffix(QUESTION)
            shared = list(receiver.generate(max_tokens=12).token_ids)
        # the donor is untouched and keeps serving its own tape
        assert donor.ensure_prefix(donor_tape).reused == len(donor_tape)
    after = client.status()
    assert after.prefix_shares == before.prefix_shares + 1
    assert shared == _cold(client, receiver_ctx, donor_tape[:keep] + QUESTION, 12)


def test_sharing_from_a_parked_donor_into_another_size_and_back(backend: str) -> None:
    """One live session at a time: the 2048-token donor is parked when the 256-token receiver
    opens, shares from its saved state, and is restored into its own size afterwards."""
    served = serve_tiny(backend, "--max-live-sessions", "1")
    try:
        client = served.client
        with client.open_session(MODEL, n_ctx=2048) as donor:
            donor.ensure_prefix(LONG[:500])
            with client.open_session(MODEL, n_ctx=256) as receiver:  # parks the donor
                prefix = receiver.ensure_prefix(LONG[:100])
                assert prefix.shared == 100
                shared = list(receiver.generate(suffix=QUESTION, max_tokens=10).token_ids)
            resumed = list(donor.generate(suffix=QUESTION, max_tokens=10).token_ids)  # restored
        assert client.status().parks >= 1
        assert shared == _cold(client, 256, LONG[:100] + QUESTION, 10)
        assert resumed == _cold(client, 2048, LONG[:500] + QUESTION, 10)
    finally:
        stop_served(served)


def test_snapshot_restored_with_another_n_ctx(served: Served) -> None:
    client = served.client
    with client.open_session(MODEL, n_ctx=2048) as original:
        original.ensure_prefix(LONG[:500])
        saved = original.snapshot()
        expected = list(original.generate(max_tokens=12).token_ids)
    with client.restore(saved.snapshot_id, MODEL, n_ctx=1024) as smaller:
        assert list(smaller.generate(max_tokens=12).token_ids) == expected
    with pytest.raises(modeldconn.InvalidArgument, match="n_ctx 256"):
        client.restore(saved.snapshot_id, MODEL, n_ctx=256)
    # the daemon and its sessions carry on
    assert _cold(client, 256, LONG[:30], 4) == _cold(client, 256, LONG[:30], 4)
