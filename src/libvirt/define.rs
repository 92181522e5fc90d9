//! A new domain from a recovery point's saved XML (`restore
//! --libvirt-define NEWNAME --to-dir DIR`): the cloud vault's "create VM".
//!
//! The saved XML is edited, not rebuilt, so that everything kluis does not
//! know about stays as it was: the name becomes NEWNAME; `<uuid>`, each
//! interface's `<mac>` and the UEFI `<nvram>` file are dropped, so libvirt
//! makes new ones (a copy must not clash with the original on the same
//! host or network); each restored disk becomes a file disk whose source is
//! its image in DIR, with the restore's format and no backing chain. Disks
//! kluis did not back up (cdroms, floppies) keep their media.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use super::{child, xml_error, Virsh};
use crate::catalog::PointRow;
use crate::error::{Error, Result};
use crate::image::TargetFormat;
use crate::progress::Progress;
use crate::recovery_point::Manifest;
use crate::vault::Vault;

/// A restored disk: its target device, where its image is, and the
/// image's format (`raw` or `qcow2`).
pub struct NewDisk {
    pub target: String,
    pub path: PathBuf,
    pub format: &'static str,
}

fn attr_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('\'', "&apos;").replace('"', "&quot;")
}

/// The saved `xml` made into the definition of a new domain `name` whose
/// disks are `disks`. Every disk of `disks` must be in the XML.
pub fn rewrite(xml: &str, name: &str, disks: &[NewDisk]) -> Result<String> {
    let doc = roxmltree::Document::parse(xml).map_err(xml_error)?;
    let root = doc.root_element();
    // (range of the original, replacement), applied back to front.
    let mut edits: Vec<(Range<usize>, String)> = Vec::new();
    let name_node = child(root, "name").ok_or_else(|| Error::InvalidInput("the saved domain XML has no <name>".into()))?;
    let text = name_node.first_child().filter(|t| t.is_text()).ok_or_else(|| Error::InvalidInput("the saved domain XML has an empty <name>".into()))?;
    edits.push((text.range(), name.replace('&', "&amp;").replace('<', "&lt;")));
    if let Some(u) = child(root, "uuid") {
        edits.push((u.range(), String::new()));
    }
    if let Some(nv) = child(root, "os").and_then(|os| child(os, "nvram")) {
        edits.push((nv.range(), String::new()));
    }
    let mut found = Vec::new();
    if let Some(devices) = child(root, "devices") {
        for iface in devices.children().filter(|c| c.has_tag_name("interface")) {
            if let Some(mac) = child(iface, "mac") {
                edits.push((mac.range(), String::new()));
            }
        }
        for d in devices.children().filter(|c| c.has_tag_name("disk")) {
            let Some(target) = child(d, "target").and_then(|t| t.attribute("dev")) else { continue };
            let Some(new) = disks.iter().find(|n| n.target == target) else { continue };
            found.push(target.to_owned());
            let source = format!("<source file='{}'/>", attr_escape(&new.path.to_string_lossy()));
            match d.attributes().find(|a| a.name() == "type") {
                Some(a) => edits.push((a.range_value(), "file".into())),
                None => {
                    let at = d.range().start + "<disk".len();
                    edits.push((at..at, " type='file'".into()));
                }
            }
            match child(d, "driver") {
                Some(drv) => match drv.attributes().find(|a| a.name() == "type") {
                    Some(a) => edits.push((a.range_value(), new.format.into())),
                    None => {
                        let at = drv.range().start + "<driver".len();
                        edits.push((at..at, format!(" type='{}'", new.format)));
                    }
                },
                None => {
                    let at = child(d, "target").expect("has a target").range().start;
                    edits.push((at..at, format!("<driver name='qemu' type='{}'/>", new.format)));
                }
            }
            match child(d, "source") {
                Some(src) => edits.push((src.range(), source)),
                None => {
                    let at = child(d, "target").expect("has a target").range().start;
                    edits.push((at..at, source));
                }
            }
            for b in d.children().filter(|c| c.has_tag_name("backingStore")) {
                edits.push((b.range(), String::new()));
            }
        }
    }
    if let Some(missing) = disks.iter().find(|n| !found.contains(&n.target)) {
        return Err(Error::InvalidInput(format!("the saved domain XML has no disk {}", missing.target)));
    }
    edits.sort_by_key(|(r, _)| std::cmp::Reverse(r.start));
    let mut out = xml.to_owned();
    for (r, s) in edits {
        out.replace_range(r, &s);
    }
    Ok(out)
}

/// What `restore --libvirt-define` did.
#[derive(Debug, serde::Serialize)]
pub struct DefineReport {
    pub item: String,
    pub point: String,
    /// The new domain's name.
    pub domain: String,
    /// Where its definition was written (and defined from).
    pub xml: String,
    pub disks: Vec<crate::restore::RestoreReport>,
}

/// The point's saved domain XML: the config file that is a `<domain>`.
fn saved_domain_xml(vault: &Vault, point: &PointRow) -> Result<String> {
    let m = Manifest::parse(&point.manifest)?;
    let fetch = vault.fetcher()?;
    for c in m.configs.iter().filter(|c| c.name.ends_with(".xml")) {
        let mut bytes = Vec::with_capacity(c.size as usize);
        for h in &c.chunks {
            let id = crate::id::ChunkId::from_hex(h).ok_or_else(|| Error::Corrupt(format!("config {}: bad chunk id", c.name)))?;
            bytes.extend_from_slice(&fetch.fetch(&id)?);
        }
        bytes.truncate(c.size as usize);
        let Ok(text) = String::from_utf8(bytes) else { continue };
        if roxmltree::Document::parse(&text).is_ok_and(|d| d.root_element().has_tag_name("domain")) {
            return Ok(text);
        }
    }
    Err(Error::NotFound(format!("{}@{} keeps no libvirt domain XML (it was not taken with --libvirt)", point.item, crate::timefmt::rfc3339_s(point.time_ms))))
}

/// Restores every disk of `point` into `dir` and defines domain `name`
/// from the point's XML (see the module docs); the domain is not started.
/// Everything is checked before a byte is written: the name is free in
/// libvirt, the point has the XML and every disk is in it.
#[allow(clippy::too_many_arguments)]
pub fn define_from_point(
    vault: &Vault,
    point: &PointRow,
    virsh: &Virsh,
    name: &str,
    dir: &Path,
    format: TargetFormat,
    force: bool,
    progress: &dyn Progress,
    cancel: &AtomicBool,
) -> Result<DefineReport> {
    let fmt = match format {
        TargetFormat::Raw => "raw",
        TargetFormat::Qcow2 => "qcow2",
        _ => return Err(Error::InvalidInput(format!("--libvirt-define restores raw or qcow2 disks, not {}", format.name()))),
    };
    crate::backup::check_name("domain", name)?;
    if virsh.run(&["domstate", name]).is_ok() {
        return Err(Error::AlreadyExists(format!("libvirt already has a domain named {name}")));
    }
    let xml = saved_domain_xml(vault, point)?;
    let dir = std::path::absolute(dir).map_err(|e| Error::io_path("resolve", dir, e))?;
    let targets = crate::restore::targets_in_dir(point, &[], &dir, format)?;
    let new_disks = |ts: &[crate::restore::RestoreTarget]| ts.iter().map(|t| NewDisk { target: t.disk.clone(), path: t.to.clone(), format: fmt }).collect::<Vec<_>>();
    let new_xml = rewrite(&xml, name, &new_disks(&targets))?;
    let xml_path = dir.join(format!("{name}.xml"));
    if xml_path.exists() && !force {
        return Err(Error::AlreadyExists(format!("{} exists; use --force to overwrite it", xml_path.display())));
    }
    let disks = crate::restore::restore_disks(vault, point, &targets, format, force, false, progress, cancel)?;
    std::fs::write(&xml_path, &new_xml).map_err(|e| Error::io_path("write", &xml_path, e))?;
    virsh.run(&["define", &xml_path.to_string_lossy()]).map_err(|e| {
        Error::InvalidInput(format!("the disks are restored in {}, but libvirt did not define {name}: {e}", dir.display()))
    })?;
    Ok(DefineReport { item: point.item.clone(), point: point.id.to_hex(), domain: name.to_owned(), xml: xml_path.display().to_string(), disks })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renames_drops_identity_and_points_disks_at_the_restore() {
        let xml = r#"<domain type='kvm'>
  <name>web01</name>
  <uuid>0c2b3d2e-1111-2222-3333-444455556666</uuid>
  <os><type>hvm</type><loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE.fd</loader><nvram>/var/lib/libvirt/qemu/nvram/web01_VARS.fd</nvram></os>
  <devices>
    <disk type='block' device='disk'>
      <driver name='qemu' type='raw' cache='none'/>
      <source dev='/dev/vg/web01'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/img/data.qcow2'><seclabel model='dac' relabel='no'/></source>
      <backingStore type='file'><format type='qcow2'/><source file='/img/base.qcow2'/></backingStore>
      <target dev='vdb' bus='virtio'/>
    </disk>
    <disk type='file' device='cdrom'><source file='/iso/x.iso'/><target dev='sda' bus='sata'/></disk>
    <interface type='network'><mac address='52:54:00:aa:bb:cc'/><source network='default'/></interface>
  </devices>
</domain>"#;
        let disks = vec![
            NewDisk { target: "vda".into(), path: "/restore/vda.qcow2".into(), format: "qcow2" },
            NewDisk { target: "vdb".into(), path: "/restore/it's.qcow2".into(), format: "qcow2" },
        ];
        let out = rewrite(xml, "web01-copy", &disks).unwrap();
        let (name, parsed) = super::super::parse_domain(&out).unwrap();
        assert_eq!(name, "web01-copy");
        assert!(!out.contains("<uuid>") && !out.contains("52:54:00:aa:bb:cc") && !out.contains("nvram") && !out.contains("backingStore"));
        assert!(out.contains("<loader readonly='yes' type='pflash'>") && out.contains("<source network='default'/>"));
        assert_eq!(parsed[0].source.as_deref(), Some(std::path::Path::new("/restore/vda.qcow2")));
        assert_eq!(parsed[1].source.as_deref(), Some(std::path::Path::new("/restore/it's.qcow2")));
        assert!(parsed.iter().all(|d| d.kind == "file" && d.format.as_deref() == Some("qcow2")));
        assert!(out.contains("<driver name='qemu' type='qcow2' cache='none'/>"));
        assert!(out.contains("<source file='/iso/x.iso'/>"));
        assert!(rewrite(xml, "x", &[NewDisk { target: "vdz".into(), path: "/x".into(), format: "raw" }]).unwrap_err().to_string().contains("no disk vdz"));
    }
}
