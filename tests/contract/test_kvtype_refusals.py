"""KV cache types refused, typed, before anything is opened (issue 18, part 4), on both backends
and the tiny fixture: an unknown type names the field; the tiny qwen2's head dim (16) is not a
whole q8_0 / q4_0 block (32) on llama; openvino caches f16 only."""

from __future__ import annotations

import pytest
from daemons import Served
from served_models import TINY

import modeldconn


def test_the_default_is_f16_and_the_reply_says_so(client: modeldconn.Client) -> None:
    with (
        client.open_session(TINY) as default,
        client.open_session(TINY, kv_cache_type="f16") as asked,
    ):
        assert default.info.kv_cache_type == "f16"
        assert asked.info.kv_cache_type == "f16"
        asked.ensure_prefix("An f16 session works as ever.")
        assert len(asked.generate(max_tokens=3, ignore_eos=True).token_ids) == 3


def test_an_unknown_type_is_invalid_argument_naming_the_field(client: modeldconn.Client) -> None:
    before = client.status().sessions_open
    with pytest.raises(modeldconn.InvalidArgument) as refused:
        client.open_session(TINY, kv_cache_type="q5_1")
    assert refused.value.metadata["field"] == "config.kv_cache_type"
    assert "q5_1" in refused.value.message and "q8_0" in refused.value.message
    assert client.status().sessions_open == before


@pytest.mark.parametrize("kv_type", ["q8_0", "q4_0"])
def test_a_quantized_type_is_refused_with_the_reason(served: Served, kv_type: str) -> None:
    client = served.client
    before = client.status().sessions_open
    with pytest.raises(modeldconn.UnsupportedFeature) as refused:
        client.open_session(TINY, kv_cache_type=kv_type)
    assert refused.value.metadata["feature"] == "kv_cache_type"
    assert refused.value.metadata["kv_cache_type"] == kv_type
    if served.backend == "llama":  # the model cannot: its heads are 16 wide, a block is 32
        assert "head dim 16" in refused.value.message and "32" in refused.value.message
    else:  # the backend cannot
        assert "openvino" in refused.value.message and "f16 only" in refused.value.message
    assert client.status().sessions_open == before
