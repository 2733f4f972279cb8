"""The installed ortserve's version (0.0.0 when running from a checkout that is not installed)."""

from importlib.metadata import PackageNotFoundError, version


def server_version() -> str:
    try:
        return version("ortserve")
    except PackageNotFoundError:
        return "0.0.0"
