"""``kdkit cache``: the soft-label store's command (in :data:`kdkit.registry.COMMANDS`)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from kdkit.data.sources import resolve_dataset
from kdkit.errors import ConfigError
from kdkit.recipe import load_recipe
from kdkit.registry import COMMANDS
from kdkit.softlabels.cache import build_cache
from kdkit.softlabels.crossfit import cross_fit as cross_fit_store
from kdkit.softlabels.importer import import_logits


@COMMANDS.register("cache")
def cache(
    recipe: Annotated[str, typer.Argument(help="distillation recipe (YAML path or bundled name) with teachers")],
    views: Annotated[int, typer.Option("--views", "-V", help="augmented views per training sample; epoch e of "
                                       "`distill` replays view e mod V")] = 1,
    topk: Annotated[int, typer.Option("--topk", "-k", help="teacher logits kept per (sample, view)")] = 10,
    out: Annotated[str | None, typer.Option("--out", "-o", help="store directory (default: the recipe's "
                                               "soft_labels, else OUTPUT_DIR/NAME-softlabels)")] = None,
    chunk_size: Annotated[int, typer.Option(help="samples per resumable chunk")] = 2048,
    batch_size: Annotated[int | None, typer.Option(help="teacher batch size (default: "
                                                      "data.eval_batch_size)")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace an existing store made for something "
                                            "else")] = False,
    set_: Annotated[list[str] | None, typer.Option("--set", "-s", help="override a recipe field: "
                                                      "key.path=value (repeatable)")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")] = False,
    from_logits: Annotated[str | None, typer.Option("--from-logits", help="import a teacher that exists only as "
                                                    "logits: (N, K) rows in dataset order, or with an 'index' array "
                                                    "(.npy, .npz, .safetensors, .csv); see docs/teachers.md")] = None,
    cross_fit: Annotated[list[str] | None, typer.Option("--cross-fit", help="a teacher run trained on part of the "
                                                        "training images (repeat, 2 or more): each image's soft label "
                                                        "comes from the teacher(s) that never trained on it; see "
                                                        "docs/softlabels.md")] = None,
) -> None:
    """Run the teacher(s) once over V augmented views of every training sample and store the top-k logits.

    An interrupted run resumes when the same command is given again. Then distil with `soft_labels: PATH` in the
    recipe: the student trains without any teacher forward. With --from-logits FILE no teacher runs at all: the
    file's logits (another framework, an API) are checked against the recipe's dataset and stored. With
    --cross-fit RUN (twice or more) each training image's target is out-of-fold: from the teacher(s) that never
    trained on it.
    """
    r = load_recipe(recipe, set_)
    own = resolve_dataset(r.data.name)[0].meta.get("cache_command")
    if own is not None and from_logits is None:  # the data caches its own way (language models: kdkit lm-cache)
        COMMANDS.get(own)(recipe, k=topk, out=out, batch_size=batch_size, overwrite=overwrite, set_=set_)
        return
    if cross_fit:
        if from_logits is not None or views != 1:
            raise ConfigError("--cross-fit: the teachers' logits are of the plain images, one view; drop --from-logits "
                              "and --views")
        cross_fit_store(r, cross_fit, topk=topk, out=out, overwrite=overwrite, quiet=quiet, console=Console())
        return
    if from_logits is not None:
        if views != 1:
            raise ConfigError("--from-logits: imported logits are of the plain samples, one view; drop --views")
        import_logits(r, from_logits, topk=topk, out=out, overwrite=overwrite, quiet=quiet, console=Console())
        return
    build_cache(r, views=views, topk=topk, out=out, chunk_size=chunk_size, batch_size=batch_size,
                overwrite=overwrite, quiet=quiet, console=Console())
