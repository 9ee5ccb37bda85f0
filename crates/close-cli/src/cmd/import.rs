//! `close import` (not implemented yet).

use crate::common::Ctx;

#[derive(clap::Args, Debug)]
pub struct Args {}

pub fn run(_args: Args, _ctx: &Ctx) -> anyhow::Result<()> {
    anyhow::bail!("`close import` is not implemented yet")
}
