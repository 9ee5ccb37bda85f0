//! `close adapter` (not implemented yet).

use crate::common::Ctx;

#[derive(clap::Subcommand, Debug)]
pub enum AdapterCommand {
    /// Not implemented yet.
    Fit,
}

pub fn run(_cmd: AdapterCommand, _ctx: &Ctx) -> anyhow::Result<()> {
    anyhow::bail!("`close adapter` is not implemented yet")
}
