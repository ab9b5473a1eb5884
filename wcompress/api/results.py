"""What API functions return: dataclasses whose to_dict() is exactly the command's --json."""

from dataclasses import dataclass, field


@dataclass
class DocumentResult:
    """A command's result as the document its --json prints; keys read as items or attributes
    (`result["rows"]`, `result.rows`). `model`: for an in-memory input, the model written, loaded back."""

    document: dict
    model: object = None

    def to_dict(self):
        return self.document

    def __getitem__(self, key):
        return self.document[key]

    def __getattr__(self, key):
        if key.startswith("_") or key in ("document", "model"):
            raise AttributeError(key)
        try:
            return self.document[key]
        except KeyError:
            raise AttributeError(f"{type(self).__name__} has no {key!r}") from None


@dataclass
class SparsifyResult:
    """sparsify: the write (None for a dry run), the pass's summary and every tensor's outcome."""

    summary: dict
    outcomes: list
    run: object = None  # runner.RunResult
    warnings: list = field(default_factory=list)
    model: object = None  # a new keras.Model, for an in-memory input written nowhere else

    def to_dict(self):
        return {**(self.run.to_dict() if self.run else {}), "sparsify": self.summary, "warnings": self.warnings,
                "tensors": [o.__dict__ for o in self.outcomes]}


@dataclass
class RestoreResult:
    """restore: the container read and the model written back in its original format."""

    container: str
    format: str
    output: str
    output_files: list
    output_bytes: int
    container_bytes: int
    model: object = None  # with load=True: the restored Keras model

    def to_dict(self):
        return {"container": self.container, "format": self.format, "output": self.output,
                "output_files": self.output_files, "output_bytes": self.output_bytes,
                "container_bytes": self.container_bytes}


@dataclass
class EvaluateResult:
    """evaluate: each metric's value on the examples scored."""

    input: str  # the model scored (None for an in-memory one)
    examples: int
    results: list  # [{"metric", "value"}]
    output_shape: tuple = ()

    @property
    def values(self):
        return {r["metric"]: r["value"] for r in self.results}

    def to_dict(self):
        return {"model": self.input, "examples": self.examples, "results": self.results}
