//! The manifest: a small JSON document, stored as a chunk of kind `Manifest`
//! and in the index. Its blake3 hash is the recovery point id.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::id::{ChunkId, RecoveryPointId};

pub const MANIFEST_VERSION: u32 = 1;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct DiskEntry {
    pub name: String,
    pub size: u64,
    pub block_size: u32,
    pub depth: u8,
    /// Hex id of the root map page (all zeros for an empty or all-zero disk).
    pub root: String,
    /// Where it was read from and as what, for the operator's information.
    pub source: String,
    pub source_kind: String,
    /// The changed-block tracker the disk was backed up with
    /// (`dirty-bitmap:NAME` or `changed-ranges`), whether or not it could be
    /// used; absent for a plain backup. A later tracked backup trusts a
    /// dirty bitmap only if its base point names the same bitmap here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracking: Option<String>,
    /// Id of the point whose map gave every block the tracker did not
    /// report as changed (those blocks were not read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
    /// Why the tracker was not used: every block was read and compared by
    /// hash instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
}

impl DiskEntry {
    pub fn root_id(&self) -> Result<ChunkId> {
        ChunkId::from_hex(&self.root).ok_or_else(|| Error::Corrupt(format!("disk {}: bad root id in manifest", self.name)))
    }
    pub fn blocks(&self) -> u64 {
        self.size.div_ceil(self.block_size as u64)
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ConfigEntry {
    /// File name as shown under `config/` (no directories).
    pub name: String,
    pub size: u64,
    /// Hex ids of its chunks, each `block_size` bytes except the last.
    pub chunks: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Manifest {
    pub version: u32,
    pub item: String,
    /// RFC 3339 UTC with milliseconds.
    pub time: String,
    pub consistency: String,
    pub disks: Vec<DiskEntry>,
    pub configs: Vec<ConfigEntry>,
}

impl Manifest {
    /// Canonical bytes: serde_json keeps struct field order, so the same
    /// manifest always serializes to the same bytes and the same id.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("manifest serializes")
    }

    pub fn id_of(bytes: &[u8]) -> RecoveryPointId {
        RecoveryPointId(ChunkId::of(bytes))
    }

    pub fn parse(text: &str) -> Result<Manifest> {
        let m: Manifest = serde_json::from_str(text).map_err(|e| Error::Corrupt(format!("recovery point manifest: {e}")))?;
        if m.version != MANIFEST_VERSION {
            return Err(Error::InvalidInput(format!("recovery point manifest version {} is not supported", m.version)));
        }
        Ok(m)
    }

    pub fn disk(&self, name: &str) -> Result<&DiskEntry> {
        self.disks.iter().find(|d| d.name == name).ok_or_else(|| {
            let names: Vec<_> = self.disks.iter().map(|d| d.name.as_str()).collect();
            Error::NotFound(format!("recovery point of {} has no disk {name:?} (disks: {})", self.item, names.join(", ")))
        })
    }

    pub fn config_chunk_ids(&self) -> Result<Vec<ChunkId>> {
        let mut out = Vec::new();
        for c in &self.configs {
            for h in &c.chunks {
                out.push(ChunkId::from_hex(h).ok_or_else(|| Error::Corrupt(format!("config {}: bad chunk id", c.name)))?);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Golden: the manifest's bytes (and so every recovery point id) must not
    /// change with a refactor.
    #[test]
    fn manifest_golden() {
        let m = Manifest {
            version: 1,
            item: "web01".into(),
            time: "2026-11-21T04:00:00.000Z".into(),
            consistency: "crash".into(),
            disks: vec![DiskEntry {
                name: "os".into(),
                size: 1 << 20,
                block_size: 65536,
                depth: 1,
                root: ChunkId::ZERO.to_hex(),
                source: "/img/os.raw".into(),
                source_kind: "raw".into(),
                tracking: None,
                base: None,
                fallback: None,
            }],
            configs: vec![],
        };
        let text = String::from_utf8(m.to_bytes()).unwrap();
        assert_eq!(
            text,
            r#"{"version":1,"item":"web01","time":"2026-11-21T04:00:00.000Z","consistency":"crash","disks":[{"name":"os","size":1048576,"block_size":65536,"depth":1,"root":"0000000000000000000000000000000000000000000000000000000000000000","source":"/img/os.raw","source_kind":"raw"}],"configs":[]}"#
        );
        assert_eq!(Manifest::parse(&text).unwrap(), m);
    }

    /// Golden: a tracked disk adds its three fields after the others; a
    /// manifest without them (every point before them) still parses.
    #[test]
    fn manifest_tracking_golden() {
        let disk = DiskEntry {
            name: "os".into(),
            size: 1 << 20,
            block_size: 65536,
            depth: 1,
            root: ChunkId::ZERO.to_hex(),
            source: "nbd+unix:///os?socket=/run/os.sock".into(),
            source_kind: "nbd".into(),
            tracking: Some("dirty-bitmap:b0".into()),
            base: Some("11".repeat(32)),
            fallback: None,
        };
        let text = serde_json::to_string(&disk).unwrap();
        assert_eq!(
            text,
            r#"{"name":"os","size":1048576,"block_size":65536,"depth":1,"root":"0000000000000000000000000000000000000000000000000000000000000000","source":"nbd+unix:///os?socket=/run/os.sock","source_kind":"nbd","tracking":"dirty-bitmap:b0","base":"1111111111111111111111111111111111111111111111111111111111111111"}"#
        );
        let fell = DiskEntry { base: None, fallback: Some("no earlier point of this disk".into()), ..disk };
        assert!(serde_json::to_string(&fell).unwrap().ends_with(r#""tracking":"dirty-bitmap:b0","fallback":"no earlier point of this disk"}"#));
        let old: DiskEntry = serde_json::from_str(r#"{"name":"os","size":1,"block_size":65536,"depth":1,"root":"00","source":"x","source_kind":"raw"}"#).unwrap();
        assert_eq!((old.tracking, old.base, old.fallback), (None, None, None));
    }
}
