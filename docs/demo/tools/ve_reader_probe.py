"""How well a small bilinear reader reads VE's single-clause hypotheses from CLIP vectors.

The measurement behind "VE: the image vector holds the clauses, the T5 reads them slowly"
in docs/demo/NOTES.md (issue 16, part 6). For every entailment or contradiction hypothesis
of one clause (`the star is red.`), a reader scores (vector, hypothesis words) with
relu(A v * B h + B h) -> 1 and is trained with logistic loss. Trained on the image vectors
of the train split, it shows what the image vectors hold; trained on the premises' text
vectors with CLOSE's noise, what transfers from text to images. Tested on the test split's
image vectors.

    python ve_reader_probe.py DEMO_OUT images          # image-trained reader
    python ve_reader_probe.py DEMO_OUT text 0.08       # text-trained, noise w = 0.08

DEMO_OUT is a `close demo --out` dir (its world/ and cache/). Needs numpy, torch and
safetensors; not part of CI.
"""

import collections
import json
import sys

import numpy as np
import torch
from safetensors.numpy import load_file


def load_cache(d):
    idx = json.load(open(f"{d}/index.json"))
    keys = [k for s in idx["shards"] for k in s["keys"]]
    vecs = np.concatenate([load_file(f"{d}/{s['file']}")["embeddings"] for s in idx["shards"]])
    assert len(keys) == len(vecs)
    return dict(zip(keys, vecs))


def clause_kind(h):
    if "background" in h:
        return "ground"
    if " is in the " in h:
        return "cell"
    if h.endswith((" small", " large", " big")):
        return "size"
    return "colour"


def single_clauses(world, split, by_premise):
    out = []
    for line in open(f"{world}/snli_ve_{split}.jsonl"):
        x = json.loads(line)
        h = x["sentence2"].rstrip(".")
        if x["gold_label"] == "neutral" or " and " in h:
            continue
        key = x["sentence1"] if by_premise else x["Flickr30K_ID"]
        out.append((key, h, float(x["gold_label"] == "entailment"), clause_kind(h)))
    return out


class Reader(torch.nn.Module):
    def __init__(self, dim, vocab, hidden=256):
        super().__init__()
        self.a = torch.nn.Linear(dim, hidden)
        self.b = torch.nn.Linear(vocab, hidden)
        self.out = torch.nn.Sequential(torch.nn.ReLU(), torch.nn.Linear(hidden, 1))

    def forward(self, v, h):
        bh = self.b(h)
        return self.out(self.a(v) * bh + bh).squeeze(-1)


def tensors(items, vecs, words):
    v = torch.tensor(np.stack([vecs[k] for k, _, _, _ in items]))
    h = torch.zeros(len(items), len(words))
    for n, (_, text, _, _) in enumerate(items):
        for w in text.split():
            if w in words:
                h[n, words[w]] = 1.0
    y = torch.tensor([y for _, _, y, _ in items])
    return v, h, y


def main():
    out, source = sys.argv[1], sys.argv[2]
    noise = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
    world = f"{out}/world"
    images = load_cache(f"{out}/cache/images")
    text = source == "text"
    train = single_clauses(world, "train", by_premise=text)
    test = single_clauses(world, "test", by_premise=False)
    words = {w: i for i, w in enumerate(sorted({w for _, h, _, _ in train for w in h.split()}))}
    vt, ht, yt = tensors(train, load_cache(f"{out}/cache/texts") if text else images, words)
    ve, he, ye = tensors(test, images, words)
    torch.manual_seed(0)
    model = Reader(vt.shape[1], len(words))
    opt = torch.optim.Adam(model.parameters(), 1e-3, weight_decay=1e-5)
    for epoch in range(1, 101):
        for idx in torch.randperm(len(yt)).split(256):
            v = vt[idx]
            if noise > 0:
                v = v + noise * torch.randn_like(v)
                v = v / v.norm(dim=-1, keepdim=True)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(v, ht[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        if epoch in (2, 5, 10, 20, 50, 100):
            with torch.no_grad():
                right = (model(ve, he) > 0).float() == ye
            acc = collections.defaultdict(list)
            for n, (_, _, _, kind) in enumerate(test):
                acc[kind].append(right[n].item())
            kinds = ", ".join(f"{k} {100 * np.mean(v):.0f}" for k, v in sorted(acc.items()))
            print(f"epoch {epoch}: all {100 * right.float().mean():.1f} % ({kinds}); "
                  f"{len(train)} train, {len(test)} test clauses")


if __name__ == "__main__":
    main()
