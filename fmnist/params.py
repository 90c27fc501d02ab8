"""Typed params: one frozen model per params.yaml section, so a bad value fails before any work starts. Validation
only: what a stage computes comes from the values, never from this schema, so editing it reruns no stage."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fmnist.evaluation.classifiers import SKLEARN_CLASSIFIERS
from fmnist.model.names import NETS, check_net
from fmnist.redaction import has_credentials, redact

PARAMS_FILE = "params.yaml"

Md5 = Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class ParamsError(ValueError):
    """params.yaml is missing, not YAML, or holds a key or value the pipeline does not accept."""


class Section(BaseModel):
    # strict: YAML's `1` is not silently a bool or a string; forbid: a typo'd key is an error, not ignored.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class DatasetFile(Section):
    name: str = Field(pattern=r"^[^/\\]+$", description="file name on the mirrors")
    gz_md5: Md5 | None = Field(description="published MD5 of the release's .gz; null where none is published")
    sha256: Sha256 | None = Field(description="SHA-256 of the decoded IDX payload; null where not known yet")


class DatasetFiles(Section):
    train_images: DatasetFile
    train_labels: DatasetFile
    test_images: DatasetFile
    test_labels: DatasetFile


class Mirror(Section):
    location: str = Field(min_length=1, description="http(s) URL or local directory holding the four files")
    original_gz: bool = Field(description="serves the release's own .gz bytes, so the published MD5 applies")

    @field_validator("location")
    @classmethod
    def _no_credentials(cls, location: str) -> str:
        # params.yaml is committed, and its values go into MLflow params and data/raw/manifest.json.
        if has_credentials(location):
            raise ValueError(f"{redact(location)} holds credentials (user:password@): keep the URL without them "
                             "and put them in ~/.netrc (or the file the NETRC environment variable names) as "
                             "`machine <host> login <user> password <password>`; the download sends them to that "
                             "host only")
        return location


class Dataset(Section):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    mirrors: list[Mirror] = Field(min_length=1)
    files: DatasetFiles
    train_count: int = Field(ge=1)
    test_count: int = Field(ge=1)
    image_shape: list[Annotated[int, Field(ge=1)]] = Field(min_length=2, max_length=2)
    classes: list[Annotated[str, Field(min_length=1)]] = Field(min_length=2, max_length=256)

    @field_validator("classes")
    @classmethod
    def _unique(cls, classes: list[str]) -> list[str]:
        duplicated = sorted({c for c in classes if classes.count(c) > 1})
        if duplicated:
            raise ValueError(f"class names must be unique, repeated: {duplicated}")
        return classes


class Download(Section):
    timeout_s: float = Field(gt=0, le=600, description="per connect/read on HTTP mirrors")
    retries: int = Field(ge=1, le=20, description="attempts per URL before the next mirror")
    backoff_s: float = Field(ge=0, le=60, description="first wait between attempts; doubles each time")
    deadline_s: float = Field(gt=0, le=86400, description="longest one file may take from a mirror, retries included")


class Verify(Section):
    max_class_imbalance: float = Field(ge=1, description="largest / smallest class count allowed per split")


class Preprocess(Section):
    normalization: Literal["none", "global", "per_pixel"]
    n_splits: int = Field(ge=1, le=100, description="train/validation splits, one per ensemble member")
    val_fraction: float = Field(gt=0, lt=1)
    train_subset: int = Field(ge=0, description="stratified subset of the training set; 0 keeps all")
    seed: int = Field(ge=0)


class Augment(Section):
    flip: bool = Field(description="random horizontal flip")
    translate: int = Field(ge=0, le=8, description="random shift of up to this many pixels each way")
    erasing: float = Field(ge=0, le=1, description="probability of random erasing per image")


class Train(Section):
    net: str = Field(description=f"{', '.join(NETS)} or wrn-<depth>-<width> (fmnist.model.names)")
    epochs: int = Field(ge=1, le=1000)
    batch_size: int = Field(ge=2, le=65536)
    optimizer: Literal["sgd", "adamw", "muon"]
    lr: float = Field(gt=0, le=10, description="peak of the one-cycle schedule")
    momentum: float = Field(ge=0, lt=1)
    weight_decay: float = Field(ge=0, le=1)
    warmup_fraction: float = Field(ge=0, le=1)
    label_smoothing: float = Field(ge=0, lt=1)
    ema_decay: float = Field(ge=0, lt=1, description="0 turns EMA of weights off")
    lookahead_every: int = Field(ge=0, le=1000, description="steps between lookahead averages; 0 = off")
    no_decay_lr_scale: float = Field(gt=0, le=1000, description="lr multiplier of the parameters without weight decay"
                                     " (BatchNorm weights and biases)")
    dirac_init: bool = Field(description="identity initialisation of the 3x3 convs (fmnist.model.nets.dirac_init)")
    muon_lr: float = Field(gt=0, le=10, description="optimizer muon: peak lr of the conv filters")
    muon_momentum: float = Field(ge=0, lt=1, description="optimizer muon: momentum of the conv filters")
    augment: Augment
    device: Literal["auto", "cpu", "cuda"]
    precision: Literal["bf16", "fp32"]
    channels_last: bool
    compile: bool
    processes: int = Field(ge=1, le=1024, description="data-parallel training processes on this machine (torchrun)")
    threads: int = Field(ge=0, le=1024, description="CPU threads shared by the processes; 0 = every core")
    eval_batch_size: int = Field(ge=1, le=65536)
    validate_every: int = Field(ge=1, le=1000, description="validate after every N-th epoch ...")
    validate_last: int = Field(ge=1, le=1000, description="... and after each of the last N epochs")

    @field_validator("net")
    @classmethod
    def _known_net(cls, name: str) -> str:
        return check_net(name)


class Member(Section):
    seed: int = Field(ge=0)
    split: int = Field(ge=0, description="index of the preprocess train/validation split")


class EnsembleConfig(Section):
    method: Literal["soft", "weighted", "hard"]
    tta_flip: bool = Field(description="average each member's prediction with that of the mirrored image")
    tta_translate: bool = Field(False, description="also average over the image shifted one pixel up-left and "
                                "down-right (airbench's), the unshifted views weighing half")
    calibrate: bool = Field(description="temperature-scale each member, fitted on its own validation split")


class Evaluate(Section):
    ece_bins: int = Field(ge=2, le=100, description="confidence bins for expected calibration error")
    mistakes: int = Field(ge=1, le=400, description="most confident mistakes shown in the grid")


class Classifier(Section):
    classifier: str
    grid: dict[str, list[Any]] = Field(default_factory=dict,
                                       description="parameter -> values; each combination is one configuration")

    @field_validator("classifier")
    @classmethod
    def _known(cls, name: str) -> str:
        if name not in SKLEARN_CLASSIFIERS:
            raise ValueError(f"unknown classifier {name!r}; allowed: {', '.join(sorted(SKLEARN_CLASSIFIERS))}")
        return name


class Baselines(Section):
    profile: str = Field(description="which entry of `profiles` runs")
    repeats: int = Field(ge=1, le=20, description="fits per configuration, seeds seed, seed+1, ...")
    seed: int = Field(ge=0)
    profiles: dict[str, list[Classifier]] = Field(min_length=1)

    @model_validator(mode="after")
    def _profile_exists(self) -> Baselines:
        if self.profile not in self.profiles:
            raise ValueError(f"baselines.profile is {self.profile!r}; defined profiles: {', '.join(self.profiles)}")
        return self


class Visualize(Section):
    samples: int = Field(ge=20, le=100000, description="test images embedded (stratified)")
    sprite_per_class: int = Field(ge=1, le=50, description="sample images per class in the sprite")
    perplexity: float = Field(gt=1, le=100, description="t-SNE neighbourhood size")
    tsne_iterations: int = Field(ge=250, le=10000, description="t-SNE optimization steps (scikit-learn's max_iter; "
                                 "its first 250 are the early exaggeration)")
    seed: int = Field(ge=0)


Better = Literal["higher", "lower"]


class Gate(Section):
    metric: str = Field(min_length=1, description="metric name as in metrics/*.json (flattened with dots)")
    max_worsening: float = Field(ge=0, description="largest allowed change for the worse, in the metric's units")
    better: Better | None = Field(None, description="filled in from report.directions: not written in params.yaml")


class Direction(Section):
    pattern: str = Field(min_length=1, description="fnmatch pattern on a metric's name (flattened with dots)")
    better: Literal["higher", "lower", "none"]


class Timings(Section):
    tolerance: float = Field(gt=0, description="relative change below which a timing is not flagged (host noise)")
    patterns: list[Direction] = Field(min_length=1)


class Report(Section):
    headline: list[str] = Field(min_length=1, description="the metrics of the report's first table, in order")
    directions: list[Direction] = Field(description="first match decides; a metric none matches gets no verdict")
    timings: Timings
    gates: list[Gate]

    def direction(self, metric: str) -> Better | None:
        """Which way `metric` is better, as declared; None for 'none' and for a metric no pattern matches."""
        from fnmatch import fnmatchcase

        found = next((rule.better for rule in self.directions if fnmatchcase(metric, rule.pattern)), "none")
        return None if found == "none" else found

    def timing(self, metric: str) -> Better | None | Literal[False]:
        """Which way a timing is better; False when `metric` is not a timing."""
        from fnmatch import fnmatchcase

        found = next((rule.better for rule in self.timings.patterns if fnmatchcase(metric, rule.pattern)), False)
        return None if found == "none" else found

    @model_validator(mode="after")
    def _gates_have_directions(self) -> Report:
        resolved = []
        for gate in self.gates:
            better = self.direction(gate.metric)
            if better is None:
                raise ValueError(f"report.gates: {gate.metric} has no direction in report.directions (a pattern "
                                 "with better: higher or lower), so no change of it can be called worse")
            if gate.better not in (None, better):
                raise ValueError(f"report.gates: {gate.metric} says better: {gate.better}, report.directions says "
                                 f"{better}")
            resolved.append(gate.model_copy(update={"better": better}))
        object.__setattr__(self, "gates", resolved)  # frozen: the one place a section completes itself
        return self


MemberName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]+$")]


class Params(Section):
    dataset: Dataset
    download: Download
    verify: Verify
    preprocess: Preprocess
    train: Train
    members: dict[MemberName, Member] = Field(min_length=1)
    ensemble: EnsembleConfig
    evaluate: Evaluate
    baselines: Baselines
    visualize: Visualize
    report: Report

    @model_validator(mode="after")
    def _splits_exist(self) -> Params:
        for name, member in self.members.items():
            if member.split >= self.preprocess.n_splits:
                raise ValueError(f"members.{name}.split is {member.split}, but preprocess.n_splits="
                                 f"{self.preprocess.n_splits} makes splits 0..{self.preprocess.n_splits - 1}")
        return self


def _describe(error: dict[str, Any]) -> str:
    key = ".".join(str(part) for part in error["loc"]) or "<top level>"
    message = error["msg"]
    if error["type"] == "extra_forbidden":
        return f"{key}: unknown key (a typo? allowed keys are listed in fmnist/params.py)"
    if error["type"] == "missing":
        return f"{key}: missing"
    return f"{key}: {message} (got {redact(repr(error.get('input')))})"


def parse_params(raw: Any, source: str = PARAMS_FILE) -> Params:
    """Validate a decoded params mapping; every problem is reported with its dotted key."""
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        problems = "\n  ".join(_describe(e) for e in exc.errors())
        raise ParamsError(f"{source}: {exc.error_count()} invalid value(s):\n  {problems}") from None


def load_params(path: str | Path = PARAMS_FILE) -> Params:
    """Read and validate params.yaml (from the stage's working directory, as DVC runs it)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ParamsError(f"{path}: cannot read params file: {exc.strerror}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from None
    return parse_params(raw, str(path))
