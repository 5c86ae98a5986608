"""The daemon's one decode-options type: every wire field has a home, rules are enforced."""

from __future__ import annotations

import dataclasses
import math

import pytest

from modeld.backends._base import SamplingParams
from modeld.rpc._convert import decode_options_from_pb
from modeld.sessions._types import DecodeOptions
from modeldconn._errors import InvalidArgument
from modeldconn._pb import modeld_pb2 as pb


def test_every_wire_field_has_one_home() -> None:
    wire = {f.name for f in pb.DecodeConfig.DESCRIPTOR.fields}
    sampling = {f.name for f in dataclasses.fields(SamplingParams)}
    own = {f.name for f in dataclasses.fields(DecodeOptions)} - {"sampling"}
    assert not sampling & own
    assert wire == sampling | own


def test_unset_fields_take_the_defaults() -> None:
    assert decode_options_from_pb(pb.DecodeConfig()) == DecodeOptions()
    assert DecodeOptions().sampling.greedy and DecodeOptions().max_tokens == 256


def test_set_fields_cross_by_name() -> None:
    config = pb.DecodeConfig(
        max_tokens=7,
        temperature=0.5,
        top_k=3,
        top_p=0.5,
        min_p=0.25,
        repeat_penalty=1.5,
        repeat_last_n=-1,
        seed=2**40,
        stop=["\n", "END"],
        ignore_eos=True,
        stop_token_ids=[5, 6],
    )
    options = decode_options_from_pb(config)
    assert options.max_tokens == 7 and options.stop == ("\n", "END")
    assert options.stop_token_ids == frozenset({5, 6})
    assert options.sampling == SamplingParams(0.5, 3, 0.5, 0.25, 1.5, -1, 2**40, True)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("temperature", math.nan),
        ("temperature", math.inf),
        ("top_k", -1),
        ("top_p", 0.0),
        ("top_p", 1.5),
        ("min_p", -0.1),
        ("repeat_penalty", 0.0),
        ("repeat_last_n", -2),
        ("max_tokens", 0),
        ("stop", ("",)),
        ("stop", ("x",) * 17),
        ("stop_token_ids", (-1,)),
        ("no_such_option", 1),
    ],
)
def test_out_of_range_values_are_refused_naming_the_field(name: str, value: object) -> None:
    with pytest.raises(InvalidArgument) as caught:
        DecodeOptions.from_fields({name: value})
    assert caught.value.metadata["field"] == name
