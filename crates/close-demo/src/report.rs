//! The demo's report: the experiment's, headed by the world and the CLIP, with the probes.

use std::fmt::Write as _;
use std::path::Path;

use close_core::Result;
use close_experiment::report::{write_outputs, ReportHeader};

use crate::config::DemoConfig;
use crate::probes::ProbeResult;
use crate::run::DemoOutput;

fn probes_section(probes: &[ProbeResult]) -> String {
    let mut s = String::new();
    if probes.is_empty() {
        return s;
    }
    let _ = writeln!(
        s,
        "### What the image vectors hold (zero-shot probes, val and test images)\n"
    );
    let _ = writeln!(s, "Each probe ranks captions of an image that differ in one respect only; right = the true caption is the image vector's nearest. A CLOSE model can read from an image vector only what it holds, and learns from text only what text and image vectors agree on.\n");
    let _ = writeln!(s, "| probe | images | right | chance |");
    let _ = writeln!(s, "|---|---|---|---|");
    for p in probes {
        let _ = writeln!(
            s,
            "| {} | {} | {:.0}% | {:.0}% |",
            p.kind,
            p.images,
            p.accuracy * 100.0,
            p.chance * 100.0
        );
    }
    let _ = writeln!(s);
    s
}

/// Write every output file into `out`; returns the markdown report.
pub fn write_demo_outputs(
    cfg: &DemoConfig,
    output: &DemoOutput,
    out: &Path,
    machine: &str,
) -> Result<String> {
    let mut setup = String::new();
    let _ = writeln!(
        setup,
        "Produced by `close demo{}` (seed {}) on {machine}.\n",
        if cfg.quick { " --quick" } else { "" },
        cfg.seed
    );
    let w = &cfg.world;
    let _ = writeln!(
        setup,
        "- World: {} images of {} px, 1–{} objects per image.",
        w.images, w.size, w.max_objects
    );
    let (vc, tc) = (&cfg.clip.model.vision_config, &cfg.clip.model.text_config);
    let _ = writeln!(setup, "- CLIP from scratch: ViT {} layers × {} wide, patch {}, image {} px; text {} layers × {} wide; {} epochs, batch {}.",
        vc.num_hidden_layers, vc.hidden_size, vc.patch_size, vc.image_size, tc.num_hidden_layers, tc.hidden_size, cfg.clip.epochs, cfg.clip.batch_size);
    let _ = writeln!(setup, "- The style task has no image-trained upper bound: its training data is a text corpus only.");
    let header = ReportHeader {
        title: "CLOSE on the shapes world".into(),
        setup,
        clip_sections: probes_section(&output.probes),
    };
    write_outputs(&cfg.experiment, &output.experiment, out, &header)
}
