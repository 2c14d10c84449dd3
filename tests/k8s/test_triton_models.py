"""k8s/triton/model-repository: every config.pbtxt parses as Triton's own ModelConfig, the models fit together (the
ensemble's steps, one embedding space for text and images), and the rendered manifests point the coordinator at
them (its encoder settings, the triton Service, NetworkPolicy and Deployment)."""

from __future__ import annotations

import importlib.util
import os
import sys
import types
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pytest

from tests.k8s import manifests as m

REPOSITORY = m.K8S / "triton" / "model-repository"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

Rendered = dict[str, list[m.Obj]]


def parse(text: str) -> Any:
    m.require("tritonclient", "google.protobuf")
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(text, model_config_pb2.ModelConfig())  # unknown fields and bad enums raise


@pytest.fixture(scope="module")
def models() -> dict[str, Any]:
    """Model name -> its parsed config.pbtxt."""
    found = {path.parent.name: parse(path.read_text()) for path in sorted(REPOSITORY.glob("*/config.pbtxt"))}
    assert found, f"no models under {REPOSITORY}"
    return found


def dtype(enum_value: int) -> str:
    from tritonclient.grpc import model_config_pb2

    return model_config_pb2.DataType.Name(enum_value)


def tensors(config: Any, kind: str) -> dict[str, tuple[str, list[int]]]:
    """name -> (data type, dims without the batch dimension) of a model's inputs or outputs."""
    return {t.name: (dtype(t.data_type), list(t.dims)) for t in getattr(config, kind)}


def split_model(setting: str) -> tuple[str, str]:
    name, _, version = setting.partition(":")
    return name, version


def test_every_config_parses_is_named_after_its_directory_and_has_a_version(models: dict[str, Any]) -> None:
    for name, config in models.items():
        assert config.name == name, f"{name}/config.pbtxt names {config.name!r}: Triton refuses the mismatch"
        versions = [p for p in (REPOSITORY / name).iterdir() if p.is_dir() and p.name.isdigit()]
        assert versions, f"{name}: no version directory (an ensemble needs an empty one too)"
        if config.backend == "python":
            assert all((v / "model.py").is_file() for v in versions), name
        else:
            assert config.platform in ("onnxruntime_onnx", "ensemble"), f"{name}: {config.platform}"
        if config.max_batch_size > 0 and config.platform != "ensemble":
            assert config.HasField("dynamic_batching"), f"{name}: batches only what one call sends"
            preferred = list(config.dynamic_batching.preferred_batch_size)
            assert all(0 < size <= config.max_batch_size for size in preferred), (name, preferred)


def test_a_typo_in_a_config_fails_to_parse() -> None:
    from google.protobuf import text_format

    text = (REPOSITORY / "clip_image" / "config.pbtxt").read_text()
    typos = (("max_batch_size:", "max_batch_sise:"), ("TYPE_FP32", "TYPE_FP23"), ("kind: KIND_AUTO", "kind: KIND_AOTU"))
    for good, typo in typos:
        assert good in text
        with pytest.raises(text_format.ParseError):
            parse(text.replace(good, typo, 1))


def test_the_image_model_takes_a_clip_image_tensor_and_batches(models: dict[str, Any]) -> None:
    config = models["clip_image"]
    assert config.platform == "onnxruntime_onnx"
    assert tensors(config, "input") == {"pixel_values": ("TYPE_FP32", [3, 224, 224])}
    ((name, (kind, dims)),) = tensors(config, "output").items()
    assert (name, kind, len(dims)) == ("image_embeds", "TYPE_FP32", 1) and dims[0] > 0
    assert config.max_batch_size > 0 and config.HasField("dynamic_batching")
    assert config.dynamic_batching.max_queue_delay_microseconds > 0


def test_text_goes_in_as_one_string_and_comes_out_in_the_images_space(models: dict[str, Any]) -> None:
    text, image = models["clip_text"], models["clip_image"]
    assert text.platform == "ensemble" and text.max_batch_size > 0
    # What the coordinator sends for a text model: a BYTES tensor [batch, 1].
    assert tensors(text, "input") == {"text": ("TYPE_STRING", [1])}
    (text_out,) = tensors(text, "output").values()
    (image_out,) = tensors(image, "output").values()
    assert text_out == image_out == ("TYPE_FP32", [512]), "text and image embeddings must share one space"


def test_ensemble_steps_use_models_and_tensors_that_exist(models: dict[str, Any]) -> None:
    ensembles = {name: c for name, c in models.items() if c.platform == "ensemble"}
    assert ensembles
    for name, ensemble in ensembles.items():
        available = tensors(ensemble, "input")  # ensemble tensor name -> (type, dims), growing step by step
        steps = ensemble.ensemble_scheduling.step
        assert steps, name
        for step in steps:
            where = f"{name} -> {step.model_name}"
            assert step.model_name in models, f"{where}: no such model in the repository"
            model = models[step.model_name]
            assert 0 < ensemble.max_batch_size <= model.max_batch_size, f"{where}: batch sizes"
            inputs, outputs = tensors(model, "input"), tensors(model, "output")
            assert set(step.input_map) == set(inputs), f"{where}: inputs {set(step.input_map)} vs {set(inputs)}"
            for model_input, source in step.input_map.items():
                assert source in available, f"{where}: {source!r} is neither an input nor an earlier output"
                assert available[source] == inputs[model_input], f"{where}: {source} -> {model_input}"
            assert set(step.output_map) <= set(outputs), f"{where}: outputs {set(step.output_map)} vs {set(outputs)}"
            for model_output, target in step.output_map.items():
                assert target not in available, f"{where}: {target!r} written twice"
                available[target] = outputs[model_output]
        for output, described in tensors(ensemble, "output").items():
            assert available.get(output) == described, f"{name}: output {output} {available.get(output)}"


@pytest.mark.parametrize("overlay", m.OVERLAYS)
def test_instances_fit_the_triton_pod(rendered: Rendered, overlay: str, models: dict[str, Any]) -> None:
    from tritonclient.grpc import model_config_pb2

    triton = m.container(rendered[overlay], "Deployment", "triton")
    limits = triton.spec["resources"]["limits"]
    has_gpu = int(limits.get("nvidia.com/gpu", 0)) > 0
    cpus = m.cpu_cores(limits["cpu"])
    for name, config in models.items():
        for group in config.instance_group:
            if group.kind == model_config_pb2.ModelInstanceGroup.KIND_GPU:
                assert has_gpu, f"{name}: KIND_GPU, but Triton has no GPU in {overlay} (use KIND_AUTO)"
        threads = config.parameters.get("intra_op_thread_count")
        if config.platform == "onnxruntime_onnx":
            assert threads is not None, f"{name}: onnxruntime would start a thread per core of the node"
        if threads is not None:
            assert 0 < int(threads.string_value) <= cpus, f"{name}: more threads than the pod's {cpus} CPUs"
    model_dir = m.flag(triton.spec["args"], "--model-repository")
    mounts = {v["mountPath"]: v["name"] for v in triton.spec["volumeMounts"]}
    (volume,) = [v for v in triton.pod["volumes"] if v["name"] == mounts[model_dir]]
    assert volume["persistentVolumeClaim"]["claimName"] == "triton-models"


@pytest.mark.parametrize("overlay", m.OVERLAYS)
def test_the_coordinator_calls_models_of_the_repository(
    rendered: Rendered, overlay: str, models: dict[str, Any]
) -> None:
    config = m.server_config(rendered[overlay], m.container(rendered[overlay], "Deployment", "coordinator"))
    for setting, kind in ((config.text_model, "TYPE_STRING"), (config.image_model, "TYPE_FP32")):
        name, version = split_model(setting)
        assert name in models, f"coordinator calls {name!r}; the repository has {sorted(models)}"
        assert not version or (REPOSITORY / name / version).is_dir(), setting
        model_inputs = list(tensors(models[name], "input").values())
        assert len(model_inputs) == 1 and model_inputs[0][0] == kind, f"{name}: the coordinator sends one {kind}"
    assert config.image_preprocess == "client"
    (image_input,) = tensors(models[split_model(config.image_model)[0]], "input").values()
    assert image_input[1][0] == 3, "client preprocessing sends CHW float tensors"
    mean = tuple(float(v) for v in config.image_mean.split(","))
    std = tuple(float(v) for v in config.image_std.split(","))
    assert mean == pytest.approx(CLIP_MEAN) and std == pytest.approx(CLIP_STD), "the CLIP export expects these"


@pytest.mark.parametrize("overlay", m.OVERLAYS)
def test_the_coordinator_reaches_tritons_grpc_port(rendered: Rendered, overlay: str) -> None:
    objs = rendered[overlay]
    coordinator = m.container(objs, "Deployment", "coordinator")
    config = m.server_config(objs, coordinator)
    url = urlsplit(f"//{config.encoder_url}")
    service = m.one(objs, "Service", "triton")
    namespace = service["metadata"]["namespace"]
    assert url.hostname in ("triton", f"triton.{namespace}.svc.cluster.local"), config.encoder_url
    (port,) = [p for p in service["spec"]["ports"] if p["port"] == url.port]
    assert port["name"] == "grpc", f"{config.encoder_url} is the Service's {port['name']} port, not gRPC"
    triton = m.container(objs, "Deployment", "triton")
    assert triton.port(port["targetPort"]) == int(m.flag(triton.spec["args"], "--grpc-port"))

    def admits(policy: m.Obj, direction: str, peer_labels: dict[str, str], port_names: set[str]) -> bool:
        peers = "from" if direction == "ingress" else "to"
        for rule in policy["spec"].get(direction, []):
            ports = {p["port"] for p in rule.get("ports", [])}
            if ports and not ports & port_names:
                continue
            if not rule.get(peers) or any(
                "namespaceSelector" not in peer and m.selects(peer["podSelector"].get("matchLabels", {}), peer_labels)
                for peer in rule[peers]
            ):
                return True
        return False

    grpc = {"grpc", triton.port("grpc")}
    policies = m.find(objs, "NetworkPolicy")
    for policy in policies:
        types_ = policy["spec"].get("policyTypes", ["Ingress"])
        if "Ingress" in types_ and m.selects(policy["spec"]["podSelector"]["matchLabels"], triton.pod_labels):
            assert admits(policy, "ingress", coordinator.pod_labels, grpc), f"{policy['metadata']['name']}"
        if "Egress" in types_ and m.selects(policy["spec"]["podSelector"].get("matchLabels", {}),
                                            coordinator.pod_labels):
            assert admits(policy, "egress", triton.pod_labels, grpc), f"{policy['metadata']['name']}"
    assert any(m.selects(p["spec"]["podSelector"]["matchLabels"], triton.pod_labels) for p in policies)


@pytest.mark.parametrize("overlay", m.OVERLAYS)
def test_the_coordinator_is_not_killed_while_it_waits_for_the_models(rendered: Rendered, overlay: str) -> None:
    coordinator = m.container(rendered[overlay], "Deployment", "coordinator")
    config = m.server_config(rendered[overlay], coordinator)
    probe = coordinator.spec.get("startupProbe")
    assert probe, "without a startup probe, liveness kills the coordinator ~35 s into its wait for the encoder"
    allowed = probe.get("initialDelaySeconds", 0) + probe.get("periodSeconds", 10) * probe.get("failureThreshold", 3)
    assert allowed >= config.encoder_wait_s + 10, f"startup probe: {allowed} s, encoder_wait_s: {config.encoder_wait_s}"
    assert coordinator.probe_port(probe) == config.port


# The tokenizer's model.py, run against stand-ins for Triton's Python backend and transformers (neither is a test
# dependency); it reads its shapes and types from the config it is given, as under Triton.


class _Tensor:
    def __init__(self, name: str, array: np.ndarray) -> None:
        self.name, self.array = name, array

    def as_numpy(self) -> np.ndarray:
        return self.array


class _Response:
    def __init__(self, output_tensors: list[_Tensor], error: Any = None) -> None:
        self.outputs = {t.name: t.array for t in output_tensors}
        self.error = error


class _FakeTokenizer:
    """Token 49406, then one id per character (its code point), then 49407, padded with 49407 like CLIP's."""

    loaded_from: list[str] = []

    @classmethod
    def from_pretrained(cls, path: str, local_files_only: bool = False) -> "_FakeTokenizer":
        assert local_files_only
        cls.loaded_from.append(path)
        return cls()

    def __call__(self, texts: list[str], padding: str, truncation: bool, max_length: int, return_tensors: str) -> dict:
        assert (padding, truncation, return_tensors) == ("max_length", True, "np")
        if "boom" in texts:
            raise ValueError("boom")
        ids = np.full((len(texts), max_length), 49407, dtype=np.int32)  # int32: model.py must cast to the config's
        mask = np.zeros_like(ids)
        for row, text in enumerate(texts):
            tokens = [49406, *map(ord, text)][: max_length - 1] + [49407]
            ids[row, : len(tokens)], mask[row, : len(tokens)] = tokens, 1
        return {"input_ids": ids, "attention_mask": mask}


@pytest.fixture
def tokenizer_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, models: dict[str, Any]) -> Any:
    from google.protobuf import json_format

    pb_utils = types.ModuleType("triton_python_backend_utils")
    pb_utils.Tensor = _Tensor
    pb_utils.InferenceResponse = _Response
    pb_utils.TritonError = type("TritonError", (Exception,), {})
    pb_utils.TritonModelException = type("TritonModelException", (Exception,), {})
    pb_utils.get_input_tensor_by_name = lambda request, name: request[name]
    pb_utils.get_output_config_by_name = lambda config, name: next(o for o in config["output"] if o["name"] == name)
    pb_utils.triton_string_to_numpy = lambda kind: {"TYPE_INT64": np.int64, "TYPE_INT32": np.int32}[kind]
    transformers = types.ModuleType("transformers")
    transformers.CLIPTokenizer = _FakeTokenizer
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", pb_utils)
    monkeypatch.setitem(sys.modules, "transformers", transformers)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # no __pycache__ in the model repository
    for variable in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):  # model.py sets them: restored afterwards
        monkeypatch.setenv(variable, "")
        monkeypatch.delenv(variable)

    spec = importlib.util.spec_from_file_location("clip_tokenizer_model", REPOSITORY / "clip_tokenizer/1/model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model_dir = tmp_path / "clip_tokenizer"
    (model_dir / "1").mkdir(parents=True)
    # Triton hands model.py its config as JSON (int64 fields may come as strings: model.py must not care).
    config = json_format.MessageToJson(models["clip_tokenizer"], preserving_proto_field_name=True)
    args = {"model_repository": str(model_dir), "model_version": "1", "model_config": config}
    model = module.TritonPythonModel()
    with pytest.raises(Exception, match="tokenizer"):
        model.initialize(args)  # no tokenizer files exported yet: a clear error, no download
    (model_dir / "1" / "tokenizer").mkdir()
    (model_dir / "site-packages").mkdir()
    model.initialize(args)
    assert _FakeTokenizer.loaded_from[-1] == str(model_dir / "1" / "tokenizer")
    assert str(model_dir / "site-packages") == sys.path[-1]
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    return model


def test_the_tokenizer_answers_each_request_of_a_batch_with_its_own_rows(
    tokenizer_model: Any, models: dict[str, Any]
) -> None:
    length = tensors(models["clip_text_encoder"], "input")["input_ids"][1][0]

    def request(*texts: bytes) -> dict[str, _Tensor]:
        return {"text": _Tensor("text", np.array([[t] for t in texts], dtype=object))}

    long = b"x" * 500
    responses = tokenizer_model.execute([request(b"a cat", "d\u00e9j\u00e0".encode()), request(long, b"\xff")])
    assert [r.error for r in responses] == [None, None]
    first, second = (r.outputs for r in responses)
    for outputs, rows in ((first, 2), (second, 2)):
        for name in ("input_ids", "attention_mask"):
            assert outputs[name].shape == (rows, length) and outputs[name].dtype == np.int64, name
    assert first["input_ids"][0, :7].tolist() == [49406, *map(ord, "a cat"), 49407]
    assert first["input_ids"][1, 1:5].tolist() == list(map(ord, "d\u00e9j\u00e0"))
    assert first["attention_mask"][0].sum() == 7
    assert second["attention_mask"][0].sum() == length and second["input_ids"][0, -1] == 49407  # truncated
    assert second["input_ids"][1, 1] == 0xFFFD  # invalid UTF-8 replaced, not fatal

    failed = tokenizer_model.execute([request(b"boom"), request(b"fine")])
    assert all(r.error is not None and not r.outputs for r in failed)
    assert len(failed) == 2
