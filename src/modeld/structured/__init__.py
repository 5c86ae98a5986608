"""Structured output: response formats and tool calls enforced by a token mask (llguidance),
applied to the logits before any sampler step on every backend."""

from modeld.structured._compiler import CompiledGrammar, GrammarCompiler
from modeld.structured._constraint import TokenConstraint
from modeld.structured._formats import ResponseFormat
from modeld.structured._plan import DecodeConstraints, prepare_constraints

__all__ = [
    "CompiledGrammar",
    "DecodeConstraints",
    "GrammarCompiler",
    "ResponseFormat",
    "TokenConstraint",
    "prepare_constraints",
]
