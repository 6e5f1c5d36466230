"""SigDL: train, compress, retest on emulated embedded targets, deploy to the edge, and back.

    from sigdl import train, compress, retest, deploy, run   # see sigdl/api.py

The API is loaded on first use (PEP 562), so `import sigdl` imports no torch, service or
pipeline: the CLI's `--help` and the services' imports stay fast.
"""

from sigdl.core import __version__ as __version__

_API = frozenset(
    {
        "train",
        "compress",
        "retest",
        "deploy",
        "run",
        "TrainResult",
        "CompressResult",
        "RetestResult",
        "DeployResult",
    }
)


def __getattr__(name: str) -> object:
    if name in _API:
        from sigdl import api

        return getattr(api, name)
    raise AttributeError(f"module 'sigdl' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})
