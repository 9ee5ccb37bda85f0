//! `close score`: official-identical metrics on standard files, JSON on stdout.

use std::path::PathBuf;

use crate::common::Ctx;

#[derive(clap::Subcommand, Debug)]
pub enum ScoreCommand {
    /// Captioning (pycocoevalcap): BLEU-1..4, ROUGE-L, CIDEr-D [+ METEOR with --meteor-jar].
    Caption {
        /// COCO captions annotations (`{"images":[…],"annotations":[{"image_id","caption"}]}`).
        #[arg(long)]
        annotations: PathBuf,
        /// COCO results (`[{"image_id","caption"}]`); only these images are scored.
        #[arg(long)]
        results: PathBuf,
        /// meteor-1.5.jar (needs `java`); without it METEOR is not reported.
        #[arg(long)]
        meteor_jar: Option<PathBuf>,
        /// Fail if an annotated image has no result (default: score the result images).
        #[arg(long)]
        require_all: bool,
        /// Also write per-image scores (pycocoevalcap `evalImgs` layout) to this JSON file.
        #[arg(long)]
        per_image: Option<PathBuf>,
    },
    /// VQA accuracy exactly as the official evaluator (0–100, two decimals).
    Vqa {
        #[arg(long)]
        questions: PathBuf,
        #[arg(long)]
        annotations: PathBuf,
        /// `[{"question_id","answer"}]`, one per annotated question.
        #[arg(long)]
        results: PathBuf,
        /// Also write per-question accuracies (`evalQA`) to this JSON file.
        #[arg(long)]
        per_question: Option<PathBuf>,
    },
    /// Visual entailment (SNLI-VE): accuracy, per-class precision/recall/F1, confusion matrix.
    Ve {
        /// SNLI-VE jsonl (`pairID`, `gold_label`, …).
        #[arg(long)]
        gold: PathBuf,
        /// jsonl with `pairID` and `label` (or `prediction` / `answer`).
        #[arg(long)]
        results: PathBuf,
    },
}

fn print(v: &serde_json::Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

pub fn run(cmd: ScoreCommand, _ctx: &Ctx) -> anyhow::Result<()> {
    match cmd {
        ScoreCommand::Caption {
            annotations,
            results,
            meteor_jar,
            require_all,
            per_image,
        } => {
            let opts = close_metrics::caption::ScoreOptions {
                meteor_jar,
                require_all,
            };
            let s = close_metrics::caption::evaluate_files(&annotations, &results, &opts)?;
            if let Some(p) = per_image {
                close_core::io::write_json_atomic(&p, &s.per_image_json())?;
            }
            print(&s.to_json())
        }
        ScoreCommand::Vqa {
            questions,
            annotations,
            results,
            per_question,
        } => {
            let s = close_metrics::vqa::evaluate_files(&questions, &annotations, &results)?;
            if let Some(p) = per_question {
                let m: serde_json::Map<String, serde_json::Value> = s
                    .per_question
                    .iter()
                    .map(|(k, v)| (k.to_string(), (*v).into()))
                    .collect();
                close_core::io::write_json_atomic(&p, &m)?;
            }
            print(&s.to_json())
        }
        ScoreCommand::Ve { gold, results } => {
            let s = close_metrics::entailment::evaluate_files(&gold, &results)?;
            print(&s.to_json())
        }
    }
}
