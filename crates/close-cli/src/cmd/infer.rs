//! `close caption`, `close vqa`, `close entail` (not implemented yet).

use crate::common::Ctx;

#[derive(clap::Args, Debug)]
pub struct CaptionArgs {}
#[derive(clap::Args, Debug)]
pub struct VqaArgs {}
#[derive(clap::Args, Debug)]
pub struct EntailArgs {}

pub fn caption(_a: CaptionArgs, _ctx: &Ctx) -> anyhow::Result<()> {
    anyhow::bail!("`close caption` is not implemented yet")
}
pub fn vqa(_a: VqaArgs, _ctx: &Ctx) -> anyhow::Result<()> {
    anyhow::bail!("`close vqa` is not implemented yet")
}
pub fn entail(_a: EntailArgs, _ctx: &Ctx) -> anyhow::Result<()> {
    anyhow::bail!("`close entail` is not implemented yet")
}
