//! `close score` (not implemented yet).

use crate::common::Ctx;

#[derive(clap::Subcommand, Debug)]
pub enum ScoreCommand {
    /// Not implemented yet.
    Caption,
}

pub fn run(_cmd: ScoreCommand, _ctx: &Ctx) -> anyhow::Result<()> {
    anyhow::bail!("`close score` is not implemented yet")
}
