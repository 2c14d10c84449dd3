"""CLIP's tokenizer as a Triton Python-backend model: step 1 of the ensemble `clip_text`.

In: `text`, TYPE_STRING [batch, 1] (UTF-8). Out: `input_ids` and `attention_mask`, TYPE_INT64 [batch, 77], padded
and truncated to CLIP's context length (the dims of `input_ids` in config.pbtxt), which is what
`clip_text_encoder` takes.

Nothing is downloaded here: the tokenizer files (vocab.json, merges.txt, tokenizer_config.json,
special_tokens_map.json) are read from `tokenizer/` beside this file, written once by k8s/triton/export_clip.py
from the same checkpoint as the ONNX encoders, and `transformers` comes from `site-packages/` in the model directory
(`pip install --target`, k8s/triton/README.md) because the stock Triton image does not have it.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        model_dir = args["model_repository"]  # this model's directory, e.g. /models/clip_tokenizer
        vendored = os.path.join(model_dir, "site-packages")
        if os.path.isdir(vendored) and vendored not in sys.path:
            # Appended, not prepended: numpy and the backend's own modules stay the image's.
            sys.path.append(vendored)
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the hub from a serving pod
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from transformers import CLIPTokenizer

        path = os.path.join(model_dir, args["model_version"], "tokenizer")
        if not os.path.isdir(path):
            raise pb_utils.TritonModelException(
                f"{path} is missing: export the tokenizer once (k8s/triton/export_clip.py)"
            )
        self.tokenizer = CLIPTokenizer.from_pretrained(path, local_files_only=True)

        config = json.loads(args["model_config"])
        ids = pb_utils.get_output_config_by_name(config, "input_ids")
        mask = pb_utils.get_output_config_by_name(config, "attention_mask")
        self.max_length = int(ids["dims"][-1])  # 77 for every OpenAI CLIP
        self.ids_dtype = pb_utils.triton_string_to_numpy(ids["data_type"])
        self.mask_dtype = pb_utils.triton_string_to_numpy(mask["data_type"])

    def execute(self, requests: list) -> list:
        # One tokenizer call for the whole dynamic batch, then each request gets its own rows back.
        texts: list[list[str]] = []
        for request in requests:
            raw = pb_utils.get_input_tensor_by_name(request, "text").as_numpy()  # object array [n, 1] of bytes
            texts.append([_decode(value) for value in raw.reshape(-1)])
        flat = [text for group in texts for text in group]
        try:
            if flat:
                encoded = self.tokenizer(
                    flat, padding="max_length", truncation=True, max_length=self.max_length, return_tensors="np"
                )
                ids, mask = encoded["input_ids"], encoded["attention_mask"]
            else:
                ids = mask = np.zeros((0, self.max_length))
        except Exception as exc:  # noqa: BLE001 - every request of the batch gets the error, Triton stays up
            error = pb_utils.TritonError(f"tokenizing failed: {exc}")
            return [pb_utils.InferenceResponse(output_tensors=[], error=error) for _ in requests]
        responses, start = [], 0
        for group in texts:
            end = start + len(group)
            responses.append(pb_utils.InferenceResponse(output_tensors=self._outputs(ids[start:end], mask[start:end])))
            start = end
        return responses

    def _outputs(self, ids: np.ndarray, mask: np.ndarray) -> list:
        return [
            pb_utils.Tensor("input_ids", np.ascontiguousarray(ids, dtype=self.ids_dtype)),
            pb_utils.Tensor("attention_mask", np.ascontiguousarray(mask, dtype=self.mask_dtype)),
        ]

    def finalize(self) -> None:
        self.tokenizer = None


def _decode(value: object) -> str:
    # The coordinator sends valid UTF-8 (it checks max_text_bytes too); anything else is replaced, not fatal.
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)
