"""Recipe: the typed, validated description of one run (who teaches whom, what, on which data, how long).

A recipe is YAML (or a dict) with a name plus keyword arguments per part; no code execution, no custom tags, no global
mutable config. ``key.path=value`` overrides are applied before validation. Every error is one line naming the field
path and what is allowed, e.g. ``recipe field 'optim.lr': Input should be a valid number, got 'fast'``.
"""

from __future__ import annotations

import copy
import math
import sys
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from kdkit.errors import ConfigError
from kdkit.utils import atomic_write_text
from kdkit.yamlio import load_yaml, read_yaml_file


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSpec(_Strict):
    """A network: a registered name (``resnet8x4``, ``kdkit:mlp``, ``torchvision:resnet18``, ``timm:...``, ``hf:PATH``)
    plus builder keyword arguments and optional local weights: ``checkpoint`` (loaded strictly, e.g. a trained
    teacher) or ``pretrained`` (initial weights whose classifier head may differ, e.g. ImageNet weights to
    fine-tune)."""

    name: str = Field(description="model name; `kdkit models` lists them")
    params: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the model builder")
    checkpoint: str | None = Field(default=None, description="local weights (.safetensors, or .pt/.pth)")
    pretrained: str | None = Field(default=None, description="initial weights to fine-tune from, never downloaded: a "
                                   "file, 'hf-hub:ORG/NAME' (local Hugging Face cache) or 'default' (the torchvision/"
                                   "timm default weights in the local cache); a head of another class count is "
                                   "replaced (docs/teachers.md)")
    input: str | None = Field(default=None, description="the named input of each sample this model reads: a name "
                              "from data.inputs (default: the main input); docs/teachers.md")


class AugmentSpec(_Strict):
    crop_padding: int = Field(default=0, ge=0, description="random crop with this zero padding (0 = off)")
    flip: bool = Field(default=False, description="random horizontal flip")
    jitter: list[float] = Field(default_factory=lambda: [0.0, 0.0, 0.0], min_length=3, max_length=3,
                                description="colour jitter strengths [brightness, contrast, saturation], each in "
                                "[0, 1] (0 = off); uint8 images")
    mixup: float = Field(default=0.0, ge=0.0, description="mixup α (λ ~ Beta(α, α)); 0 = off")
    cutmix: float = Field(default=0.0, ge=0.0, description="CutMix α (λ ~ Beta(α, α)); 0 = off; with mixup, each "
                          "sample takes one of the two with probability 1/2")
    resized_crop: bool = Field(default=False, description="random resized crop (Inception crop) of streamed image "
                               "folders (data.params.stream: true)")
    crop_scale: list[float] = Field(default_factory=lambda: [0.08, 1.0], min_length=2, max_length=2,
                                    description="resized crop: area fraction range")
    crop_ratio: list[float] = Field(default_factory=lambda: [0.75, 4.0 / 3.0], min_length=2, max_length=2,
                                    description="resized crop: aspect ratio (w/h) range")


class InputViewSpec(_Strict):
    """A named input derived from the main one (``data.inputs.NAME``): the same augmented view of the sample, resized
    and/or normalised with other statistics (cross-resolution / cross-normalisation distillation)."""

    resize: list[int] | None = Field(default=None, description="[H, W] (or [L] for signals): resample the augmented "
                                     "sample to this size (bilinear / linear, antialiased when shrinking)")
    mean: list[float] | None = Field(default=None, description="per-channel mean of this input (same scale as "
                                     "data.mean); default: the main input's")
    std: list[float] | None = Field(default=None, description="per-channel std of this input; default: the main "
                                    "input's")

    @field_validator("resize")
    @classmethod
    def _size(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and (len(v) not in (1, 2) or any(int(s) < 1 for s in v)):
            raise ValueError(f"give [H, W] (images) or [L] (signals) of positive sizes, got {v}")
        return v


class DataSpec(_Strict):
    """Dataset and split. ``name`` is a registered dataset (``kdkit datasets``) or a path / ``imagefolder:PATH`` /
    ``cifar100:PATH`` / ``npz:PATH``."""

    name: str = "mnist_5k"
    params: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the dataset source")
    val: str | None = Field(default=None, description="separate validation source (e.g. a CIFAR test split)")
    val_params: dict[str, Any] = Field(default_factory=dict)
    val_fraction: float = Field(default=0.2, gt=0.0, lt=1.0, description="held-out fraction when `val` is unset")
    split_seed: int = Field(default=0, description="seed of the stratified train/val split")
    batch_size: int = Field(default=128, ge=1)
    eval_batch_size: int = Field(default=512, ge=1)
    augment: AugmentSpec = Field(default_factory=AugmentSpec)
    mean: list[float] | None = Field(default=None, description="per-channel mean (uint8 images: 0-1 scale; float "
                                     "data: its own units); default: train split")
    std: list[float] | None = Field(default=None, description="per-channel std (same scale as mean); default: train "
                                    "split")
    train_limit: int | None = Field(default=None, ge=1, description="use a stratified subset of N training samples")
    held_out: bool = Field(default=False, description="train on the training samples that `train_limit` leaves out "
                           "(a held-out transfer set the teacher never saw)")
    unlabelled: bool = Field(default=False, description="drop the training labels (targets -1): the student learns "
                             "from teacher outputs only; leave `ce` out of the terms")
    inputs: dict[str, InputViewSpec] = Field(default_factory=dict, description="named inputs derived from the main "
                                             "one (NAME: {resize, mean, std}); a model reads one with `input: NAME` "
                                             "(docs/teachers.md, 'Different inputs for teacher and student')")

    @field_validator("inputs")
    @classmethod
    def _input_names(cls, v: dict[str, InputViewSpec]) -> dict[str, InputViewSpec]:
        for name in v:
            if name == "input" or not name.isidentifier():
                raise ValueError(f"input name '{name}' must be an identifier other than 'input' (the main input's "
                                 f"name), e.g. small, grey, signal")
        return v


class TermSpec(_Strict):
    """One loss term: a registered term (``kdkit losses``) with its weight and parameters."""

    name: str = Field(description="loss term name; `kdkit losses` lists them")
    weight: float = Field(default=1.0, description="multiplier of this term in the total loss")
    warmup_epochs: float = Field(default=0.0, ge=0.0,
                                 description="ramp the weight linearly from 0 over this many epochs")
    start_epoch: float = Field(default=0.0, ge=0.0, description="the term counts from this (fractional) epoch on")
    stop_epoch: float | None = Field(default=None, gt=0.0, description="the term stops counting at this epoch")
    key: str | None = Field(default=None, description="log name when a term appears twice (default: name)")
    params: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the term")

    @property
    def log_name(self) -> str:
        if self.key:
            return self.key
        return self.name.rpartition(":")[2] if self.name.startswith("py:") else self.name  # py:mod:MyTerm -> MyTerm


class SchemeSpec(_Strict):
    name: str = Field(default="offline", description="who teaches whom; `kdkit schemes` lists them")
    params: dict[str, Any] = Field(default_factory=dict)


class OptimSpec(_Strict):
    name: Literal["sgd", "adamw", "adam"] = "sgd"
    lr: float = Field(default=0.05, gt=0.0)
    momentum: float = Field(default=0.9, ge=0.0)
    nesterov: bool = False
    weight_decay: float = Field(default=5e-4, ge=0.0)
    betas: tuple[float, float] = (0.9, 0.999)


class ScheduleSpec(_Strict):
    name: Literal["constant", "multistep", "cosine", "onecycle"] = "cosine"
    warmup_epochs: float = Field(default=0.0, ge=0.0, description="linear warm-up from 0 (not used by onecycle)")
    milestones: list[int] = Field(default_factory=list, description="multistep: epochs at which lr is multiplied")
    gamma: float = Field(default=0.1, gt=0.0, description="multistep: the multiplier")
    min_lr: float = Field(default=0.0, ge=0.0, description="cosine: final learning rate")
    pct_start: float = Field(default=0.3, gt=0.0, lt=1.0, description="onecycle: fraction of steps spent rising")


class TeacherPolicySpec(_Strict):
    """How frozen teachers run (docs/speed.md): precision and memory format forced, or measured on the first batch."""

    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        default="fp32", description="auto: measure fp32/bf16 (and fp16 on GPU) on the first batch and keep the fastest "
        "that agrees with fp32 (KL and argmax of logits and tapped features); or force one")
    channels_last: bool | Literal["auto"] = Field(default=False, description="run 4-D inputs in channels-last memory "
                                                  "format; auto measures both")
    compile: bool | Literal["auto"] = Field(default=False, description="torch.compile the teacher after its mode is "
                                            "chosen, with Inductor freezing (eager fallback, said in one line, when "
                                            "compilation fails); auto keeps it only if >= 5% faster on the first "
                                            "batch; the times go to teacher_policy.json")
    device: str | None = Field(default=None, description="run the frozen teachers on this device ('cpu', 'cuda:1', "
                               "...) instead of the student's; their outputs are moved to the student's device")

    @field_validator("device")
    @classmethod
    def _device(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            torch_device = torch.device(v)
        except (RuntimeError, TypeError) as err:
            raise ValueError(f"'{v}' is not a torch device (e.g. cpu, cuda, cuda:1): {err}") from None
        return str(torch_device)


class Recipe(_Strict):
    """A whole run. ``teachers`` empty means supervised training of ``student`` (``kdkit train``)."""

    name: str = Field(default="run", description="run name; the run directory is output_dir/name")
    seed: int = 0
    data: DataSpec = Field(default_factory=DataSpec)
    student: ModelSpec
    teachers: list[ModelSpec] = Field(default_factory=list)
    terms: list[TermSpec] = Field(default_factory=lambda: [TermSpec(name="ce")])
    scheme: SchemeSpec = Field(default_factory=SchemeSpec)
    optim: OptimSpec = Field(default_factory=OptimSpec)
    schedule: ScheduleSpec = Field(default_factory=ScheduleSpec)
    epochs: int = Field(default=10, ge=1)
    grad_clip: float | None = Field(default=None, gt=0.0, description="max global grad norm (None = off)")
    precision: Literal["no", "fp16", "bf16", "auto"] = Field(default="no", description="the student step's autocast: "
                                                            "no (fp32), bf16, fp16 (GPU, with a grad scaler), or auto: "
                                                            "measure fp32/bf16 on the first batch and keep bf16 if it "
                                                            "is faster and trains as well (docs/speed.md)")
    channels_last: bool | Literal["auto"] = Field(default=False, description="train the student in channels-last "
                                                  "memory format (4-D inputs); auto measures both on the first batch")
    compile: bool = Field(default=False, description="torch.compile the student network(s) in place (same weights, "
                          "same checkpoint keys); eager, said in one line, when compilation fails (docs/speed.md)")
    teacher_policy: TeacherPolicySpec = Field(default_factory=TeacherPolicySpec,
                                              description="how frozen teachers run; see docs/speed.md")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    output_dir: str = "runs"
    checkpoint_every_steps: int | None = Field(default=None, ge=1, description="also save mid-epoch every N steps")
    eval_every: int = Field(default=1, ge=1)
    threads: int | None = Field(default=None, ge=1, description="torch CPU threads (default: torch's choice)")
    soft_labels: str | None = Field(default=None, description="teacher soft-label store to read instead of teachers")
    stages: list[dict[str, Any]] = Field(default_factory=list, description="a pipeline: each stage is a partial recipe "
                                         "(plus name, teacher_from, ensemble) run in order; see docs/schemes.md")
    track: list[Literal["tensorboard", "mlflow", "wandb"]] = Field(
        default_factory=list, description="experiment trackers (Accelerate's tracking; the `track` extra) that receive "
        "the resolved recipe, the teacher policy and every epoch's metrics; see docs/tuning.md")
    search: dict[str, dict[str, Any]] = Field(default_factory=dict, description="`kdkit tune`'s search space: a field "
                                              "path (terms.1.params.temperature) -> {uniform|log_uniform|int: [a, b]} "
                                              "or {choice: [...]}; see docs/tuning.md")

    @model_validator(mode="before")
    @classmethod
    def _teacher_alias(cls, data: Any) -> Any:
        # `teacher:` (one) is accepted as a convenience for `teachers: [ ... ]`.
        if isinstance(data, dict) and "teacher" in data:
            data = dict(data)
            t = data.pop("teacher")
            if "teachers" in data:
                raise ValueError("give either 'teacher' or 'teachers', not both")
            data["teachers"] = [] if t is None else [t]
        if isinstance(data, dict) and data.get("stages") and "student" not in data:
            # A pipeline needs no top-level student: the last stage that names one stands for the recipe.
            named = [s["student"] for s in data["stages"] if isinstance(s, dict) and "student" in s]
            if named:
                data = dict(data, student=named[-1])
        return data

    @field_validator("precision", mode="before")
    @classmethod
    def _yaml_no(cls, v: Any) -> Any:
        return "no" if v is False else v  # YAML 1.1 reads a bare `no` as false

    @model_validator(mode="before")
    @classmethod
    def _finite_numbers(cls, data: Any) -> Any:
        # NaN/inf pass many range checks silently (NaN > 0 is False, but so is NaN <= 0) and surface much later as
        # "loss became nan"; no recipe field means anything by them.
        bad = _first_non_finite(data, ())
        if bad is not None:
            path, value = bad
            raise ValueError(f"field '{_loc(path)}' is {value}; every number in a recipe must be finite (no NaN/inf)")
        return data

    @model_validator(mode="after")
    def _unique_term_names(self) -> Recipe:
        names = [t.log_name for t in self.terms]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"terms {dup} appear twice; give each a distinct 'key'")
        return self

    @model_validator(mode="after")
    def _valid_search(self) -> Recipe:
        if not self.search:
            return self
        data = self.model_dump(mode="json")
        data["search"] = {}
        for path, dist in self.search.items():
            check_search_path(data, path)
            kind, arg = parse_distribution(path, dist)
            first = arg[0]
            try:
                Recipe(**set_path(data, path, first))
            except ValidationError as err:
                raise ValueError(f"search '{path}': the value {first!r} does not fit the field: "
                                 f"{format_validation_error(err, 'recipe')}") from None
        return self

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


# ----------------------------------------------------------------------------------------------------------------------
# Loading, overrides, errors


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"optim.lr=0.1"`` -> (["optim", "lr"], 0.1). The value is parsed as YAML (numbers, lists, null, strings)."""
    if "=" not in item:
        raise ConfigError(f"override '{item}' must look like key.path=value, e.g. optim.lr=0.1")
    key, _, raw = item.partition("=")
    key = key.strip()
    if not key:
        raise ConfigError(f"override '{item}' has an empty key")
    if raw.strip() == "":
        return key.split("."), ""
    try:
        value = load_yaml(raw, f"override '{item}'")
    except ConfigError as err:
        if "refused" in str(err) or "larger than" in str(err):
            raise
        value = raw  # not YAML: the plain string
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """Set nested values; list elements are addressed by index (``terms.1.weight=0.5``)."""
    data = copy.deepcopy(data)
    for item in overrides or []:
        path, value = parse_override(item)
        node: Any = data
        for i, part in enumerate(path[:-1]):
            nxt_is_index = path[i + 1].isdigit()
            if isinstance(node, list):
                idx = _index(node, part, path, item)
                node = node[idx]
                continue
            if not isinstance(node, dict):
                raise _not_a_section(item, path[:i])
            if part not in node or node[part] is None:
                node[part] = [] if nxt_is_index else {}
            node = node[part]
        last = path[-1]
        if not isinstance(node, (dict, list)):
            raise _not_a_section(item, path[:-1])
        if isinstance(node, list):
            idx = int(last) if last.isdigit() else -1
            if idx == len(node):
                node.append(value)
            else:
                node[_index(node, last, path, item)] = value
        else:
            node[last] = value
    return data


DISTRIBUTIONS = ("uniform", "log_uniform", "int", "choice")


def parse_distribution(path: str, dist: dict[str, Any]) -> tuple[str, list[Any]]:
    """A ``search:`` entry's distribution: ``{uniform: [a, b]}``, ``{log_uniform: [a, b]}`` (0 < a), ``{int: [a, b]}``
    (integers, both ends included) or ``{choice: [v1, v2, ...]}`` (any values, e.g. whole term lists)."""
    if not isinstance(dist, dict) or len(dist) != 1 or next(iter(dist)) not in DISTRIBUTIONS:
        raise ValueError(f"search '{path}': give one distribution, one of {{uniform: [a, b]}}, "
                         f"{{log_uniform: [a, b]}}, {{int: [a, b]}}, {{choice: [...]}}; got {dist!r}")
    kind, arg = next(iter(dist.items()))
    if kind == "choice":
        if not isinstance(arg, list) or not arg:
            raise ValueError(f"search '{path}': choice needs a non-empty list of values, got {arg!r}")
        return kind, arg
    ok = isinstance(arg, list) and len(arg) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                         for v in arg)
    if not ok:
        raise ValueError(f"search '{path}': {kind} needs two numbers [low, high], got {arg!r}")
    low, high = arg
    if kind == "int" and not all(isinstance(v, int) for v in arg):
        raise ValueError(f"search '{path}': int needs two integers [low, high], got {arg!r}")
    if not low < high:
        raise ValueError(f"search '{path}': {kind} needs low < high, got [{low}, {high}]")
    if kind == "log_uniform" and low <= 0:
        raise ValueError(f"search '{path}': log_uniform needs 0 < low, got [{low}, {high}]")
    return kind, arg


def check_search_path(data: dict[str, Any], path: str) -> None:
    """A ``search:`` field path must name a field of the recipe: every part but the last must exist, and the last
    too, unless it is a key of a ``params`` mapping (a loss term's or model's free keyword arguments)."""
    node: Any = data
    parts = path.split(".")
    for i, part in enumerate(parts):
        where = ".".join(parts[:i]) or "the recipe"
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ValueError(f"search '{path}': '{part}' is not an index of {where} ({len(node)} items)")
            node = node[int(part)]
        elif isinstance(node, dict):
            if part not in node:
                if last and parts[i - 1:i] == ["params"]:
                    return
                known = ", ".join(sorted(node)) or "none"
                raise ValueError(f"search '{path}': {where} has no field '{part}' (it has: {known})")
            node = node[part]
        else:
            raise ValueError(f"search '{path}': {where} is a single value, not a section")


def set_path(data: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of ``data`` with the field at ``path`` (``terms.1.params.temperature``) set to ``value``."""
    out = copy.deepcopy(data)
    node: Any = out
    parts = path.split(".")
    for part in parts[:-1]:
        if isinstance(node, list):
            node = node[int(part)]
        else:
            if node.get(part) is None:
                node[part] = {}
            node = node[part]
    last = parts[-1]
    if isinstance(node, list):
        node[int(last)] = copy.deepcopy(value)
    else:
        node[last] = copy.deepcopy(value)
    return out


def _not_a_section(item: str, parent: list[str]) -> ConfigError:
    where = ".".join(parent)
    return ConfigError(f"override '{item}': '{where}' holds a single value, not a section with fields; set it "
                       f"directly ({where}=VALUE)")


def _index(node: list, part: str, path: list[str], item: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise ConfigError(f"override '{item}': '{part}' is not an index of a list of {len(node)} items")
    return int(part)


def _first_non_finite(value: Any, path: tuple) -> tuple[tuple, float] | None:
    if isinstance(value, float) and not math.isfinite(value):
        return path, value
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, (list, tuple)) else ()
    for k, v in items:
        found = _first_non_finite(v, (*path, k))
        if found is not None:
            return found
    return None


def _loc(loc: tuple) -> str:
    return ".".join(str(p) for p in loc)


def _allowed_fields(model: type[BaseModel], loc: tuple) -> list[str] | None:
    """The field names allowed at ``loc[:-1]`` (for 'unknown key' messages)."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field = current.model_fields.get(str(part))
        if field is None:
            return None
        current = _inner_model(field.annotation)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return None


def _inner_model(annotation: Any) -> Any:
    args = getattr(annotation, "__args__", None)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for a in args or ():
        inner = _inner_model(a)
        if inner is not None:
            return inner
    return None


def format_validation_error(err: ValidationError, source: str = "recipe") -> str:
    """One line per problem (joined with '; '), each naming the field path and what is allowed."""
    parts = []
    for e in err.errors():
        loc = _loc(e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            allowed = _allowed_fields(Recipe, e["loc"])
            msg = f"unknown key; allowed: {', '.join(allowed)}" if allowed else "unknown key"
        elif e["type"] == "missing":
            msg = "required field is missing"
        elif e["type"] == "value_error":  # our own validators: the message already says what and how to fix it
            msg = str(e["msg"]).removeprefix("Value error, ")
            if not e["loc"]:
                parts.append(f"{source}: {msg}")
                continue
        else:
            got = e.get("input")
            shown = repr(got) if not isinstance(got, (dict, list)) else type(got).__name__
            msg = f"{e['msg']}, got {shown}"
        parts.append(f"{source} field '{loc}': {msg}")
    return "; ".join(parts)


def recipe_from_dict(data: dict[str, Any], overrides: list[str] | None = None, source: str = "recipe") -> Recipe:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    data = apply_overrides(data, overrides)
    bad = _first_non_finite(data, ())
    if bad is not None:
        raise ConfigError(f"{source} field '{_loc(bad[0])}': {bad[1]} is not allowed; every number in a recipe must be "
                          f"finite (no NaN/inf)")
    try:
        return Recipe.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source)) from None


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read a YAML recipe; ``path`` may also name a bundled recipe (``kdkit recipes`` lists them)."""
    p = resolve_recipe_path(path)
    text = p.read_text()
    if "py:" in text or any("py:" in o for o in overrides or []):
        use_code_folder(p.parent)
    data = read_yaml_file(p, f"recipe file '{p}'")
    return recipe_from_dict(data or {}, overrides, source=f"recipe '{p.name}'")


def use_code_folder(folder: str | Path) -> None:
    """Put ``folder`` on ``sys.path`` so that a recipe's ``py:module:attr`` names find the modules beside it."""
    p = str(Path(folder).resolve())
    if p not in sys.path:
        sys.path.insert(0, p)


def as_recipe(recipe: Recipe | str | Path | dict[str, Any], overrides: list[str] | None = None) -> Recipe:
    """Any form the API accepts as a recipe -- a :class:`Recipe`, a YAML path (or bundled recipe name), or a dict --
    as a validated :class:`Recipe`, with ``key.path=value`` ``overrides`` applied."""
    if isinstance(recipe, Recipe):
        if overrides:
            return recipe_from_dict(recipe.model_dump(mode="json"), overrides)
        return recipe
    if isinstance(recipe, dict):
        return recipe_from_dict(recipe, overrides)
    if isinstance(recipe, (str, Path)):
        return load_recipe(recipe, overrides)
    raise ConfigError(f"recipe: expected a Recipe, a YAML path or a dict, got {type(recipe).__name__}")


def bundled_recipes_dir() -> Path:
    """Recipes shipped in the repository (``recipes/``) or, when installed, inside the package."""
    repo = Path(__file__).resolve().parents[2] / "recipes"
    return repo if repo.is_dir() else Path(__file__).resolve().parent / "recipes"


def resolve_recipe_path(path: str | Path) -> Path:
    p = Path(path)
    if p.is_file():
        return p
    for cand in (bundled_recipes_dir() / p, bundled_recipes_dir() / f"{p}.yaml"):
        if cand.is_file():
            return cand
    raise ConfigError(f"recipe file '{path}' not found; pass a YAML path or a bundled recipe name (`kdkit recipes`)")


def save_recipe(recipe: Recipe, path: str | Path) -> None:
    atomic_write_text(Path(path), recipe.to_yaml())
