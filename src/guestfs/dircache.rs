//! The directories a filesystem listed last, with every entry's attributes.
//!
//! The filesystem crates find an entry by path, walking (and, in FAT, in
//! unindexed ext and in ext's checksummed blocks, scanning) every directory
//! from the root. `ls -l` of a directory of n entries is then n walks, each
//! as long as the directory: O(n²). A filesystem that can take the
//! attributes while it lists (ext: by inode number, FAT: from the entry)
//! keeps the listing here, and a later stat of an entry is a hash lookup.
//!
//! Bounded: at most [`MAX_DIRS`] directories and about [`MAX_CACHED`]
//! entries in all (a 100,000-entry directory is ~15 MB); the least recently
//! used go first. The newest listing is always kept, however big.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::GAttr;

const MAX_DIRS: usize = 64;
const MAX_CACHED: usize = 1_000_000;

/// One directory's entries (without `.` and `..`), in listing order.
pub struct Listing {
    entries: Vec<(Vec<u8>, GAttr)>,
    index: HashMap<Vec<u8>, usize>,
}

impl Listing {
    pub fn new(entries: Vec<(Vec<u8>, GAttr)>) -> Listing {
        let index = entries.iter().enumerate().map(|(i, (n, _))| (n.clone(), i)).collect();
        Listing { entries, index }
    }

    pub fn entries(&self) -> &[(Vec<u8>, GAttr)] {
        &self.entries
    }

    pub fn get(&self, name: &[u8]) -> Option<&GAttr> {
        self.index.get(name).map(|i| &self.entries[*i].1)
    }
}

#[derive(Default)]
pub struct DirCache {
    /// (directory path, listing), most recently used last.
    dirs: Mutex<Vec<(Vec<u8>, Arc<Listing>)>>,
}

impl DirCache {
    pub fn get(&self, dir: &[u8]) -> Option<Arc<Listing>> {
        let mut dirs = self.dirs.lock().unwrap();
        let i = dirs.iter().position(|(p, _)| p == dir)?;
        let e = dirs.remove(i);
        let l = e.1.clone();
        dirs.push(e);
        Some(l)
    }

    pub fn insert(&self, dir: &[u8], listing: Listing) -> Arc<Listing> {
        let l = Arc::new(listing);
        let mut dirs = self.dirs.lock().unwrap();
        dirs.retain(|(p, _)| p != dir);
        dirs.push((dir.to_vec(), l.clone()));
        let mut total: usize = dirs.iter().map(|(_, l)| l.entries.len()).sum();
        while dirs.len() > 1 && (dirs.len() > MAX_DIRS || total > MAX_CACHED) {
            total -= dirs.remove(0).1.entries.len();
        }
        l
    }
}

/// `dir/name` (`name` alone in the root).
pub fn child(dir: &[u8], name: &[u8]) -> Vec<u8> {
    if dir.is_empty() { name.to_vec() } else { [dir, b"/", name].concat() }
}

/// (parent, name) of a path with at least one component, `.` and empty
/// components dropped; `None` for the root.
pub fn split(path: &[u8]) -> crate::error::Result<Option<(Vec<u8>, Vec<u8>)>> {
    let comps = super::components(path)?;
    Ok(comps.split_last().map(|(name, parent)| (parent.join(&b'/'), name.to_vec())))
}
