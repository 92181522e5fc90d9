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
use std::path::PathBuf;

use super::{child, xml_error};
use crate::error::{Error, Result};

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
