//! `dog vdi alter-copy` and `dog cluster alter-copy`: the number of copies of one standalone
//! VDI (its objects move: ALTER_VDI_COPY after its inode says the new number) or of the VDIs
//! created from now on (ALTER_CLUSTER_COPY), with the original's prompts, texts and exit
//! codes. Erasure coded VDIs and clusters are refused, as the original does.
//! Owns: these two commands. Never: option parsing, placement.

use crate::cluster::confirm;
use crate::error::{Fail, Res, EXIT_FAILURE};
use crate::lookup;
use crate::Ctx;
use proto::{opcode, Header, SdResult};

const ALTER_CLUSTER_COPY_PRINT: &str = "    __\n   ()'`;\n   /\\|`  Caution! Changing cluster's \
     redundancy level will affect\n  /  |   all the VDIs to be created later.\n(/_)_|_  Are \
     you sure you want to continue? [yes/no]: ";
const ALTER_VDI_COPY_PRINT: &str = "    __\n   ()'`;\n   /\\|`  Caution! Changing VDI's \
     redundancy level will affect\n  /  |   the VDI itself only and trigger recovery.\n(/_)_|_  \
     Are you sure you want to continue? [yes/no]: ";

/// The copies asked for with `-c` (the default 3 when none, said on stdout as the original),
/// refused for erasure coding.
fn wanted(ctx: &Ctx<'_>, what: &str) -> Res<u8> {
    match ctx.opts.copies {
        Some((_, policy)) if policy != 0 => Err(Fail::usage(
            "Changing redundancy level of erasure coded vdi is not supported yet.",
        )),
        Some((copies, _)) => Ok(copies),
        None => {
            outln!(
                "The {what}'s redundancy level is not specified, use {} as default.",
                proto::SD_DEFAULT_COPIES
            );
            Ok(proto::SD_DEFAULT_COPIES)
        }
    }
}

/// Unless `-f`: asks before keeping more copies than there are nodes.
fn more_than_nodes(ctx: &Ctx<'_>, copies: u8) -> Res<()> {
    let nodes = ctx.nodes()?.nodes.len();
    if !ctx.opts.force && usize::from(copies) > nodes {
        confirm(&format!(
            "Number of copies ({copies}) is larger than number of nodes ({nodes}).\n\
             Are you sure you want to continue? [yes/no]: "
        ))?;
    }
    Ok(())
}

pub async fn cluster_alter_copy(ctx: &Ctx<'_>) -> Res<()> {
    let copies = wanted(ctx, "cluster")?;
    more_than_nodes(ctx, copies)?;
    let r = ctx
        .sheep
        .call(Header::request(opcode::GET_CLUSTER_DEFAULT))
        .await?;
    if r.result() != SdResult::SUCCESS {
        return Err(Fail::new(
            EXIT_FAILURE,
            format!("Response's result: {}", r.result().text()),
        ));
    }
    let (old, policy) = (
        r.header.rsp_default_copies(),
        r.header.rsp_default_copy_policy(),
    );
    if policy != 0 {
        return Err(Fail::new(
            EXIT_FAILURE,
            "The cluster's copy policy is erasure code, changing it is not supported yet.",
        ));
    }
    if old == copies {
        return Err(Fail::new(
            EXIT_FAILURE,
            format!("The cluster's redundancy level is already set to {copies}, nothing changed."),
        ));
    }
    if !ctx.opts.force {
        confirm(ALTER_CLUSTER_COPY_PRINT)?;
    }
    let mut h = Header::request(opcode::ALTER_CLUSTER_COPY);
    h.set_cluster_copies(copies).set_cluster_copy_policy(0);
    let r = ctx.sheep.call(h).await?;
    if r.result() != SdResult::SUCCESS {
        return Err(Fail::new(
            EXIT_FAILURE,
            "Changing the cluster's redundancy level failure.",
        ));
    }
    errln!("The cluster's redundancy level is set to {copies}, the old one was {old}.");
    Ok(())
}

pub async fn vdi_alter_copy(ctx: &Ctx<'_>) -> Res<()> {
    let name = ctx.arg(0).ok_or_else(|| Fail::usage(""))?;
    let copies = wanted(ctx, "vdi")?;
    more_than_nodes(ctx, copies)?;
    let none = crate::cli::Snap::default();
    let ino = lookup::open(&ctx.sheep, name, &none, false)
        .await
        .map_err(|_| {
            Fail::new(
                EXIT_FAILURE,
                format!("Reading {name}'s vdi object failure."),
            )
        })?;
    if ino.hdr.copy_policy != 0 {
        return Err(Fail::new(
            EXIT_FAILURE,
            format!("{name}'s copy policy is erasure code, changing it is not supported yet."),
        ));
    }
    let old = ino.hdr.nr_copies;
    if old == copies {
        return Err(Fail::new(
            EXIT_FAILURE,
            format!("{name}'s redundancy level is already set to {old}, nothing changed."),
        ));
    }
    // Standalone: no parent, and no VDI starts from it (no snapshot, no clone).
    let vid = ino.vid();
    let mut related = ino.hdr.parent_vdi_id != 0;
    lookup::walk(&ctx.sheep, false, |other| {
        related |= !other.hdr.name.is_empty() && other.hdr.parent_vdi_id == vid;
    })
    .await?;
    if related {
        return Err(Fail::new(
            EXIT_FAILURE,
            format!(
                "Only standalone vdi supports changing redundancy level.\n\
                 Please clone {name} with -n (--no-share) option first."
            ),
        ));
    }
    if !ctx.opts.force {
        confirm(ALTER_VDI_COPY_PRINT)?;
    }
    // The inode says the new number first (written where its copies are now), then the
    // cluster moves the objects.
    let mut hdr = ino.hdr.clone();
    hdr.nr_copies = copies;
    if client::volumes::write_header_at(ctx.sheep.conn(), &hdr, old)
        .await
        .is_err()
    {
        return Err(Fail::new(
            EXIT_FAILURE,
            format!(
                "Overwrite the vdi object's header of {name} failure while setting its \
                 redundancy level."
            ),
        ));
    }
    let mut h = Header::request(opcode::ALTER_VDI_COPY);
    h.set_new_vid(vid)
        .set_vs_copies(copies)
        .set_vs_copy_policy(0)
        .set_vs_block_size_shift(ino.hdr.block_size_shift);
    let r = ctx.sheep.call(h).await?;
    if r.result() != SdResult::SUCCESS {
        return Err(Fail::new(
            EXIT_FAILURE,
            format!("Changing {name}'s redundancy level failure."),
        ));
    }
    errln!("{name}'s redundancy level is set to {copies}, the old one was {old}.");
    Ok(())
}
