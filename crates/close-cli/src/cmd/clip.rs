//! `close clip` (not implemented yet).

use crate::common::Ctx;

#[derive(clap::Subcommand, Debug)]
pub enum ClipCommand {
    /// Not implemented yet.
    Train,
}

pub fn run(_cmd: ClipCommand, _ctx: &Ctx) -> anyhow::Result<()> {
    anyhow::bail!("`close clip` is not implemented yet")
}
