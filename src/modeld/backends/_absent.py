"""A backend this build does not implement yet: it reports no capabilities and loads nothing."""

from __future__ import annotations

from modeldconn._errors import UnsupportedFeature

from ._base import Capabilities, EngineModel
from ._facts import ModelSpec

__all__ = ["AbsentBackend"]


class AbsentBackend:
    capabilities = Capabilities(
        token_level_truncation=False,
        kv_copy_between_sessions=False,
        native_state_snapshot=False,
        batched_decode=False,
        chat_template=False,
        grammar=False,
    )

    def __init__(self, name: str) -> None:
        self.name = name
        self.fingerprint: dict[str, object] = {"backend": name}

    def load(self, spec: ModelSpec) -> EngineModel:
        raise UnsupportedFeature(
            f"the {self.name} backend cannot load models in this build yet", backend=self.name
        )
