"""The HTTP face of the runtime: `create_app(settings, engine=None)` builds the FastAPI app."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tts_runtime.server.app import create_app

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    # Lazy, so `tts_runtime.server.audio` can be used without building the app's imports.
    if name == "create_app":
        from tts_runtime.server.app import create_app

        return create_app
    raise AttributeError(name)
