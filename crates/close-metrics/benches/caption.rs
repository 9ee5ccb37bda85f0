//! Captioning-metric benchmark: 5,000 images × 5 references, BLEU-1..4 + ROUGE-L + CIDEr-D.
//!
//! `cargo bench -p close-metrics --bench caption`
//!
//! Prints our time for the scorers on tokenized captions, our time including PTB
//! tokenization, and — when a Python with pycocoevalcap is found (`CLOSE_PYTHON`, else
//! `/work/venv/bin/python`, else `python3` on PATH) — pycocoevalcap's Bleu/Rouge/Cider
//! `compute_score` time on the very same tokenized captions and the ratio. The Python timing
//! covers the scorers only, NOT the Java PTB tokenizer (which would make it slower still).

use std::collections::BTreeMap;
use std::io::Write;
use std::process::Command;
use std::time::Instant;

use close_metrics::{bleu, caption, cider, ptb, rouge};

const IMAGES: usize = 5000;
const REFS: usize = 5;

struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn pick<'a>(&mut self, v: &[&'a str]) -> &'a str {
        v[(self.next() as usize) % v.len()]
    }
}

fn caption(rng: &mut Lcg, topic: &[&str]) -> String {
    const COMMON: [&str; 24] = [
        "a", "an", "the", "of", "on", "in", "with", "next", "to", "is", "are", "sitting",
        "standing", "large", "small", "white", "black", "red", "two", "people", "man", "woman",
        "near", "top",
    ];
    let n = 8 + (rng.next() % 8) as usize;
    let mut words: Vec<&str> = Vec::with_capacity(n);
    for _ in 0..n {
        words.push(if rng.next().is_multiple_of(3) {
            rng.pick(topic)
        } else {
            rng.pick(&COMMON)
        });
    }
    let mut s = words.join(" ");
    if rng.next().is_multiple_of(2) {
        s.push('.');
    }
    if let Some(f) = s.get(..1) {
        s = f.to_uppercase() + &s[1..];
    }
    s
}

fn find_python() -> Option<String> {
    if close_core::bench::smoke() {
        return None;
    }
    let cands: Vec<String> = std::env::var("CLOSE_PYTHON")
        .ok()
        .into_iter()
        .chain(["/work/venv/bin/python".to_string(), "python3".to_string()])
        .collect();
    cands.into_iter().find(|p| {
        Command::new(p)
            .args(["-c", "import pycocoevalcap.cider.cider, pycocoevalcap.bleu.bleu, pycocoevalcap.rouge.rouge"])
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

const PY: &str = r#"
import json, sys, time
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.cider.cider import Cider
d = json.load(open(sys.argv[1]))
gts = {int(k): v for k, v in d["refs"].items()}
res = {int(k): [v] for k, v in d["hyps"].items()}
t = time.perf_counter()
b, _ = Bleu(4).compute_score(gts, res, verbose=0)
r, _ = Rouge().compute_score(gts, res)
c, _ = Cider().compute_score(gts, res)
dt = time.perf_counter() - t
print(json.dumps({"seconds": dt, "Bleu_4": b[3], "ROUGE_L": float(r), "CIDEr": float(c)}))
"#;

close_core::global_allocator!();

fn main() {
    close_core::threads::init();
    close_core::alloc::init();
    println!("{}", close_core::bench::CpuInfo::detect());
    const TOPICS: [&[&str]; 6] = [
        &["dog", "frisbee", "grass", "park", "running", "ball"],
        &["pizza", "plate", "table", "slice", "kitchen", "food"],
        &["bus", "street", "city", "parked", "road", "traffic"],
        &["skier", "snow", "slope", "mountain", "skis", "hill"],
        &["cat", "bed", "laptop", "sleeping", "couch", "window"],
        &["train", "tracks", "station", "platform", "yellow", "tunnel"],
    ];
    let mut rng = Lcg(1234);
    let mut refs: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    let mut hyps: BTreeMap<u64, String> = BTreeMap::new();
    for i in 0..IMAGES as u64 {
        let topic = TOPICS[(i as usize) % TOPICS.len()];
        refs.insert(i, (0..REFS).map(|_| caption(&mut rng, topic)).collect());
        hyps.insert(i, caption(&mut rng, topic));
    }

    // Ours, including PTB tokenization (warm-up builds the lexer's lazy DFAs).
    let _ = caption::score(&refs, &hyps);
    let reps = if close_core::bench::smoke() { 1 } else { 5 };
    let t = Instant::now();
    for _ in 0..reps {
        std::hint::black_box(caption::score(&refs, &hyps).expect("score"));
    }
    let with_tok = t.elapsed().as_secs_f64() / reps as f64;

    // Tokenize once, then time the scorers alone.
    let ids: Vec<u64> = hyps.keys().copied().collect();
    let tok_refs: Vec<Vec<String>> = ids.iter().map(|id| ptb::tokenize(&refs[id])).collect();
    let tok_hyps: Vec<String> =
        ptb::tokenize(&ids.iter().map(|id| hyps[id].as_str()).collect::<Vec<_>>());
    let t = Instant::now();
    let mut last = None;
    for _ in 0..reps {
        let b = bleu::bleu(&tok_refs, &tok_hyps);
        let r = rouge::rouge_l(&tok_refs, &tok_hyps);
        let c = cider::cider_d(&tok_refs, &tok_hyps);
        last = Some((b.corpus[3], r.corpus, c.corpus));
    }
    let scorers = t.elapsed().as_secs_f64() / reps as f64;
    let (b4, rl, cd) = last.unwrap_or_default();
    println!(
        "caption metrics, {IMAGES} images x {REFS} references (threads: {})",
        rayon::current_num_threads()
    );
    println!(
        "  ours, scorers only (BLEU+ROUGE-L+CIDEr-D): {:8.1} ms",
        scorers * 1e3
    );
    println!(
        "  ours, PTB tokenization + scorers:          {:8.1} ms",
        with_tok * 1e3
    );
    println!("  Bleu_4 {b4:.6}  ROUGE_L {rl:.6}  CIDEr {cd:.6}");

    let Some(py) = find_python() else {
        println!("  pycocoevalcap: not found (set CLOSE_PYTHON to a python with pycocoevalcap) — no ratio");
        return;
    };
    let dir = std::env::temp_dir().join(format!("close-bench-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let data = dir.join("data.json");
    let script = dir.join("bench.py");
    let payload = serde_json::json!({
        "refs": ids.iter().zip(&tok_refs).map(|(i, r)| (i.to_string(), serde_json::Value::from(r.clone()))).collect::<serde_json::Map<_, _>>(),
        "hyps": ids.iter().zip(&tok_hyps).map(|(i, h)| (i.to_string(), serde_json::Value::from(h.clone()))).collect::<serde_json::Map<_, _>>(),
    });
    let ok = std::fs::write(&data, payload.to_string()).is_ok()
        && std::fs::File::create(&script)
            .and_then(|mut f| f.write_all(PY.as_bytes()))
            .is_ok();
    if !ok {
        println!("  pycocoevalcap: cannot write temp files — no ratio");
        return;
    }
    let out = Command::new(&py).arg(&script).arg(&data).output();
    let _ = std::fs::remove_dir_all(&dir);
    match out {
        Ok(o) if o.status.success() => {
            let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
            let secs = v["seconds"].as_f64().unwrap_or(f64::NAN);
            println!(
                "  pycocoevalcap scorers only ({py}):   {:8.1} ms  (Java tokenizer not timed)",
                secs * 1e3
            );
            println!(
                "  pycocoevalcap: Bleu_4 {:.6}  ROUGE_L {:.6}  CIDEr {:.6}",
                v["Bleu_4"].as_f64().unwrap_or(f64::NAN),
                v["ROUGE_L"].as_f64().unwrap_or(f64::NAN),
                v["CIDEr"].as_f64().unwrap_or(f64::NAN)
            );
            println!(
                "  speed-up, scorers vs scorers:           {:8.1}x",
                secs / scorers
            );
            println!(
                "  speed-up, ours incl. tokenization:      {:8.1}x",
                secs / with_tok
            );
        }
        Ok(o) => println!(
            "  pycocoevalcap run failed: {}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => println!("  pycocoevalcap run failed: {e}"),
    }
}
