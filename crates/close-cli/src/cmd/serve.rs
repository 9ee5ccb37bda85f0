//! `close serve` (not implemented yet).

use crate::common::Ctx;

#[derive(clap::Args, Debug)]
pub struct Args {}

pub fn run(_args: Args, _ctx: &Ctx) -> anyhow::Result<()> {
    anyhow::bail!("`close serve` is not implemented yet")
}
