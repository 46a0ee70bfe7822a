"""Exports the architectures people deploy, with random seeded weights, for the benchmark.

usage: export_zoo.py OUT_DIR [NAME ...]

Runs in the bench-only export venv (bench/py/requirements-export.txt: pinned torch,
torchvision, transformers), never in the test venv. Nothing is downloaded: torchvision
models are built with `weights=None`, transformers models from config objects. Each model
goes to OUT_DIR/<name>/ as model.onnx, its inputs as .npy files listed in io.tsv (the
layout of the other benchmark models) and source.txt (architecture, exporter, shapes).
Models whose files exist are skipped, so a rerun exports only what is missing or failed.
Names ending in `_dynamo` use the `dynamo=True` exporter; the others the TorchScript-based
one. A model that fails to export is reported and skipped; the exit status is 1 if any did.
"""

import os
import sys
import traceback

import numpy as np
import torch

# The TorchScript-based exporter's opset; the dynamo exporter's own lowest (18) for it.
OPSET = 17
DYNAMO_OPSET = 18
SEED = 20261206


def image(size=224):
    return torch.randn(1, 3, size, size)


def tokens(vocab, length=128):
    return torch.randint(0, vocab, (1, length), dtype=torch.int64)


class LastHidden(torch.nn.Module):
    """A transformers model's `last_hidden_state` alone, so the ONNX graph has one output."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, *args):
        return self.model(*args).last_hidden_state


class Crnn(torch.nn.Module):
    """A text-line recognizer: a small conv stack over a 32 x 96 line image, a
    bidirectional LSTM over the 24 columns, and a CTC head of 8210 classes (the shape
    of PaddleOCR-style Chinese recognizers)."""

    def __init__(self, classes=8210, hidden=512):
        super().__init__()

        def block(cin, cout, pool):
            return [torch.nn.Conv2d(cin, cout, 3, padding=1), torch.nn.BatchNorm2d(cout), torch.nn.ReLU(), torch.nn.MaxPool2d(pool)]

        self.features = torch.nn.Sequential(
            *block(3, 64, (2, 2)), *block(64, 128, (2, 2)), *block(128, 256, (2, 1)),
            *block(256, 256, (2, 1)), *block(256, 512, (2, 1)),
        )
        self.rnn = torch.nn.LSTM(512, hidden, bidirectional=True, batch_first=True)
        self.head = torch.nn.Linear(2 * hidden, classes)

    def forward(self, x):
        f = self.features(x)  # [1, 512, 1, 24]
        f = f.squeeze(2).permute(0, 2, 1)  # [1, 24, 512]
        h, _ = self.rnn(f)
        return self.head(h).log_softmax(-1)


def conv_bn_silu(cin, cout, k=3, s=1):
    return torch.nn.Sequential(torch.nn.Conv2d(cin, cout, k, s, k // 2, bias=False), torch.nn.BatchNorm2d(cout), torch.nn.SiLU())


class C2f(torch.nn.Module):
    """YOLOv8's split-and-concatenate bottleneck block."""

    def __init__(self, cin, cout, n=1):
        super().__init__()
        self.c = cout // 2
        self.cv1 = conv_bn_silu(cin, 2 * self.c, 1)
        self.m = torch.nn.ModuleList(
            torch.nn.Sequential(conv_bn_silu(self.c, self.c), conv_bn_silu(self.c, self.c)) for _ in range(n)
        )
        self.cv2 = conv_bn_silu((2 + n) * self.c, cout, 1)

    def forward(self, x):
        y = list(self.cv1(x).chunk(2, 1))
        for m in self.m:
            y.append(y[-1] + m(y[-1]))
        return self.cv2(torch.cat(y, 1))


class Sppf(torch.nn.Module):
    def __init__(self, c):
        super().__init__()
        self.cv1 = conv_bn_silu(c, c // 2, 1)
        self.cv2 = conv_bn_silu(c * 2, c, 1)
        self.pool = torch.nn.MaxPool2d(5, 1, 2)

    def forward(self, x):
        x = self.cv1(x)
        y1 = self.pool(x)
        y2 = self.pool(y1)
        return self.cv2(torch.cat([x, y1, y2, self.pool(y2)], 1))


class YoloLike(torch.nn.Module):
    """A YOLOv8n-sized detector at 320 x 320: C2f backbone, SPPF, an upsampling and
    concatenating neck, and a decoupled head with DFL box decoding, 80 classes."""

    def __init__(self, classes=80, w=(16, 32, 64, 128, 256)):
        super().__init__()
        self.stem = torch.nn.Sequential(conv_bn_silu(3, w[0], 3, 2), conv_bn_silu(w[0], w[1], 3, 2), C2f(w[1], w[1]))
        self.p3 = torch.nn.Sequential(conv_bn_silu(w[1], w[2], 3, 2), C2f(w[2], w[2], 2))
        self.p4 = torch.nn.Sequential(conv_bn_silu(w[2], w[3], 3, 2), C2f(w[3], w[3], 2))
        self.p5 = torch.nn.Sequential(conv_bn_silu(w[3], w[4], 3, 2), C2f(w[4], w[4]), Sppf(w[4]))
        self.up = torch.nn.Upsample(scale_factor=2, mode="nearest")
        self.n4 = C2f(w[4] + w[3], w[3])
        self.n3 = C2f(w[3] + w[2], w[2])
        self.reg_max, self.classes = 16, classes
        self.box = torch.nn.ModuleList(
            torch.nn.Sequential(conv_bn_silu(c, 64), conv_bn_silu(64, 64), torch.nn.Conv2d(64, 4 * 16, 1)) for c in (w[2], w[3])
        )
        self.cls = torch.nn.ModuleList(
            torch.nn.Sequential(conv_bn_silu(c, 80), conv_bn_silu(80, 80), torch.nn.Conv2d(80, classes, 1)) for c in (w[2], w[3])
        )

    def forward(self, x):
        p3 = self.p3(self.stem(x))
        p4 = self.p4(p3)
        p5 = self.p5(p4)
        n4 = self.n4(torch.cat([self.up(p5), p4], 1))
        n3 = self.n3(torch.cat([self.up(n4), p3], 1))
        outs = []
        for f, box, cls in zip((n3, n4), self.box, self.cls):
            b = box(f).flatten(2)  # [1, 64, HW]
            dist = b.view(1, 4, self.reg_max, -1).softmax(2)
            proj = torch.arange(self.reg_max, dtype=torch.float32).view(1, 1, -1, 1)
            outs.append(torch.cat([(dist * proj).sum(2), cls(f).flatten(2).sigmoid()], 1))
        return torch.cat(outs, 2)


def torchvision_model(name, **kw):
    import torchvision

    return lambda: (getattr(torchvision.models, name)(weights=None, **kw), (image(),), ["input"])


def segmentation():
    import torchvision

    m = torchvision.models.segmentation.deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None, aux_loss=False)

    class Out(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            return self.m(x)["out"]

    return Out(m), (image(),), ["input"]


def bert():
    from transformers import BertConfig, BertModel

    m = BertModel(BertConfig())
    ids = tokens(30522)
    return LastHidden(m), (ids, torch.ones_like(ids)), ["input_ids", "attention_mask"]


def gpt2():
    from transformers import GPT2Config, GPT2Model

    return LastHidden(GPT2Model(GPT2Config())), (tokens(50257),), ["input_ids"]


def t5_encoder():
    from transformers import T5Config, T5EncoderModel

    return LastHidden(T5EncoderModel(T5Config())), (tokens(32128),), ["input_ids"]


def llama_block(eager=False):
    from transformers import LlamaConfig, LlamaModel

    # One TinyLlama-sized decoder layer (grouped-query attention, SwiGLU, RMSNorm, RoPE)
    # over a small vocabulary: the block's cost, not the embedding's.
    config = LlamaConfig(
        vocab_size=1000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=1,
        num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=2048,
    )
    if eager:
        # The TorchScript-based exporter cannot convert grouped-query SDPA; eager
        # attention is what its users select.
        config._attn_implementation = "eager"
    return LastHidden(LlamaModel(config)), (tokens(1000),), ["input_ids"]


def whisper_encoder():
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    config = WhisperConfig(
        d_model=384, encoder_layers=4, encoder_attention_heads=6, encoder_ffn_dim=1536,
        num_mel_bins=80, max_source_positions=1500,
    )
    return LastHidden(WhisperEncoder(config)), (torch.randn(1, 80, 3000),), ["input_features"]


MODELS = {
    "resnet18": torchvision_model("resnet18"),
    "resnet18_dynamo": torchvision_model("resnet18"),
    "mobilenet_v2": torchvision_model("mobilenet_v2"),
    "mobilenet_v3_small": torchvision_model("mobilenet_v3_small"),
    "efficientnet_b0": torchvision_model("efficientnet_b0"),
    "convnext_tiny": torchvision_model("convnext_tiny"),
    "regnet_y_400mf": torchvision_model("regnet_y_400mf"),
    "densenet121": torchvision_model("densenet121"),
    "squeezenet1_1": torchvision_model("squeezenet1_1"),
    "googlenet": torchvision_model("googlenet", aux_logits=False, init_weights=True),
    "shufflenet_v2": torchvision_model("shufflenet_v2_x1_0"),
    "deeplabv3_mobilenet_v3": segmentation,
    "vit_b_16": torchvision_model("vit_b_16"),
    "swin_t": torchvision_model("swin_t"),
    "bert_base": bert,
    "gpt2": gpt2,
    "gpt2_dynamo": gpt2,
    "t5_encoder": t5_encoder,
    "llama_block": lambda: llama_block(eager=True),
    "llama_block_dynamo": llama_block,
    "yolo_like": lambda: (YoloLike(), (image(320),), ["images"]),
    "crnn_bilstm_ctc": lambda: (Crnn(), (torch.randn(1, 3, 32, 96),), ["image"]),
    "whisper_tiny_encoder": whisper_encoder,
}


def export(name, out):
    torch.manual_seed(SEED)
    np.random.seed(SEED)
    model, args, input_names = MODELS[name]()
    model.eval()
    # Some initializers zero a layer (torchvision's ViT head): its products would then
    # fold away and its outputs say nothing. Such weights get small random values.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2 and torch.count_nonzero(p) == 0:
                torch.nn.init.normal_(p, std=0.02)
    dynamo = name.endswith("_dynamo")
    # The fused multi-head-attention fast path (torchvision's ViT in eval mode) has no
    # TorchScript-based export; the exporter's users turn it off.
    torch.backends.mha.set_fastpath_enabled(dynamo)
    opset = DYNAMO_OPSET if dynamo else OPSET
    path = os.path.join(out, "model.onnx")
    with torch.no_grad():
        torch.onnx.export(
            model, args, path, input_names=input_names, output_names=["output"],
            opset_version=opset, dynamo=dynamo, external_data=False,
        )
    lines = []
    for i, (n, a) in enumerate(zip(input_names, args)):
        file = f"input_{i}.npy"
        np.save(os.path.join(out, file), a.numpy())
        lines.append(f"input\t{n}\t{file}\n")
    with open(os.path.join(out, "io.tsv"), "w") as f:
        f.writelines(lines)
    params = sum(p.numel() for p in model.parameters())
    shapes = ", ".join(f"{n} {list(a.shape)}" for n, a in zip(input_names, args))
    exporter = "dynamo=True" if dynamo else "TorchScript-based"
    with open(os.path.join(out, "source.txt"), "w") as f:
        f.write(f"bench/py/export_zoo.py: {name.removesuffix('_dynamo')}, torch {torch.__version__} {exporter} exporter, "
                f"opset {opset}, random weights (seed {SEED}), {params} parameters, {shapes}\n")


def main():
    out_root = sys.argv[1]
    names = sys.argv[2:] or list(MODELS)
    failed = []
    for name in names:
        out = os.path.join(out_root, name)
        if os.path.exists(os.path.join(out, "source.txt")):
            continue
        os.makedirs(out, exist_ok=True)
        try:
            export(name, out)
            print(f"exported {name}", flush=True)
        except Exception:
            traceback.print_exc()
            for f in os.listdir(out):
                os.remove(os.path.join(out, f))
            os.rmdir(out)
            failed.append(name)
            print(f"FAILED {name}", flush=True)
    if failed:
        print("failed: " + ", ".join(failed))
        sys.exit(1)


if __name__ == "__main__":
    main()
