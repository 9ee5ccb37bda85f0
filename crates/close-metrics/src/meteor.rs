//! METEOR 1.5 through the official jar, driven exactly like pycocoevalcap's `Meteor`:
//! `java -jar -Xmx2G meteor-1.5.jar - - -stdio -l en -norm` (working directory: the jar's
//! folder, where it finds `data/paraphrase-en.gz`), one `SCORE ||| ref… ||| hyp` line per
//! image (the hypothesis with `|||` removed and double spaces collapsed once), then one
//! `EVAL ||| stats…` line; the jar answers the per-image scores and the corpus score.
//!
//! There is no Rust re-implementation: without Java and the jar METEOR is unavailable, and
//! callers must report it as such, never a made-up value.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use close_core::{Error, Result};

/// Corpus METEOR and per-image values (inputs tokenized as for the other metrics).
pub fn meteor(jar: &Path, refs: &[Vec<String>], hyps: &[String]) -> Result<(f64, Vec<f64>)> {
    if !jar.is_file() {
        return Err(Error::config(
            "--meteor-jar",
            format!("{} is not a file", jar.display()),
        ));
    }
    let dir = jar
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = jar
        .file_name()
        .ok_or_else(|| Error::config("--meteor-jar", "no file name"))?;
    let mut child = Command::new("java")
        .args(["-jar", "-Xmx2G"])
        .arg(name)
        .args(["-", "-", "-stdio", "-l", "en", "-norm"])
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| {
            Error::invalid(format!(
                "METEOR: cannot start `java` ({e}); is Java installed?"
            ))
        })?;
    let result = (|| -> Result<(f64, Vec<f64>)> {
        let mut stdin = child
            .stdin
            .take()
            .ok_or_else(|| Error::invalid("METEOR: no stdin"))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| Error::invalid("METEOR: no stdout"))?;
        let mut out = BufReader::new(stdout);
        let io = |e: std::io::Error| Error::invalid(format!("METEOR: java process: {e}"));
        let read_line = |out: &mut BufReader<_>| -> Result<String> {
            let mut s = String::new();
            let n = out.read_line(&mut s).map_err(io)?;
            if n == 0 {
                return Err(Error::invalid(
                    "METEOR: the jar exited early (wrong jar or missing data/paraphrase-en.gz?)",
                ));
            }
            Ok(s.trim().to_string())
        };
        let mut eval = String::from("EVAL");
        for (h, rs) in hyps.iter().zip(refs) {
            let h = h.replace("|||", "").replace("  ", " ");
            let line = format!("SCORE ||| {} ||| {}\n", rs.join(" ||| "), h);
            stdin.write_all(line.as_bytes()).map_err(io)?;
            stdin.flush().map_err(io)?;
            let stat = read_line(&mut out)?;
            eval.push_str(" ||| ");
            eval.push_str(&stat);
        }
        eval.push('\n');
        stdin.write_all(eval.as_bytes()).map_err(io)?;
        stdin.flush().map_err(io)?;
        let parse = |s: String| {
            s.parse::<f64>()
                .map_err(|_| Error::invalid(format!("METEOR: unexpected jar output `{s}`")))
        };
        let mut per = Vec::with_capacity(hyps.len());
        for _ in 0..hyps.len() {
            per.push(parse(read_line(&mut out)?)?);
        }
        let corpus = parse(read_line(&mut out)?)?;
        drop(stdin);
        Ok((corpus, per))
    })();
    let _ = child.kill();
    let _ = child.wait();
    result
}
