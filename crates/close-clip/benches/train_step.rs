//! Training steps per second of the demo's CLIP (`ClipConfig::shapes`): forward, contrastive
//! loss and backward for 32 images and 64 texts (captions and their hard negatives) whose
//! lengths follow the shapes world's captions (mean 15 tokens, longest 32). Two ways to
//! run the text tower: the whole batch padded to its longest row, and the rows in groups
//! of similar length (`close_clip::ragged`, what training uses); against HF transformers'
//! `CLIPModel` in PyTorch on the padded batch, in the same run, when `/work/venv/bin/python`
//! (or `$CLOSE_PYTHON`) can import torch and transformers. 2 threads.
//!
//! Run: `cargo bench -p close-clip --bench train_step` (env `BENCH_SECONDS` per case,
//! default 4; `CLOSE_BENCH_SMOKE=1` runs each case once, without PyTorch).

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use close_clip::bundle::TEXT_GROUP_OVERHEAD;
use close_clip::train::clip_loss;
use close_clip::{ClipConfig, ClipModel};

const THREADS: usize = 2;
const IMAGES: usize = 32;
/// Token lengths (with start and end tokens) cycled over the 64 text rows: the world's
/// captions run from 6 to 35 tokens (cut at the model's 32 positions), 14.4 on average.
const LENGTHS: [usize; 16] = [8, 10, 12, 14, 16, 9, 11, 13, 22, 32, 7, 18, 12, 10, 27, 15];

const PY: &str = r#"
import json, sys, time, torch
import torch.nn.functional as F
from transformers import CLIPConfig, CLIPModel
print(json.dumps({"torch": torch.__version__, "capability": torch.backends.cpu.get_cpu_capability()}), flush=True)
torch.set_num_threads(int(sys.argv[1])); torch.manual_seed(0)
secs, lens = float(sys.argv[2]), [int(x) for x in sys.argv[3].split(",")]
text = dict(vocab_size=65, hidden_size=128, intermediate_size=512, num_hidden_layers=3,
            num_attention_heads=4, max_position_embeddings=32, pad_token_id=0, bos_token_id=2,
            eos_token_id=3)
vision = dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4,
              num_attention_heads=4, image_size=63, patch_size=21)
m = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=128)).train()
n, rows = 32, len(lens)
ids = torch.zeros(rows, max(lens), dtype=torch.long)
mask = torch.zeros(rows, max(lens), dtype=torch.long)
for i, l in enumerate(lens):
    ids[i, 0], ids[i, 1:l - 1], ids[i, l - 1] = 2, 4 + (i % 60), 3
    mask[i, :l] = 1
px = torch.randn(n, 3, 63, 63)
def step():
    out = m(input_ids=ids, attention_mask=mask, pixel_values=px)
    li = out.logits_per_image
    t = torch.arange(n)
    loss = (F.cross_entropy(li, t) + F.cross_entropy(li[:, :n].t(), t)) / 2
    m.zero_grad(); loss.backward()
for _ in range(2): step()
k, t0 = 0, time.perf_counter()
while time.perf_counter() - t0 < secs or k < 3:
    step(); k += 1
print(f"torch {k / (time.perf_counter() - t0)}", flush=True)
"#;

fn torch_rate(seconds: f64, lens: &[usize]) -> Option<f64> {
    let py = close_core::bench::python()?;
    let lens: Vec<String> = lens.iter().map(usize::to_string).collect();
    let args = [THREADS.to_string(), seconds.to_string(), lens.join(",")];
    close_core::bench::torch_value(&py, PY, &args, THREADS)
}

/// The 64 text rows: `<bos> ids… <eos>` of the [`LENGTHS`] cycled.
fn text_rows() -> Vec<Vec<u32>> {
    (0..2 * IMAGES)
        .map(|i| {
            let len = LENGTHS[i % LENGTHS.len()];
            let mid = std::iter::repeat_n(4 + (i % 60) as u32, len - 2);
            std::iter::once(2).chain(mid).chain([3]).collect()
        })
        .collect()
}

close_core::global_allocator!();

fn main() -> close_core::Result<()> {
    close_core::threads::init();
    close_core::alloc::init();
    // Must be set before candle / rayon start their pools.
    std::env::set_var("RAYON_NUM_THREADS", THREADS.to_string());
    std::env::set_var("CANDLE_NUM_THREADS", THREADS.to_string());
    let seconds = close_core::bench::seconds();
    println!("{}", close_core::bench::CpuInfo::detect());
    let dev = Device::Cpu;
    let mut cfg = ClipConfig::shapes();
    cfg.text_config.vocab_size = 65;
    let vm = VarMap::new();
    let model = ClipModel::new(VarBuilder::from_varmap(&vm, DType::F32, &dev), &cfg)?;
    let px = Tensor::randn(0f32, 1., (IMAGES, 3, 63, 63), &dev)?;
    let rows = text_rows();
    let slices: Vec<&[u32]> = rows.iter().map(Vec::as_slice).collect();
    let ids = close_clip::ragged::pad_rows(&slices, 0, &dev)?;
    let step = |grouped: bool| -> close_core::Result<()> {
        let (logits, _, _) = if grouped {
            model.forward_rows(&px, &rows, 0, TEXT_GROUP_OVERHEAD)?
        } else {
            model.forward(&px, &ids)?
        };
        std::hint::black_box(clip_loss(&logits)?.backward()?);
        Ok(())
    };
    let lens: Vec<usize> = rows.iter().map(Vec::len).collect();
    let torch = torch_rate(seconds, &lens);
    println!(
        "| text rows | close-clip (steps/s) | PyTorch HF CLIPModel, padded (steps/s) | ratio |"
    );
    println!("|---|---|---|---|");
    for (name, grouped) in [("padded to the longest", false), ("length groups", true)] {
        step(grouped)?;
        let rate = close_core::bench::rate(seconds, 1, || step(grouped).expect("a training step"));
        match torch {
            Some(t) => println!("| {name} | {rate:.2} | {t:.2} | {:.2}× |", rate / t),
            None => println!("| {name} | {rate:.2} | – | – |"),
        }
    }
    println!("(shapes CLIP, random weights, {IMAGES} images + 64 texts, {THREADS} threads, {seconds} s per case)");
    Ok(())
}
