"""Random-weight checkpoints with the exact shapes and HF layout of the paper's models.

Writes, under OUT (default: real-size-checkpoints):
  clip-vit-large-patch14/  CLIPModel with openai/clip-vit-large-patch14's config (428M
                           parameters), its real tokenizer (OpenAI's CLIP BPE, from
                           /work/shared/data/clip-bpe or $BPE_GZ) and its image processor config;
  t5-base/                 T5ForConditionalGeneration with t5-base's config (223M
                           parameters) and a Unigram tokenizer.json of t5-base's size and
                           special tokens (32,000 made-up pieces + </s>, <unk>, <pad> and 100
                           <extra_id_N>), since the real sentencepiece model cannot be fetched
                           here.

The weights are random (seed 0): these dirs are for speed, memory and loading checks of the
real sizes (docs/scale.md), not for results. Needs torch, transformers and tokenizers.

Usage: python scripts/real-size-checkpoints.py [OUT]
"""

import importlib.util
import sys
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, T5Config, T5ForConditionalGeneration


def clip_tokenizer():
    """OpenAI CLIP's tokenizer (49,408 tokens), built by the close-clip parity fixture
    generator from the BPE merge list ($BPE_GZ, default /work/shared/data/clip-bpe)."""
    path = Path(__file__).resolve().parents[1] / "crates/close-clip/tests/fixtures/parity/generate.py"
    spec = importlib.util.spec_from_file_location("clip_fixtures", path)
    fixtures = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fixtures)
    return fixtures.full_clip_tokenizer()[0]


def write_clip(out: Path):
    # openai/clip-vit-large-patch14's config.json (text: bos 0, eos 2, pad 1 as published).
    cfg = CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                         num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
                         projection_dim=768, bos_token_id=0, eos_token_id=2, pad_token_id=1),
        vision_config=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                           image_size=224, patch_size=14, hidden_act="quick_gelu", projection_dim=768),
        projection_dim=768,
        logit_scale_init_value=2.6592,
    )
    torch.manual_seed(0)
    model = CLIPModel(cfg).eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tok = clip_tokenizer()
    tok.backend_tokenizer.save(str(out / "tokenizer.json"))
    CLIPImageProcessor(crop_size={"height": 224, "width": 224}, size={"shortest_edge": 224}).save_pretrained(out)
    n = sum(p.numel() for p in model.parameters())
    print(f"{out}: {n / 1e6:.1f}M parameters, tokenizer {len(tok)} tokens")


def t5_tokenizer() -> Tokenizer:
    """A Unigram tokenizer with t5-base's ids: <pad> 0, </s> 1, <unk> 2, 32,097 pieces, then
    <extra_id_99> ... <extra_id_0> (32,100 in all, as the real one)."""
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = [a + b + c + d for a in letters for b in letters for c in letters for d in letters]
    pieces += [("▁" + w, -10.0 - i * 1e-4) for i, w in enumerate(words[: 32000 - 3 - len(letters) * 2 - 100])]
    pieces += [("▁" + c, -5.0) for c in letters] + [(c, -6.0) for c in letters]
    pieces += [("▁" + str(d), -7.0) for d in range(100)]
    assert len(pieces) == 32000 - 3 + 3, len(pieces)
    tok = Tokenizer(models.Unigram(pieces, unk_id=2, byte_fallback=False))
    tok.normalizer = normalizers.Sequence([normalizers.Replace("  ", " "), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.add_special_tokens(["<pad>", "</s>", "<unk>"] + [f"<extra_id_{i}>" for i in range(99, -1, -1)])
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", 1)])
    return tok


def write_t5(out: Path):
    cfg = T5Config(vocab_size=32128, d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_heads=12,
                   relative_attention_num_buckets=32, dropout_rate=0.1, layer_norm_epsilon=1e-6,
                   feed_forward_proj="relu", tie_word_embeddings=True, decoder_start_token_id=0,
                   eos_token_id=1, pad_token_id=0, n_positions=512)
    torch.manual_seed(0)
    model = T5ForConditionalGeneration(cfg).eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tok = t5_tokenizer()
    tok.save(str(out / "tokenizer.json"))
    n = sum(p.numel() for p in model.parameters())
    print(f"{out}: {n / 1e6:.1f}M parameters, tokenizer {tok.get_vocab_size()} tokens")


def main():
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "real-size-checkpoints")
    write_clip(out / "clip-vit-large-patch14")
    write_t5(out / "t5-base")


if __name__ == "__main__":
    main()
