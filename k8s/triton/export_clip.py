"""Build a filled Triton model repository for the coordinator's encoder from a CLIP checkpoint, once.

    python k8s/triton/export_clip.py --model openai/clip-vit-base-patch32 --out build/triton-models

Copies k8s/triton/model-repository/ (configs, the tokenizer's model.py) to --out and writes beside them:
  clip_image/1/model.onnx         vision tower + projection, L2-normalised:
                                  pixel_values [b,3,224,224] -> image_embeds [b,512]
  clip_text_encoder/1/model.onnx  text tower + projection, L2-normalised:
                                  input_ids, attention_mask [b,77] -> text_embeds [b,512]
  clip_tokenizer/1/tokenizer/     the checkpoint's tokenizer files (vocab.json, merges.txt, ...)
then checks the exports against PyTorch with onnxruntime when it is installed.

Runs on a workstation, not in the cluster: needs torch, transformers and onnx (`pip install torch transformers onnx
onnxruntime`) and the checkpoint (a hub name, downloaded once, or a local directory). The configs are for a CLIP with
512-d embeddings, 224-px images and 77 tokens (ViT-B/32, ViT-B/16); for another one it stops and names what differs.
--out defaults to build/ (ignored by git): the ONNX files (~350 MB for ViT-B/32) do not belong in the repository.
k8s/triton/README.md says how to add transformers for Triton's Python and copy the result onto the PVC.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent / "model-repository"


def config_value(model: str, pattern: str) -> int:
    text = (REPOSITORY / model / "config.pbtxt").read_text()
    found = re.search(pattern, text)
    assert found, f"{model}/config.pbtxt: {pattern!r} not found"
    return int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="openai/clip-vit-base-patch32", help="hub name or local checkpoint")
    parser.add_argument("--out", type=Path, default=Path("build/triton-models"))
    parser.add_argument("--opset", type=int, default=17)
    args = parser.parse_args()

    import torch
    from transformers import CLIPModel, CLIPTokenizer

    clip = CLIPModel.from_pretrained(args.model).eval()
    tokenizer = CLIPTokenizer.from_pretrained(args.model)
    dim = config_value("clip_image", r"name: \"image_embeds\"[^}]*dims: \[ (\d+) \]")
    side = config_value("clip_image", r"dims: \[ 3, (\d+), \d+ \]")
    length = config_value("clip_text_encoder", r"name: \"input_ids\"[^}]*dims: \[ (\d+) \]")
    config = clip.config
    have = (config.projection_dim, config.vision_config.image_size, config.text_config.max_position_embeddings)
    if have != (dim, side, length):
        sys.exit(f"{args.model}: embedding dim, image side, context length = {have}; the configs say "
                 f"{(dim, side, length)}: edit the dims in {REPOSITORY}/*/config.pbtxt to match")

    class Image(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.clip = clip

        def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
            embeds = self.clip.get_image_features(pixel_values=pixel_values)
            return embeds / embeds.norm(dim=-1, keepdim=True)

    class Text(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.clip = clip

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            embeds = self.clip.get_text_features(input_ids=input_ids, attention_mask=attention_mask)
            return embeds / embeds.norm(dim=-1, keepdim=True)

    if args.out.exists():
        sys.exit(f"{args.out} exists: remove it or pick another --out")
    shutil.copytree(REPOSITORY, args.out, ignore=shutil.ignore_patterns(".gitkeep", "__pycache__"))
    image_path = args.out / "clip_image" / "1" / "model.onnx"
    text_path = args.out / "clip_text_encoder" / "1" / "model.onnx"
    pixels = torch.rand(2, 3, side, side)
    tokens = tokenizer(["a photo of a cat", "a diagram"], padding="max_length", max_length=length,
                       truncation=True, return_tensors="pt")
    batch = {0: "batch"}
    with torch.no_grad():
        torch.onnx.export(
            Image(), (pixels,), str(image_path), input_names=["pixel_values"], output_names=["image_embeds"],
            dynamic_axes={"pixel_values": batch, "image_embeds": batch}, opset_version=args.opset,
        )
        torch.onnx.export(
            Text(), (tokens["input_ids"], tokens["attention_mask"]), str(text_path),
            input_names=["input_ids", "attention_mask"], output_names=["text_embeds"],
            dynamic_axes={"input_ids": batch, "attention_mask": batch, "text_embeds": batch}, opset_version=args.opset,
        )
    tokenizer.save_pretrained(args.out / "clip_tokenizer" / "1" / "tokenizer")

    try:
        import onnxruntime
    except ImportError:
        print("onnxruntime not installed: exports not checked", file=sys.stderr)
    else:
        with torch.no_grad():
            expected = {
                "image": Image()(pixels).numpy(),
                "text": Text()(tokens["input_ids"], tokens["attention_mask"]).numpy(),
            }
        got = {
            "image": onnxruntime.InferenceSession(str(image_path)).run(None, {"pixel_values": pixels.numpy()})[0],
            "text": onnxruntime.InferenceSession(str(text_path)).run(
                None, {k: tokens[k].numpy() for k in ("input_ids", "attention_mask")})[0],
        }
        for name in expected:
            error = float(abs(expected[name] - got[name]).max())
            assert got[name].shape == (2, dim) and error < 1e-4, f"{name}: shape {got[name].shape}, max error {error}"
        print("onnxruntime agrees with PyTorch (max error < 1e-4)")
    print(f"wrote {args.out}: add site-packages for clip_tokenizer next (k8s/triton/README.md)")


if __name__ == "__main__":
    main()
