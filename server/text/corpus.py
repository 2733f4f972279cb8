"""Real English text of mixed lengths that ships with Python: the standard library's docstrings."""

import importlib
import inspect
import re

MODULES = ("os", "json", "asyncio", "collections", "pathlib", "subprocess", "threading", "logging",
           "argparse", "functools", "itertools", "socket", "email", "http.client", "unittest", "csv",
           "datetime", "decimal", "shutil", "tempfile", "zipfile", "sqlite3", "textwrap", "string")


def paragraphs() -> list[str]:
    """Every docstring paragraph of the modules above and their public members, whitespace folded."""
    found = []
    for name in MODULES:
        module = importlib.import_module(name)
        members = [module] + [value for key, value in sorted(vars(module).items()) if not key.startswith("_")]
        for member in members:
            doc = inspect.getdoc(member) if inspect.ismodule(member) or callable(member) else None
            for block in (doc or "").split("\n\n"):
                text = " ".join(block.split())
                if re.fullmatch(r"[A-Z][^>{}|=]*[.?!]", text) and len(text.split()) >= 4:
                    found.append(text)
    return list(dict.fromkeys(found))


def sentences(count: int = 200) -> list[str]:
    """`count` texts: mostly single sentences, every fifth a whole paragraph (tens to hundreds of
    tokens), in a fixed order."""
    texts = paragraphs()
    single = [s for p in texts for s in re.split(r"(?<=[.?!])\s+(?=[A-Z])", p) if len(s.split()) >= 4]
    long = sorted((p for p in texts if 40 < len(p.split()) <= 150), key=len)
    chosen, singles, longs = [], iter(dict.fromkeys(single)), iter(long[::-1][: count // 5])
    for index in range(count):
        text = next(longs, None) if index % 5 == 4 else None
        chosen.append(text or next(singles))
    return chosen
