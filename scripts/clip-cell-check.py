"""Can a from-scratch CLIP of the demo's shape learn a lone object's cell at all?

Trains HF transformers' CLIPModel (the config of a model dir written by `close clip train`,
fresh weights, vision position embeddings redrawn with std POS_STD) with our optimiser
settings on the lone-object train images of a shapes world, each with the caption
"a small red star in the top left." and a wrong-cell copy as a hard negative, and prints the
zero-shot cell probe on the held-out lone objects. docs/demo/NOTES.md ("No bug") used it to
rule out a bug in our trainer.

usage: python clip-cell-check.py WORLD_DIR CLIP_DIR STEPS POS_STD
"""
import json
import math
import random
import sys

import numpy as np
import torch
from PIL import Image
from transformers import CLIPConfig, CLIPModel, PreTrainedTokenizerFast

world, clip_dir, steps, pos_std = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
torch.set_num_threads(2)
torch.manual_seed(0)
random.seed(0)
model = CLIPModel(CLIPConfig.from_pretrained(clip_dir))
with torch.no_grad():
    model.vision_model.embeddings.position_embedding.weight.normal_(0, pos_std)
tok = PreTrainedTokenizerFast(tokenizer_file=clip_dir + "/tokenizer.json")
CELLS = ["top left", "top middle", "top right", "middle left", "center", "middle right",
         "bottom left", "bottom middle", "bottom right"]
MEAN, STD = np.array([0.48145466, 0.4578275, 0.40821073]), np.array([0.26862954, 0.26130258, 0.27577711])
side = model.config.vision_config.image_size
scenes = [r for r in json.load(open(world + "/scenes.json"))["images"] if len(r["objects"]) == 1]
train = [s for s in scenes if s["split"] == "train"]
held = [s for s in scenes if s["split"] != "train"]


def pixels(s):
    im = Image.open(f"{world}/images/{s['split']}/{s['file_name']}").convert("RGB")
    a = (np.asarray(im.resize((side, side), Image.BICUBIC), dtype=np.float32) / 255.0 - MEAN) / STD
    return torch.tensor(a, dtype=torch.float32).permute(2, 0, 1)


def cell(s):
    return s["objects"][0]["row"] * 3 + s["objects"][0]["col"]


def caption(s, c):
    o = s["objects"][0]
    words = f"{o['size']} {o['color']} {o['shape']}"
    return f"{'an' if words[0] in 'aeiou' else 'a'} {words} in the {CELLS[c]}."


def ids(texts):
    rows = [tok(t)["input_ids"] for t in texts]
    n = max(map(len, rows))
    return torch.tensor([r + [0] * (n - len(r)) for r in rows])


def unit(x):
    x = x if torch.is_tensor(x) else x.pooler_output
    return torch.nn.functional.normalize(x, dim=-1)


def probe():
    model.eval()
    right = 0
    with torch.no_grad():
        for s in held:
            v = unit(model.get_image_features(pixel_values=pixels(s)[None]))[0]
            t = unit(model.get_text_features(input_ids=ids([caption(s, c) for c in range(9)])))
            right += int((t @ v).argmax() == cell(s))
    model.train()
    return right / len(held)


decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "embedding" not in n]
plain = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "embedding" not in n)]
opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": plain, "weight_decay": 0.0}],
                        lr=5e-4, betas=(0.9, 0.98), eps=1e-6)
warm = math.ceil(0.05 * steps)
print("before", probe())
for step in range(steps):
    lr = 5e-4 * (step + 1) / warm if step < warm else \
        0.5 * 5e-4 * (1 + math.cos(math.pi * min(1, (step - warm) / max(1, steps - warm))))
    for g in opt.param_groups:
        g["lr"] = lr
    batch = random.sample(train, 32)
    texts = [caption(s, cell(s)) for s in batch]
    negs = [caption(s, random.choice([c for c in range(9) if c != cell(s)])) for s in batch]
    out = model(input_ids=ids(texts + negs), pixel_values=torch.stack([pixels(s) for s in batch]))
    logits, labels = out.logits_per_image, torch.arange(len(batch))
    loss = (torch.nn.functional.cross_entropy(logits, labels)
            + torch.nn.functional.cross_entropy(logits[:, : len(batch)].t(), labels)) / 2
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    with torch.no_grad():
        model.logit_scale.clamp_(0, math.log(100))
    if (step + 1) % 100 == 0:
        print(step + 1, round(loss.item(), 3), "cell probe", probe(), flush=True)
