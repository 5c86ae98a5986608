"""Sessions through modeldconn, over the daemon's real Unix socket, on each backend."""

from __future__ import annotations

import pytest
from daemons import Served
from served_models import TINY as MODEL

import modeldconn
from modeldconn import Client

GREEDY = {"max_tokens": 24, "temperature": 0.0}
#: llama-cpp-python's own Llama.generate, greedy, on the fixture (scripts/make_tiny_qwen2.py)
EXPECTED_GREEDY = (379, 285, 419, 379, 396, 30, 508, 483, 30, 508, 483, 11)

PROMPTS = [
    (
        "The history of the city of Rome begins with a small settlement on the Tiber. " * 6,
        " In the centuries that followed,",
    ),
    ('def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n', "    if n < 2:"),
    ("A recipe for bread. Ingredients: flour, water, salt and yeast. Steps:", " First,"),
]


@pytest.mark.parametrize(("prefix", "suffix"), PROMPTS)
def test_warm_equals_cold(client: Client, prefix: str, suffix: str) -> None:
    with client.open_session(MODEL) as warm:
        prefix_ids = warm.tokenize(prefix, add_special=True)
        suffix_ids = warm.tokenize(suffix)
        # an earlier turn leaves the prefix resident, followed by other tokens
        warm.ensure_prefix(prefix_ids)
        warm.prefill_suffix(" Something else entirely.")
        warm.generate(max_tokens=8)
        again = warm.ensure_prefix(prefix_ids)
        assert (again.reused, again.prefilled) == (len(prefix_ids), 0)
        assert again.resident == len(prefix_ids) and again.dropped > 0
        warm.prefill_suffix(suffix_ids)
        warm_out = warm.generate(**GREEDY)
        assert warm_out.final.reused_tokens == len(prefix_ids)
        assert warm_out.final.prompt_tokens == len(prefix_ids) + len(suffix_ids)

    # Cold: a fresh session fed P+S with the same calls. (CPU kernels are not batch-size
    # invariant, so P+S computed as one batch may differ in the last bits.)
    with client.open_session(MODEL) as cold:
        first = cold.ensure_prefix(prefix_ids)
        assert (first.reused, first.prefilled) == (0, len(prefix_ids))
        cold.prefill_suffix(suffix_ids)
        cold_out = cold.generate(**GREEDY)
    assert cold_out.token_ids == warm_out.token_ids
    assert cold_out.text == warm_out.text and len(cold_out.token_ids) == GREEDY["max_tokens"]


def test_multi_turn_reuses_prefix_suffix_and_generated_tokens(client: Client) -> None:
    with client.open_session(MODEL) as session:
        p = session.tokenize("Notes from a long journey across the mountains.\n", add_special=True)
        s1 = session.tokenize("Day 1:")
        session.ensure_prefix(p)
        session.prefill_suffix(s1)
        turn1 = session.generate(max_tokens=12, ignore_eos=True)
        g1 = list(turn1.token_ids)
        s2 = session.tokenize("\nDay 2:")
        history = p + s1 + g1 + s2
        turn2_prefix = session.ensure_prefix(history)
        # everything computed so far is reused; only the last sampled token (never fed back
        # through the model) and the new text are computed
        assert turn2_prefix.reused == len(p + s1 + g1) - 1
        assert turn2_prefix.prefilled == 1 + len(s2)
        assert turn2_prefix.dropped == 0
        assert turn2_prefix.resident == len(history)
        turn2 = session.generate(**GREEDY)
        assert turn2.final.reused_tokens == turn2_prefix.reused
    # a fresh session replaying the same calls: reuse changed nothing
    with client.open_session(MODEL) as cold:
        cold.ensure_prefix(p)
        cold.prefill_suffix(s1)
        assert cold.generate(max_tokens=12, ignore_eos=True).token_ids == turn1.token_ids
        cold.ensure_prefix(history)
        assert cold.generate(**GREEDY).token_ids == turn2.token_ids


def test_decode_streams_text_and_ids_and_reports_usage(client: Client) -> None:
    with client.open_session(MODEL) as session:
        session.ensure_prefix("Once upon a time,")
        chunks = list(session.decode(max_tokens=10, ignore_eos=True))
    final = chunks[-1].final
    assert final is not None and all(c.final is None for c in chunks[:-1])
    assert sum(len(c.token_ids) for c in chunks) == 10 == final.completion_tokens
    assert final.stop_reason == "max_tokens" and final.prompt_tokens > 0
    assert final.ttft_ms > 0 and final.decode_ms > 0 and final.tokens_per_s > 0
    assert final.resident == final.prompt_tokens + 9  # the last sampled token is not computed yet
    assert "".join(c.text for c in chunks).strip()


def test_stop_strings_end_the_text_before_the_stop(client: Client) -> None:
    with client.open_session(MODEL) as session:
        session.ensure_prefix(PROMPTS[0][0] + PROMPTS[0][1])
        free = session.generate(max_tokens=24)
        stop = free.text.split()[3]  # a word the model is known to produce
        session.ensure_prefix(PROMPTS[0][0] + PROMPTS[0][1])
        stopped = session.generate(max_tokens=24, stop=[stop])
    assert stopped.final.stop_reason == "stop" and stopped.final.stop_string == stop
    assert stop not in stopped.text
    assert free.text.startswith(stopped.text)


def test_sampling_is_native_and_seeded(client: Client) -> None:
    config = {
        "max_tokens": 16,
        "temperature": 0.9,
        "top_k": 40,
        "top_p": 0.9,
        "min_p": 0.02,
        "repeat_penalty": 1.1,
        "seed": 1234,
        "ignore_eos": True,
    }
    with client.open_session(MODEL) as session:
        outs = []
        for _ in range(2):
            session.ensure_prefix("My favourite colour is")
            outs.append(session.generate(**config).token_ids)
        session.ensure_prefix("My favourite colour is")
        other_seed = session.generate(**{**config, "seed": 99}).token_ids
    assert outs[0] == outs[1]
    assert other_seed != outs[0]


def test_cancelling_mid_stream_leaves_the_session_consistent(client: Client) -> None:
    prompt = PROMPTS[2][0]
    with client.open_session(MODEL) as session:
        session.ensure_prefix(prompt)
        stream = session.decode(max_tokens=200, ignore_eos=True)
        seen = [next(stream) for _ in range(3)]
        stream.close()  # hangs up mid-Decode
        assert all(c.token_ids for c in seen)
        # the session serves the next turn, and the numbers add up
        result = session.ensure_prefix(prompt)
        assert result.reused == result.prefix_tokens and result.prefilled == 0
        again = session.generate(**GREEDY)
    with client.open_session(MODEL) as cold:
        cold.ensure_prefix(prompt)
        assert cold.generate(**GREEDY).token_ids == again.token_ids


def test_a_new_call_right_after_hanging_up_is_not_refused(client: Client) -> None:
    with client.open_session(MODEL) as session:
        session.ensure_prefix(PROMPTS[0][0])
        for _ in range(5):
            stream = session.decode(max_tokens=50, ignore_eos=True)
            assert next(stream).token_ids
            stream.close()  # and call again at once: the daemon is still unwinding the first
            assert session.ensure_prefix(PROMPTS[0][0]).prefilled == 0
            # the first chunk only, the iterator dropped, the next Decode at once
            for _ in range(3):
                assert next(iter(session.decode(max_tokens=1))).token_ids


def test_chat_messages_use_the_models_template(client: Client) -> None:
    with client.open_session(MODEL) as session:
        result = session.ensure_prefix(
            [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
        )
        assert session.info.facts.chat_template_source == "model"
    rendered = (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    expected = client.tokenize(MODEL, rendered, add_special=True)
    assert result.prefix_tokens == len(expected)
    assert client.tokenize(MODEL, "<|im_start|>") == [1]  # special tokens parse as one id


def test_tokenize_detokenize_round_trip(client: Client) -> None:
    text = "Hello, world! Ünïcödé and emoji 🚀 survive."
    ids = client.tokenize(MODEL, text)
    assert ids and client.detokenize(MODEL, ids) == text
    # this model adds no BOS (add_bos_token false): special tokens change nothing here
    assert client.tokenize(MODEL, text, add_special=True) == ids


def test_both_backends_agree_on_the_same_file(served: Served, backend: str) -> None:
    """Token ids and greedy tokens are the engine's, not the backend's: the GGUF decides them."""
    client = served.client
    ids = client.tokenize(MODEL, "The quick brown fox jumps over the lazy dog.")
    assert ids == [292, 463, 456, 462, 488, 398, 264, 470, 486, 16]
    with client.open_session(MODEL) as session:
        session.ensure_prefix(ids)
        out = session.generate(max_tokens=12)
    assert out.token_ids == EXPECTED_GREEDY, backend


def test_capabilities_are_pinned(client: Client) -> None:
    with client.open_session(MODEL) as session:
        caps = session.info.capabilities
    # both drive the engine's KV directly: llama.cpp's per-sequence state, OpenVINO's paged
    # KV blocks; both batch several sessions' decode steps (how many rows at once: Status,
    # tested in test_batched_decode.py). Both sample from a logits row the daemon can mask
    # (grammars), bias and score (logprobs); tools and thinking are rendering and parsing
    # above the engine (test_structured_tiny.py, tests/models/test_structured_output.py).
    assert caps == modeldconn.Capabilities(
        token_level_truncation=True,
        kv_copy_between_sessions=True,
        native_state_snapshot=True,
        batched_decode=True,
        chat_template=True,
        grammar=True,
        tools=True,
        thinking=True,
        logprobs=True,
        logit_bias=True,
    )


def test_streamed_text_is_exactly_the_final_text(client: Client) -> None:
    with client.open_session(MODEL) as session:
        session.ensure_prefix("User: tell me a story.\nAssistant:")
        chunks = list(session.decode(max_tokens=40, ignore_eos=True))
        streamed = "".join(c.text for c in chunks)
        ids = [t for c in chunks for t in c.token_ids]
        assert streamed == session.detokenize(ids)


async def test_async_client_has_the_same_surface(served: object) -> None:
    root = served.root  # type: ignore[attr-defined]
    async with modeldconn.AsyncClient(data_root=root) as client:
        session = await client.open_session(MODEL)
        async with session:
            await session.ensure_prefix(PROMPTS[1][0])
            await session.prefill_suffix(PROMPTS[1][1])
            chunks = [c async for c in session.decode(**GREEDY)]
        assert chunks[-1].final is not None
    with modeldconn.Client(data_root=root) as sync, sync.open_session(MODEL) as twin:
        twin.ensure_prefix(PROMPTS[1][0])
        twin.prefill_suffix(PROMPTS[1][1])
        expected = twin.generate(**GREEDY).token_ids
    assert tuple(t for c in chunks for t in c.token_ids) == expected


def test_stop_token_ids_end_generation_with_the_id_but_not_its_text(client: Client) -> None:
    with client.open_session(MODEL) as session:
        session.ensure_prefix("The quick brown fox jumps over the lazy dog.")
        free = session.generate(max_tokens=12)
        target = free.token_ids[4]
        first = free.token_ids.index(target)
        session.ensure_prefix("The quick brown fox jumps over the lazy dog.")
        stopped = session.generate(max_tokens=12, stop_token_ids=[target, 511])
        text_before = session.detokenize(free.token_ids[:first]) if first else ""
    assert stopped.final.stop_reason == "stop_token" and stopped.final.stop_token == target
    assert stopped.token_ids == free.token_ids[: first + 1]  # the id is streamed, as EOS is
    assert stopped.text == text_before  # its text is not
    assert free.final.stop_token is None


def test_stop_token_ids_out_of_range_are_refused(client: Client) -> None:
    with client.open_session(MODEL) as session:
        session.ensure_prefix("Hello")
        with pytest.raises(modeldconn.InvalidArgument, match="outside the vocabulary"):
            session.generate(max_tokens=4, stop_token_ids=[512])
        with pytest.raises(modeldconn.InvalidArgument, match="stop_token_ids"):
            session.generate(max_tokens=4, stop_token_ids=[-1])
        assert session.generate(max_tokens=4).final.completion_tokens == 4  # still serves
