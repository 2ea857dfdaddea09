"""A stand-in for the daemon behind tokend's servers (``socket_app``, ``metrics_app``,
``PeerGate``): the default server config, fixed probe answers, no daemon and no upstream."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from tokend.config import ServerConfig
from tokend.metrics import Metrics


class StubHub:
    """Every peer admitted; ``healthy`` and ``ready`` answer ``up``, ``/v1/status`` lists
    ``targets``, and ``keepers`` serve the tokens."""

    def __init__(self, up: bool = True, keepers: dict[str, Any] | None = None,
                 targets: list[dict[str, Any]] | None = None) -> None:
        self.config: Any = SimpleNamespace(server=ServerConfig(), default_target="t1")
        self.keepers: Any = keepers or {}
        self.metrics = Metrics()
        self.up = up
        self.targets = targets or []

    def healthy(self, now: float) -> bool:
        return self.up

    def ready(self, now: float, target: str | None) -> bool:
        return self.up

    def status(self) -> dict[str, Any]:
        return {"targets": self.targets}
