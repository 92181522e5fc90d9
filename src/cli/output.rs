//! Printing results: one JSON document with `--json`, else short human lines.

use std::io::{self, Write};

use serde::Serialize;

use kluis::recovery_point::Manifest;
use kluis::timefmt::point_names;
use kluis::vault::Vault;
use kluis::verify::VerifyReport;
use kluis::{Error, Result};

pub struct Out {
    json: bool,
}

impl Out {
    pub fn new(json: bool) -> Out {
        Out { json }
    }

    /// Prints `value` as JSON, or the human line `human()`.
    pub fn result<T: Serialize>(&self, value: &T, human: impl FnOnce() -> String) -> Result<()> {
        if self.json {
            self.json_value(value)
        } else {
            self.line(&human())
        }
    }

    pub fn json_value<T: Serialize>(&self, value: &T) -> Result<()> {
        let s = serde_json::to_string_pretty(value).expect("serializable output");
        self.line(&s)
    }

    pub fn line(&self, s: &str) -> Result<()> {
        writeln!(io::stdout().lock(), "{s}").map_err(|e| Error::io("write output", e))
    }

    pub fn is_json(&self) -> bool {
        self.json
    }
}

pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 { format!("{n} B") } else { format!("{v:.1} {}", UNITS[u]) }
}

#[derive(Serialize)]
struct PointOut {
    item: String,
    name: String,
    time: String,
    id: String,
    consistency: String,
    disks: Vec<DiskOut>,
    configs: Vec<String>,
    logical_size: u64,
    new_bytes: u64,
    stored_bytes: u64,
    /// How the disks were captured (reflink, snapshot, held-freeze, live).
    capture: Option<String>,
    deleted: Option<String>,
    /// When gc may reclaim a deleted point (end of the soft-delete window).
    purge_after: Option<String>,
    /// Chunks it needs are damaged (verify names them): restore needs --partial.
    damaged: bool,
}

#[derive(Serialize)]
struct DiskOut {
    name: String,
    size: u64,
    source: String,
    /// Changed-block tracking, as the manifest records it (absent when none).
    #[serde(skip_serializing_if = "Option::is_none")]
    tracking: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    base: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fallback: Option<String>,
}

pub fn points(out: &Out, vault: &Vault, item: Option<&str>, deleted: bool) -> Result<()> {
    let rows = vault.catalog().points(item, deleted)?;
    if let Some(i) = item
        && rows.is_empty()
        && !vault.catalog().items()?.iter().any(|x| x == i)
    {
        return Err(Error::NotFound(format!("no recovery points for item {i:?}")));
    }
    let window = kluis::settings::soft_delete_ms(vault)?;
    let mut list = Vec::new();
    let mut by_item: std::collections::BTreeMap<&str, Vec<&kluis::catalog::PointRow>> = Default::default();
    for r in &rows {
        by_item.entry(&r.item).or_default().push(r);
    }
    for (_, ps) in by_item {
        let names = point_names(&ps.iter().map(|p| p.time_ms).collect::<Vec<_>>());
        for (p, name) in ps.into_iter().zip(names) {
            let m = Manifest::parse(&p.manifest)?;
            list.push(PointOut {
                item: p.item.clone(),
                name,
                time: m.time.clone(),
                id: p.id.to_hex(),
                consistency: p.consistency.clone(),
                disks: m.disks.iter().map(|d| DiskOut {
                        name: d.name.clone(),
                        size: d.size,
                        source: d.source.clone(),
                        tracking: d.tracking.clone(),
                        base: d.base.clone(),
                        fallback: d.fallback.clone(),
                    }).collect(),
                configs: m.configs.iter().map(|c| c.name.clone()).collect(),
                logical_size: p.logical_size,
                new_bytes: p.new_bytes,
                stored_bytes: p.stored_bytes,
                capture: p.capture.clone(),
                deleted: p.deleted_ms.map(kluis::timefmt::rfc3339_s),
                purge_after: p.deleted_ms.map(|d| kluis::timefmt::rfc3339_s(d + window)),
                damaged: p.damaged,
            });
        }
    }
    if out.is_json() {
        return out.json_value(&list);
    }
    out.line(&format!("{:<10} {:<24} {:<8} {:<11} {:>10} {:>10}  {}", "ITEM", "TIME", "ID", "CONSISTENCY", "SIZE", "NEW", "DISKS"))?;
    for p in &list {
        let disks: Vec<String> = p.disks.iter().map(|d| format!("{}({})", d.name, bytes(d.size))).collect();
        out.line(&format!(
            "{:<10} {:<24} {:<8} {:<11} {:>10} {:>10}  {}{}{}",
            p.item,
            p.name,
            &p.id[..8],
            p.consistency,
            bytes(p.logical_size),
            bytes(p.new_bytes),
            disks.join(" "),
            p.purge_after.as_ref().map(|t| format!("  [deleted; undelete before {t}]")).unwrap_or_default(),
            if p.damaged { "  [DAMAGED: `kluis verify` names what; restore --partial]" } else { "" }
        ))?;
    }
    Ok(())
}

pub fn verify(out: &Out, rep: &VerifyReport) -> Result<()> {
    if out.is_json() {
        return out.json_value(rep);
    }
    for d in &rep.damaged {
        let mut line = format!("damaged: chunk {} ({}): {}", &d.chunk[..8], d.location, d.error);
        if d.affects.is_empty() {
            // Its users are unknown when a map page above it is unreadable.
            line.push_str(if rep.unreadable_map_pages > 0 { "; no readable block map uses it" } else { "; no recovery point uses it" });
        }
        out.line(&line)?;
        for a in &d.affects {
            let ranges: Vec<String> = a.ranges.iter().map(|(s, e)| format!("{s}..{e}")).collect();
            out.line(&format!("  affects {}@{} {} bytes {}", a.item, a.point, a.part, ranges.join(", ")))?;
        }
    }
    out.line(&format!(
        "{}: {} points, {} packs, {} chunks checked, {} read, {} damaged, {} unreferenced chunks, {} orphan packs",
        if rep.is_clean() { "ok" } else { "DAMAGED" },
        rep.points,
        rep.packs,
        rep.chunks_checked,
        bytes(rep.bytes_read),
        rep.damaged.len(),
        rep.unreferenced_chunks,
        rep.orphan_packs
    ))
}
