"""What a console script says when it was installed without its extra (`pip install .` alone)."""

from __future__ import annotations

# The third-party modules each extra brings; a missing one names its extra.
EXTRA_MODULES = {
    "runtime": (
        "fastapi",
        "uvicorn",
        "pydantic_settings",
        "numpy",
        "soundfile",
        "onnxruntime",
        "hibari",
        "prometheus_client",
        "mcp",
        "pynvml",
        "multipart",
        "starlette",
        "sse_starlette",
    ),
    "operator": ("kopf", "kubernetes", "httpx", "pydantic_settings", "tenacity", "httpx_sse"),
}


def missing_extra(err: ModuleNotFoundError, command: str, extra: str) -> str:
    """The message for `raise SystemExit(...)`: which extra to install; other missing modules as they are."""
    top = (err.name or "").split(".")[0]
    if top not in EXTRA_MODULES.get(extra, ()):
        raise err
    return (
        f"{command}: the '{extra}' extra is not installed (module {top!r} is missing); "
        f"install it with: pip install 'residency[{extra}]'"
    )
