"""What a Triton model takes and returns, read from the server's model metadata and config (nothing hard-coded).

A text model has one BYTES input of one element per text (`[1]`, or `[-1]`). An image model has one input that is
either BYTES (the encoded file: preprocessing happens in the model, "server-side") or a pixel tensor: FP32/FP16
`[3,H,W]` / `[H,W,3]` of normalised values, or UINT8 `[H,W,3]` / `[3,H,W]` of raw 0..255 values (preprocessed here,
"client-side"). The embedding is the model's one floating-point output of shape `[D]`; with several, the one whose
name contains "embed" (else the first), and the choice is logged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from shardsearch.errors import FailedPrecondition

logger = logging.getLogger(__name__)

FLOAT_TYPES = {"FP32": "float32", "FP16": "float16", "FP64": "float64"}
PIXEL_TYPES = {**FLOAT_TYPES, "UINT8": "uint8"}


@dataclass(frozen=True)
class ModelRef:
    name: str
    version: str = ""
    """"" = the newest version the server has (pinned once read, so every embedding of a run comes from one)."""

    @classmethod
    def parse(cls, text: str) -> "ModelRef":
        name, _, version = text.strip().partition(":")
        if not name or (version and not version.isdigit()):
            raise ValueError(f"model {text!r}: expected NAME or NAME:VERSION (VERSION a number)")
        return cls(name, version)

    def __str__(self) -> str:
        return f"{self.name}:{self.version}" if self.version else self.name


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    input_name: str
    input_datatype: str
    input_shape: tuple[int, ...]
    """Per item, without the batch dimension."""
    output_name: str
    dim: int
    max_batch_size: int
    """0: the model does not batch; one item per infer call, sent without a batch dimension."""
    dynamic_batching: bool

    @property
    def label(self) -> str:
        return f"{self.name}:{self.version}"

    @property
    def takes_bytes(self) -> bool:
        return self.input_datatype == "BYTES"

    @property
    def pixel_layout(self) -> tuple[str, int, int]:
        """("CHW" or "HWC", height, width) of a pixel-tensor input."""
        shape = self.input_shape
        if len(shape) == 3 and shape[0] == 3 and shape[2] != 3:
            return "CHW", shape[1], shape[2]
        if len(shape) == 3 and shape[2] == 3:
            return "HWC", shape[0], shape[1]
        raise FailedPrecondition(f"model {self.label}: image input shape {list(shape)} is neither [3,H,W] nor [H,W,3]")


def describe(ref: ModelRef, metadata: dict[str, Any], config: dict[str, Any], kind: str) -> ModelInfo:
    """Builds a ModelInfo for a `kind` ("text" or "image") model, or raises FailedPrecondition saying what is wrong."""
    config = config.get("config", config)
    versions = [str(v) for v in metadata.get("versions", [])]
    version = ref.version or max(versions, key=int, default="")
    if ref.version and versions and ref.version not in versions:
        raise FailedPrecondition(f"model {ref}: the server has versions {versions}, not {ref.version}")
    label = f"{ref.name}:{version or '?'}"
    max_batch = int(config.get("max_batch_size", 0) or 0)
    inputs = metadata.get("inputs", [])
    if len(inputs) != 1:
        names = [i.get("name") for i in inputs]
        raise FailedPrecondition(f"model {label}: an encoder takes exactly one input; this one takes {names}")
    spec = inputs[0]
    shape = tuple(int(d) for d in spec.get("shape", []))
    if max_batch > 0:
        shape = shape[1:]  # metadata shapes include the batch dimension (-1) of a batching model
    datatype = spec.get("datatype", "")
    if kind == "text":
        if datatype != "BYTES" or shape not in ((1,), (-1,)):
            raise FailedPrecondition(
                f"model {label}: a text model takes one BYTES input of shape [1]; its input "
                f"{spec.get('name')!r} is {datatype} {list(shape)}"
            )
    elif datatype == "BYTES":
        if shape not in ((1,), (-1,)):
            raise FailedPrecondition(f"model {label}: a BYTES image input must have shape [1], not {list(shape)}")
    elif datatype not in PIXEL_TYPES or len(shape) != 3 or min(shape) <= 0:
        raise FailedPrecondition(
            f"model {label}: an image model takes encoded BYTES [1] or pixels FP32/FP16/UINT8 [3,H,W] or [H,W,3]; "
            f"its input {spec.get('name')!r} is {datatype} {list(shape)}"
        )
    output_name, dim = _embedding_output(label, metadata.get("outputs", []), max_batch > 0)
    info = ModelInfo(
        name=ref.name, version=version, input_name=spec["name"], input_datatype=datatype, input_shape=shape,
        output_name=output_name, dim=dim, max_batch_size=max_batch,
        dynamic_batching="dynamic_batching" in config or "sequence_batching" in config,
    )
    if kind == "image" and not info.takes_bytes:
        info.pixel_layout  # noqa: B018 - validates the layout now rather than at the first request
    return info


def _embedding_output(label: str, outputs: list[dict[str, Any]], batched: bool) -> tuple[str, int]:
    candidates = []
    for out in outputs:
        shape = [int(d) for d in out.get("shape", [])]
        if batched:
            shape = shape[1:]
        if out.get("datatype") in FLOAT_TYPES and len(shape) == 1 and shape[0] > 0:
            candidates.append((out["name"], shape[0]))
    if not candidates:
        described = [(o.get("name"), o.get("datatype"), o.get("shape")) for o in outputs]
        raise FailedPrecondition(f"model {label}: no floating-point output of shape [D] among {described}")
    chosen = next((c for c in candidates if "embed" in c[0].lower()), candidates[0])
    if len(candidates) > 1:
        logger.info("model %s: using output %r as the embedding (of %s)", label, chosen[0], [c[0] for c in candidates])
    return chosen
